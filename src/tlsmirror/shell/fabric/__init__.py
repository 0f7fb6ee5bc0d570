"""The key fabric: secrets shared by several sensors through Redis (docs/fabric.md)."""
