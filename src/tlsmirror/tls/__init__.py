"""TLS record layer, handshake, key schedule and record decryption for a passive observer."""
