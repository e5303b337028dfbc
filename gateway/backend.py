"""What the gateway needs from the rest of Kairos. The Ray implementation lives in
`actors/gateway.py`; the protocol keeps the handlers free of Ray."""

from __future__ import annotations

from typing import Any, Protocol

from kairos.partitions import PartitionMap


class BackendUnavailable(RuntimeError):
    """The actors behind the gateway cannot take the request now (restarting, overloaded)."""


class Backend(Protocol):
    partition_map: PartitionMap

    async def ingest(self, account: str, payload: bytes) -> None:
        """Make the encoded records durable and applied before returning."""
        ...

    async def call_shard(self, shard: int, method: str, *args: Any) -> Any: ...

    async def call_journey(self, index: int, method: str, *args: Any) -> Any:
        """Call journey actor `index` (one per shard, owning that shard's partitions)."""
        ...

    async def call_campaign(self, index: int, method: str, *args: Any) -> Any:
        """Call campaign scheduler `index` (one per shard, owning that shard's partitions)."""
        ...

    async def demerge(self, account: str, users: list[str]) -> list[bool]:
        """Split merged users back apart (False: the user merged nothing in)."""
        ...

    async def user_of(self, account: str, identifier: str) -> str | None:
        """The canonical user an identifier belongs to, if any (see kairos.identity_graph)."""
        ...
