"""The campaign API under `/api/campaigns`: create (or estimate) a campaign in the
Kairos language (kairos.campaigns.definition: saved segments or inline conditions,
Liquid templates, A/B variants on any channels, every kind of schedule), list, read,
stop, and read its results per variant.

Same credentials and error shape as the rest of `/api/` (see gateway/kairos_api.py).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.api_requests import bad_definition, json_object, only_fields
from gateway.auth import ACCOUNT
from gateway.campaign_service import CampaignService
from gateway.errors import ApiError, json_response
from kairos.campaigns.definition import CampaignError
from kairos.campaigns.model import SavedCampaign


class CampaignApi:
    def __init__(self, service: CampaignService) -> None:
        self.service = service

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/campaigns", self.list_campaigns),
            web.post("/api/campaigns", self.create),
            web.post("/api/campaigns/estimate", self.estimate),
            web.get("/api/campaigns/{id}", self.get_campaign),
            web.post("/api/campaigns/{id}/stop", self.stop),
            web.get("/api/campaigns/{id}/results", self.results),
        ]

    async def _saved(self, request: web.Request) -> SavedCampaign:
        text = request.match_info["id"]
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            raise ApiError(404, f"no campaign with id {text[:40]!r}: ids are whole numbers")
        saved = await self.service.catalog.get(request[ACCOUNT], int(text))
        if saved is None:
            raise ApiError(404, f"no campaign with id {text}")
        return saved

    async def list_campaigns(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        return json_response({"campaigns": await self.service.views(account, await self.service.catalog.all(account))})

    async def create(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await json_object(request)
        only_fields(body, {"name", "definition", "description", "labels"})
        if "definition" not in body:
            raise ApiError(400, "a campaign needs 'definition'", path="definition")
        description = body.get("description", "")
        if not isinstance(description, str):
            raise ApiError(400, "'description' must be a string", path="description")
        labels = body.get("labels", [])
        if not isinstance(labels, list):
            raise ApiError(400, "'labels' must be a list of names", path="labels")
        try:
            saved = await self.service.create(account, body.get("name"), body["definition"], "kairos", labels,
                                              description)
        except CampaignError as exc:
            raise bad_definition(exc) from None
        return json_response(await self.service.view(account, saved), status=201)

    async def estimate(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        only_fields(body, {"definition"})
        try:
            audience = await self.service.estimate(request[ACCOUNT], body.get("definition"))
        except CampaignError as exc:
            raise bad_definition(exc) from None
        return json_response(_estimate(audience))

    async def get_campaign(self, request: web.Request) -> web.Response:
        return json_response(await self.service.view(request[ACCOUNT], await self._saved(request)))

    async def stop(self, request: web.Request) -> web.Response:
        saved = await self._saved(request)
        stopped = await self.service.stop(request[ACCOUNT], saved.id)
        assert stopped is not None  # campaigns are never deleted
        return json_response(await self.service.view(request[ACCOUNT], stopped))

    async def results(self, request: web.Request) -> web.Response:
        return json_response(await self.service.results(request[ACCOUNT], await self._saved(request)))


def _estimate(audience: int | None) -> dict[str, Any]:
    if audience is None:
        return {"audience": None, "note": "a triggered campaign reaches whoever does its event"}
    return {"audience": audience}
