"""Wire formats: every byte layout tierlink writes to the DHT or a channel, with strict decoders."""
