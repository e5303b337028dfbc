"""The Python client for the Kairos API, for notebooks and scripts:

    from kairos.client import KairosClient
    kairos = KairosClient("http://127.0.0.1:8080", account_id, passcode)
    kairos.save_segment("Big spenders", {"did": "Charged", "sum": "Amount", "op": "gte", "value": 500,
                                         "within": "30d"})
    kairos.segment_count(name="Big spenders")
    for profile in kairos.segment_members(name="Big spenders"): ...
    kairos.trends(event="Charged", start="2026-08-01", end="2026-08-31", by="day", tz="Asia/Kolkata")
    kairos.save_journey("Welcome", {"entry": {"event": "Signed Up"}, "start": "hi", "nodes": {...}})
    kairos.journey_stats("Welcome")["totals"]

Every figure is the server's exact answer. A request the server refuses raises
`KairosError` with its status, message and the path in the body at fault.
"""

from __future__ import annotations

from typing import Any, Iterator
from urllib.parse import quote

import httpx


class KairosError(RuntimeError):
    def __init__(self, status: int, message: str, path: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.path = path


class KairosClient:
    def __init__(self, base_url: str, account_id: str, passcode: str, timeout_s: float = 60.0) -> None:
        self._http = httpx.Client(
            base_url=base_url.rstrip("/"), timeout=timeout_s,
            headers={"X-CleverTap-Account-Id": account_id, "X-CleverTap-Passcode": passcode},
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "KairosClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None, params: dict[str, str] | None = None) -> Any:
        response = self._http.request(method, path, json=body, params=params)
        try:
            payload = response.json()
        except ValueError:
            raise KairosError(response.status_code, response.text[:500]) from None
        if response.status_code >= 400:
            raise KairosError(response.status_code, payload.get("error", str(payload)), payload.get("path"))
        return payload

    # --- ingest and profiles (CleverTap's API) ----------------------------------------

    def upload(self, records: list[dict[str, Any]]) -> dict[str, Any]:
        """Up to 1000 CleverTap records; the answer lists any refused, with their codes."""
        return self._call("POST", "/1/upload", {"d": records})

    def profile(self, **lookup: str) -> dict[str, Any]:
        """One profile by identity=, objectId=, email=, phone= ..."""
        return self._call("GET", "/1/profile.json", params=lookup)["record"]

    # --- segments -----------------------------------------------------------------------

    def save_segment(self, name: str, definition: dict[str, Any], live: bool = False,
                     description: str = "") -> dict[str, Any]:
        return self._call("PUT", f"/api/segments/{quote(name, safe='')}",
                          {"definition": definition, "live": live, "description": description})

    def segments(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/segments")["segments"]

    def segment(self, name: str) -> dict[str, Any]:
        return self._call("GET", f"/api/segments/{quote(name, safe='')}")

    def delete_segment(self, name: str) -> None:
        self._call("DELETE", f"/api/segments/{quote(name, safe='')}")

    @staticmethod
    def _which(definition: dict[str, Any] | None, name: str | None, tz: str, as_of: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"segment": definition} if definition is not None else {"name": name}
        body["tz"] = tz
        if as_of is not None:
            body["as_of"] = as_of
        return body

    def segment_count(self, definition: dict[str, Any] | None = None, *, name: str | None = None,
                      tz: str = "UTC", as_of: Any = None) -> int:
        return int(self._call("POST", "/api/segments/count", self._which(definition, name, tz, as_of))["count"])

    def segment_members(self, definition: dict[str, Any] | None = None, *, name: str | None = None,
                        tz: str = "UTC", as_of: Any = None, page_size: int = 1000) -> Iterator[dict[str, Any]]:
        """Every member, fetched a page at a time; all pages see the same instant."""
        body = {**self._which(definition, name, tz, as_of), "limit": page_size}
        while True:
            page = self._call("POST", "/api/segments/members", body)
            yield from page["members"]
            if not page["next_cursor"]:
                return
            body["cursor"] = page["next_cursor"]

    # --- journeys -----------------------------------------------------------------------

    def save_journey(self, name: str, definition: dict[str, Any], description: str | None = None) -> dict[str, Any]:
        """Save a new version of the journey (no `description`: keep the last one);
        returns it (`version`, `versions`, `status`...)."""
        body: dict[str, Any] = {"definition": definition}
        if description is not None:
            body["description"] = description
        return self._call("PUT", f"/api/journeys/{quote(name, safe='')}", body)

    def journeys(self) -> list[dict[str, Any]]:
        return self._call("GET", "/api/journeys")["journeys"]

    def journey(self, name: str, version: int | None = None) -> dict[str, Any]:
        """The journey, with the definition of `version` (default: the current one)."""
        params = {"version": str(version)} if version is not None else None
        return self._call("GET", f"/api/journeys/{quote(name, safe='')}", params=params)

    def delete_journey(self, name: str) -> None:
        self._call("DELETE", f"/api/journeys/{quote(name, safe='')}")

    def pause_journey(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/api/journeys/{quote(name, safe='')}/pause")

    def resume_journey(self, name: str) -> dict[str, Any]:
        return self._call("POST", f"/api/journeys/{quote(name, safe='')}/resume")

    def move_journey(self, name: str, from_version: int, nodes: dict[str, str] | None = None) -> int:
        """Move the users still on `from_version` to the current version; returns how many moved."""
        body = {"from_version": from_version, "nodes": nodes or {}}
        return int(self._call("POST", f"/api/journeys/{quote(name, safe='')}/move", body)["moved"])

    def journey_stats(self, name: str) -> dict[str, Any]:
        """`totals`, and per version its counters and per node `waiting`, `reached`, `sent`."""
        return self._call("GET", f"/api/journeys/{quote(name, safe='')}/stats")

    # --- analytics ----------------------------------------------------------------------

    def _query(self, path: str, body: dict[str, Any], tz: str, as_of: Any, segment: Any) -> Any:
        body = {k: v for k, v in body.items() if v is not None}
        body["tz"] = tz
        if as_of is not None:
            body["as_of"] = as_of
        if segment is not None:
            body["segment"] = segment
        return self._call("POST", path, body)

    def trends(self, event: str, start: Any, end: Any, *, measure: Any = "count", by: Any = "day",
               where: list[dict[str, Any]] | None = None, tz: str = "UTC", as_of: Any = None,
               segment: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        body = {"event": event, "from": start, "to": end, "measure": measure, "by": by, "where": where}
        return self._query("/api/query/trends", body, tz, as_of, segment)["buckets"]

    def funnel(self, steps: list[Any], start: Any, end: Any, window: str, *, tz: str = "UTC", as_of: Any = None,
               segment: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        body = {"steps": steps, "from": start, "to": end, "window": window}
        return self._query("/api/query/funnel", body, tz, as_of, segment)["steps"]

    def retention(self, first: Any, back: Any, start: Any, end: Any, *, by: str = "day", periods: int | None = None,
                  tz: str = "UTC", as_of: Any = None, segment: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"first": first, "return": back, "from": start, "to": end, "by": by, "periods": periods}
        return self._query("/api/query/retention", body, tz, as_of, segment)

    def rfm(self, event: str, start: Any, end: Any, *, monetary: str | None = None,
            where: list[dict[str, Any]] | None = None, tz: str = "UTC", as_of: Any = None,
            segment: dict[str, Any] | None = None) -> dict[str, Any]:
        body = {"event": event, "from": start, "to": end, "monetary": monetary, "where": where}
        return self._query("/api/query/rfm", body, tz, as_of, segment)
