"""Per-flow TCP reassembly: ordered byte streams per direction, explicit gaps, bounded memory."""
