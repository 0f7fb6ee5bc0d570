"""The I/O shell: files, sockets, processes and time around the sans-IO core."""
