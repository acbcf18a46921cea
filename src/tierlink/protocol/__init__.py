"""Sans-IO protocol state machines: bytes and time in, bytes and events out; no asyncio."""
