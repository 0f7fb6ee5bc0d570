"""keylistener."""
