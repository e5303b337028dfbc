"""The HTTP gateway: an aiohttp app that decodes, validates and authenticates requests,
then talks to the ingest and shard actors through a `Backend`."""
