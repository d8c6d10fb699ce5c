"""The foundation every layer may import: errors, events, the inventory, redaction, where
the data files are. Nothing here reaches a host."""
