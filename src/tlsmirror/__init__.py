"""tlsmirror: turn mirrored, TLS-encrypted traffic into API calls."""

__version__ = "0.1.0"
