"""What the gateway needs from the rest of Kairos. The Ray implementation lives in
`actors/gateway.py`; the protocol keeps the handlers free of Ray."""

from __future__ import annotations

from typing import Any, Protocol

from kairos.partitions import PartitionMap


class BackendUnavailable(RuntimeError):
    """The actors behind the gateway cannot take the request now (restarting, overloaded)."""


class Backend(Protocol):
    partition_map: PartitionMap

    async def ingest(self, account: str, request_id: str, payload: bytes) -> int:
        """Make the encoded records durable and applied; return how many there were."""
        ...

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any: ...
