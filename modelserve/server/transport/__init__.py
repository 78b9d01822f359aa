"""Transports: each API converts its wire format and calls the engine's data plane; nothing
here holds model state. Security and request ids are shared by every transport."""
