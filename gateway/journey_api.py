"""The journey API under `/api/journeys`: save (a new version each time), read, pause,
resume and delete journeys, move users from an old version to the current one, and
read a journey's counters.

Same credentials and error shape as the rest of `/api/` (see gateway/kairos_api.py).
Every change takes effect before the answer: each shard (which forwards the events
journeys react to) and each journey actor re-reads the account's journeys first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.auth import ACCOUNT
from gateway.backend import Backend
from gateway.errors import ApiError, json_response
from gateway.api_requests import bad_definition, checked, json_object, only_fields
from kairos.journeys import counters
from kairos.journeys.catalog import JourneyCatalog, check_name
from kairos.journeys.definition import JourneyError
from kairos.journeys.model import ACTIVE, PAUSED, SavedJourney

# Summed over versions in `totals` (moves between versions cancel out, so they are not).
TOTALS = tuple(what for what in counters.OUTCOMES if what not in ("moved_in", "moved_out"))


class JourneyApi:
    def __init__(self, backend: Backend, catalog: JourneyCatalog) -> None:
        self.backend = backend
        self.catalog = catalog

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/journeys", self.list_journeys),
            web.put("/api/journeys/{name}", self.save_journey),
            web.get("/api/journeys/{name}", self.get_journey),
            web.delete("/api/journeys/{name}", self.delete_journey),
            web.post("/api/journeys/{name}/pause", self._set_status(PAUSED)),
            web.post("/api/journeys/{name}/resume", self._set_status(ACTIVE)),
            web.post("/api/journeys/{name}/move", self.move),
            web.get("/api/journeys/{name}/stats", self.stats),
        ]

    async def _refresh(self, account: str) -> None:
        """Every shard and every journey actor (one per shard) takes up the account's
        journeys as they are now."""
        shards = range(self.backend.partition_map.shards)
        await asyncio.gather(*(self.backend.call_shard(i, "refresh_triggers", account) for i in shards),
                             *(self.backend.call_journey(i, "refresh", account) for i in shards))

    async def _saved(self, account: str, name: str) -> SavedJourney:
        saved = await self.catalog.get(account, name)
        if saved is None:
            raise ApiError(404, f"no journey named {name!r}")
        return saved

    # --- the catalog ----------------------------------------------------------------------

    async def list_journeys(self, request: web.Request) -> web.Response:
        return json_response({"journeys": [_view(j) for j in await self.catalog.all(request[ACCOUNT])]})

    async def save_journey(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        name = checked(check_name, request.match_info["name"])
        body = await json_object(request)
        if "definition" not in body and {"entry", "start", "nodes"} & body.keys():
            raise ApiError(400, "the journey goes under 'definition': send {\"definition\": {\"entry\": ...,"
                                " \"start\": ..., \"nodes\": ...}}", path="definition")
        only_fields(body, {"definition", "description"})
        if "definition" not in body:
            raise ApiError(400, "a journey needs 'definition'", path="definition")
        description = body.get("description")  # absent: keep the one saved before
        if description is not None and not isinstance(description, str):
            raise ApiError(400, "'description' must be a string", path="description")
        try:
            await self.catalog.save(account, name, body["definition"], description)
        except JourneyError as exc:
            raise bad_definition(exc) from None
        await self._refresh(account)
        # Every actor now enters users on the new version only: old ones can be dropped.
        await self.catalog.prune(account, name)
        return json_response(_view(await self._saved(account, name)))

    async def get_journey(self, request: web.Request) -> web.Response:
        saved = await self._saved(request[ACCOUNT], request.match_info["name"])
        version = saved.version
        if "version" in request.query:
            text = request.query["version"]
            if not (text.isascii() and text.isdigit()) or len(text) > 9:
                raise ApiError(400, "'version' must be a version number", path="version")
            version = int(text)
            if version not in saved.definitions:
                raise ApiError(404, f"journey {saved.name!r} has no version {version}"
                                    f" (versions: {', '.join(map(str, sorted(saved.definitions)))})", path="version")
        return json_response(_view(saved, version))

    async def delete_journey(self, request: web.Request) -> web.Response:
        account, name = request[ACCOUNT], request.match_info["name"]
        if not await self.catalog.delete(account, name):
            raise ApiError(404, f"no journey named {name!r}")
        await self._refresh(account)
        return json_response({"deleted": True})

    def _set_status(self, status: str) -> Any:
        async def handle(request: web.Request) -> web.Response:
            account, name = request[ACCOUNT], request.match_info["name"]
            saved = await self.catalog.set_status(account, name, status)
            if saved is None:
                raise ApiError(404, f"no journey named {name!r}")
            await self._refresh(account)
            return json_response(_view(saved))

        return handle

    # --- users in flight ------------------------------------------------------------------

    async def move(self, request: web.Request) -> web.Response:
        """Move the users still on `from_version` to the current version: each to
        `nodes[its node]`, else to the node of the same id (see JourneyEngine.move)."""
        account, name = request[ACCOUNT], request.match_info["name"]
        saved = await self._saved(account, name)
        body = await json_object(request)
        only_fields(body, {"from_version", "nodes"})
        from_version = body.get("from_version")
        versions = ", ".join(str(v) for v in sorted(saved.definitions) if v != saved.version) or "none"
        if isinstance(from_version, bool) or not isinstance(from_version, int) or from_version not in saved.definitions:
            raise ApiError(400, f"'from_version' must be an earlier version of the journey (here: {versions})",
                           path="from_version")
        if from_version == saved.version:
            raise ApiError(400, f"version {from_version} is the current version; nothing to move"
                                f" (earlier versions: {versions})", path="from_version")
        nodes = body.get("nodes", {})
        if not isinstance(nodes, dict) or not all(isinstance(v, str) for v in nodes.values()):
            raise ApiError(400, "'nodes' must map node ids of the old version to node ids of the current one",
                           path="nodes")
        old_nodes = _node_ids(saved.definitions[from_version])
        new_nodes = _node_ids(saved.definitions[saved.version])
        for source, target in nodes.items():
            if source not in old_nodes:
                raise ApiError(400, f"nodes.{source}: {source!r} is not a node of version {from_version}",
                               path=f"nodes.{source}")
            if target not in new_nodes:
                raise ApiError(400, f"nodes.{source}: {target!r} is not a node of the current version"
                                    f" ({saved.version})", path=f"nodes.{source}")
        # Only nodes users are on now must have somewhere to go; the others may be left out.
        held = _users_at_nodes(await self.catalog.stats(account, name), from_version)
        unplaced = sorted(n for n in old_nodes if held.get(n, 0) > 0 and n not in nodes and n not in new_nodes)
        if unplaced:
            raise ApiError(400, f"nodes.{unplaced[0]}: users wait at {unplaced[0]!r}, which the current version"
                                f" ({saved.version}) does not have; map it to one of its nodes",
                           path=f"nodes.{unplaced[0]}")
        moved = await asyncio.gather(*(self.backend.call_journey(i, "move", account, name, from_version, nodes)
                                       for i in range(self.backend.partition_map.shards)))
        return json_response({"moved": sum(moved)})

    async def stats(self, request: web.Request) -> web.Response:
        account, name = request[ACCOUNT], request.match_info["name"]
        saved = await self._saved(account, name)
        return json_response(_stats(saved, await self.catalog.stats(account, name)))


def _view(saved: SavedJourney, version: int | None = None) -> dict[str, Any]:
    """A journey as the API shows it: with one version's definition (the current one by default)."""
    return {
        "name": saved.name,
        "version": saved.version,
        "status": saved.status,
        "description": saved.description,
        "definition": saved.definitions[saved.version if version is None else version],
        "definition_version": saved.version if version is None else version,
        "versions": sorted(saved.definitions),
        "created_ms": saved.created_ms,
        "updated_ms": saved.updated_ms,
    }


def _users_at_nodes(counts: dict[str, int], version: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for name, value in counts.items():
        counter = counters.parse(name)
        if counter is not None and counter.version == version and counter.what == "waiting" and counter.node:
            found[counter.node] = value
    return found


def _node_ids(definition: Any) -> set[str]:
    nodes = definition.get("nodes") if isinstance(definition, dict) else None
    return set(nodes) if isinstance(nodes, dict) else set()


def _stats(saved: SavedJourney, counts: dict[str, int]) -> dict[str, Any]:
    """The counters (kairos.journeys.counters) as per-version and per-node figures. Every
    kept version and its nodes are shown, with 0 for a counter never touched."""
    versions: dict[int, dict[str, Any]] = {}

    def version_entry(version: int) -> dict[str, Any]:
        if version not in versions:
            versions[version] = {**dict.fromkeys(counters.OUTCOMES, 0), "nodes": {}}
        return versions[version]

    def node_entry(version: int, node: str) -> dict[str, Any]:
        nodes = version_entry(version)["nodes"]
        if node not in nodes:
            nodes[node] = {"waiting": 0, "reached": 0, "sent": {}}
        return nodes[node]

    for version in sorted(saved.definitions):
        for node in sorted(_node_ids(saved.definitions[version])):
            node_entry(version, node)
    # Every version with counters shows, kept or not: a dropped version's users still
    # count in the totals. (A delete takes the counters with it.)
    for name, value in sorted(counts.items()):
        counter = counters.parse(name)
        if counter is None:
            continue
        if counter.node is None:
            if counter.what in counters.OUTCOMES:
                version_entry(counter.version)[counter.what] = value
        elif counter.what == "sent":
            node_entry(counter.version, counter.node)["sent"][counter.variant] = value
        else:
            node_entry(counter.version, counter.node)[counter.what] = value
    totals = {what: sum(v[what] for v in versions.values()) for what in TOTALS}
    totals["waiting"] = sum(n["waiting"] for v in versions.values() for n in v["nodes"].values())
    return {
        "name": saved.name,
        "version": saved.version,
        "status": saved.status,
        "totals": totals,
        "versions": {str(v): versions[v] for v in sorted(versions)},
    }
