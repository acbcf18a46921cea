"""Asyncio transports: the ICE and QUIC adapters, the channel shell and the public Connection."""
