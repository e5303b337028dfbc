"""Columnar in-memory state of a shard: profiles and events per account and partition."""
