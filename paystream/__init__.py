"""paystream: a multi-tenant payments worker fleet on faust-streaming."""

__version__ = "0.1.0"
