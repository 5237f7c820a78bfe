"""MaskGate: a door daemon that verifies faces, masked or not, on an edge device."""

__version__ = "0.1.0"
