"""Releases: the content manifest, the release commands, and the verified delta upload,
activation, history and listing on a host."""
