"""Segmentation: the definition language, and its evaluation over the shards' columns."""
