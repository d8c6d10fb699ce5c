"""Reaching hosts: commands paired with their readers, the per-host runner (SSH, or the
dry run's recorder), and the group that runs one operation across many hosts."""
