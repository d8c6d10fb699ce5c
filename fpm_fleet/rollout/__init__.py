"""Rollouts: the steps of one replica restart, the operations of one host, and deploy,
revert, rollback and cleanup of one host."""
