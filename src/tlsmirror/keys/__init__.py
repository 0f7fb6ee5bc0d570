"""Session secrets: NSS key log lines and server RSA keys, turned into Secret events."""
