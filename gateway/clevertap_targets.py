"""CleverTap's campaign API, `POST /1/targets/{create,estimate,list,result,stop}.json`,
on Kairos campaigns: a create body is translated into the Kairos campaign language
(kairos.campaigns.definition) and saved like any other campaign.

    {"name": "Price drop", "target_mode": "push",
     "where": {"event_name": "Product Viewed", "from": 20261101, "to": 20261123,
               "common_profile_properties": {"profile_fields": [{"name": "City", "operator": "equals",
                                                                 "value": "Pune"}]}},
     (or "segment": "<a saved segment's name>"; "where": {} is the whole user base)
     "content": {"title": "...", "body": "...", "platform_specific": {"android": {...}}},
     "when": "now" | "20261124 09:00" (UTC)
             | {"type": "later", "delivery_date_time": ["20261124 09:00"], "delivery_timezone": "user",
                "user_timezone_wrap_around": true},
     "estimate_only": false, "respect_frequency_caps": true, "respect_throttle": false,
     "control_group": {"type": "campaign", "percentage": 10},
     "conversion_goal": {"event_name": "Charged", "conversion_time": "1D",
                         "filter_type": {"event_property": [{"property_name": "Amount",
                                                             "operator": "greater_than", "property_value": 100}]}},
     "ttl": 1440 (minutes) | {"ttl_type": "relative", "value": 1440}, "labels": [...]}

Errors come in CleverTap's shape, `{"status": "fail", "error": ..., "code": 400}`.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
from aiohttp import web

from gateway.api_requests import json_object
from gateway.auth import ACCOUNT
from gateway.campaign_service import CampaignService
from gateway.errors import ApiError, json_response
from kairos import keys
from kairos.campaigns.catalog import check_name
from kairos.campaigns.definition import CampaignError
from kairos.segments.clevertap_query import OPERATORS, event_filters, profile_condition
from kairos.segments.definition import SegmentError
from kairos.timefmt import DateError, clevertap_minute_to_ms, day_range_ms, iso_ms, ms_to_clevertap_ts

# CleverTap's target modes -> Kairos channels (webpush and whatsapp have no provider here).
TARGET_MODES = {"push": "push", "email": "email", "sms": "sms", "webhook": "webhook", "notificationinbox": "in_app"}
CREATE_FIELDS = {"name", "target_mode", "where", "segment", "content", "devices", "when", "estimate_only",
                 "respect_frequency_caps", "respect_throttle", "control_group", "system_control_group_include",
                 "conversion_goal", "ttl", "labels", "provider_nick_name"}
_CONVERSION_TIME = re.compile(r"^(\d{1,4})([mHDWM])\Z")
_CONVERSION_UNIT = {"m": "m", "H": "h", "D": "d", "W": "w"}


class CleverTapTargets:
    def __init__(self, service: CampaignService) -> None:
        self.service = service

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/1/targets/create.json", self.create),
            web.post("/1/targets/estimate.json", self.estimate),
            web.post("/1/targets/list.json", self.list_targets),
            web.post("/1/targets/result.json", self.result),
            web.post("/1/targets/stop.json", self.stop),
        ]

    async def create(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        body = await json_object(request)
        definition = await self._definition(account, body)
        try:
            if body.get("estimate_only") is True:
                return json_response(_estimates(await self.service.estimate(account, definition)))
            saved = await self.service.create(account, body.get("name"), definition, "clevertap",
                                              body.get("labels") or [])
        except CampaignError as exc:
            raise ApiError(400, str(exc)) from None
        return json_response({"status": "success", "id": saved.id})

    async def estimate(self, request: web.Request) -> web.Response:
        account = request[ACCOUNT]
        definition = await self._definition(account, await json_object(request))
        try:
            return json_response(_estimates(await self.service.estimate(account, definition)))
        except CampaignError as exc:
            raise ApiError(400, str(exc)) from None

    async def list_targets(self, request: web.Request) -> web.Response:
        body = await json_object(request)
        try:
            from_ms, to_ms = day_range_ms(body.get("from"), body.get("to"))
        except DateError as exc:
            raise ApiError(400, str(exc)) from None
        account = request[ACCOUNT]
        chosen = [saved for saved in await self.service.catalog.all(account) if from_ms <= saved.created_ms < to_ms]
        targets = [{"id": saved.id, "name": saved.name, "status": view["status"],
                    "scheduled_on": ms_to_clevertap_ts(saved.created_ms), "created": view["created"]}
                   for saved, view in zip(chosen, await self.service.views(account, chosen))]
        return json_response({"status": "success", "targets": targets})

    async def result(self, request: web.Request) -> web.Response:
        account, campaign_id = request[ACCOUNT], await _campaign_id(request)
        saved = await self.service.catalog.get(account, campaign_id)
        if saved is None:
            raise ApiError(400, f"no campaign with id {campaign_id}")
        found = await self.service.results(account, saved)
        variants = found["variants"]
        totals = {figure: sum(row.get(figure, 0) for name, row in variants.items() if name != "control")
                  for figure in ("sent", "delivered", "viewed", "clicked", "converted", "failed", "capped")}
        return json_response({"status": "success", "result": {**totals, **found}})

    async def stop(self, request: web.Request) -> web.Response:
        account, campaign_id = request[ACCOUNT], await _campaign_id(request)
        if await self.service.stop(account, campaign_id) is None:
            raise ApiError(400, f"no campaign with id {campaign_id}")
        return json_response({"status": "success"})

    # --- translation ------------------------------------------------------------------

    async def _definition(self, account: str, body: dict[str, Any]) -> dict[str, Any]:
        """The Kairos campaign that a create body describes; 400 naming the field at fault."""
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise ApiError(400, f"{unknown[0]!r} is not a field of targets/create.json")
        if not isinstance(body.get("name"), str) or not body["name"].strip():
            raise ApiError(400, "Field name is empty")
        try:
            check_name(body["name"])
        except CampaignError as exc:
            raise ApiError(400, str(exc)) from None
        mode = body.get("target_mode")
        if not isinstance(mode, str) or mode not in TARGET_MODES:
            raise ApiError(400, f"target_mode {str(mode)[:40]!r} is not one of {', '.join(TARGET_MODES)}")
        for flag in ("estimate_only", "respect_frequency_caps", "respect_throttle", "system_control_group_include"):
            if flag in body and not isinstance(body[flag], bool):
                raise ApiError(400, f"{flag} must be true or false")
        if body.get("provider_nick_name") is not None:
            raise ApiError(400, "provider_nick_name: Kairos sends each channel through the one provider in the"
                                " account's delivery settings")
        if body.get("devices") is not None:
            raise ApiError(400, "devices: Kairos sends a push to the user's one push token, whatever the device;"
                                " leave 'devices' out")
        if body.get("system_control_group_include"):
            raise ApiError(400, "system_control_group_include: Kairos has no system control group; use"
                                " control_group")
        labels = body.get("labels")
        if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
            raise ApiError(400, "labels must be a list of names")
        definition: dict[str, Any] = {
            "audience": _audience(body),
            "message": {"channel": TARGET_MODES[mode], "message": _content(mode, body.get("content"))},
            "schedule": _when(body.get("when")),
            "respect_caps": body.get("respect_frequency_caps", True),
        }
        control = _control_group(body.get("control_group"))
        if control:
            definition["control_percent"] = control
        if body.get("conversion_goal") is not None:
            definition["conversion_goal"] = _conversion_goal(body["conversion_goal"])
        if body.get("ttl") is not None:
            definition["ttl"] = _ttl(body["ttl"])
        if body.get("respect_throttle"):
            throttle = await self._account_throttle(account)
            if throttle is not None:
                definition["throttle_per_minute"] = throttle
        return definition

    async def _account_throttle(self, account: str) -> int | None:
        raw = await self.service.redis.get(keys.delivery_settings(account))
        if raw is None:
            return None
        # Validated when the settings were saved: a whole number, or absent.
        value = msgspec.json.decode(raw).get("campaign_throttle_per_minute")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


async def _campaign_id(request: web.Request) -> int:
    body = await json_object(request)
    value = body.get("id")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ApiError(400, "id must be a campaign id (a positive whole number)")
    return value


def _estimates(audience: int | None) -> dict[str, Any]:
    return {"status": "success", "estimates": {"total": audience}}


def _audience(body: dict[str, Any]) -> dict[str, Any]:
    if ("where" in body) == ("segment" in body):
        raise ApiError(400, "give the audience as either 'where' or 'segment', not both (nor neither)")
    if "segment" in body:
        segment = body["segment"]
        if not isinstance(segment, str) or not segment:
            raise ApiError(400, "segment must be the name of a saved segment")
        return {"segment": segment}
    where = body["where"]
    if not isinstance(where, dict) or set(where) - {"event_name", "from", "to", "common_profile_properties",
                                                    "event_properties"}:
        raise ApiError(400, "where must be an object with 'event_name', 'from', 'to' and/or"
                            " 'common_profile_properties'")
    conditions: list[Any] = []
    if where.get("event_name") is None and any(where.get(k) is not None for k in ("from", "to", "event_properties")):
        raise ApiError(400, "where: 'from', 'to' and 'event_properties' need 'event_name'")
    try:
        if where.get("event_name") is not None:
            if not isinstance(where["event_name"], str) or not where["event_name"]:
                raise ApiError(400, "where.event_name must be an event name")
            day_range_ms(where.get("from"), where.get("to"))  # both required, in order
            conditions.append({"did": where["event_name"], "where": event_filters(where.get("event_properties")),
                               "within": {"from": where["from"], "to": where["to"]}})
        profile = profile_condition(where.get("common_profile_properties"))
    except (DateError, SegmentError) as exc:
        raise ApiError(400, f"Query specified in where failed to parse: {exc}") from None
    if profile is not None:
        conditions.append(profile)
    if not conditions:
        return {"where": {"everyone": True}}
    return {"where": conditions[0] if len(conditions) == 1 else {"all": conditions}}


def _content(mode: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ApiError(400, "content must be an object (title, body, ...)")
    extra = sorted(set(raw) - {"title", "body", "subject", "sender_name", "platform_specific"})
    if extra:
        raise ApiError(400, f"content.{extra[0]} is not a content field")
    title, body = raw.get("title"), raw.get("body")
    if mode == "email":
        if not raw.get("subject"):
            raise ApiError(400, "Field subject is empty (inside content)")
        sender = raw.get("sender_name")
        if sender is not None and (not isinstance(sender, str) or "@" not in sender):
            raise ApiError(400, "content.sender_name: give the whole sender, 'Name <address>'; without it the"
                                " account's email settings name the sender")
        message = {"subject": raw["subject"], "html": body}
        if sender is not None:
            message["from"] = sender
        return message
    if mode == "sms":
        return {"text": body}
    if mode == "webhook":
        return {"payload": raw}
    message = {k: v for k, v in (("title", title), ("body", body)) if v is not None}
    data = _platform_data(raw.get("platform_specific"))
    if mode == "push" and data:
        message["data"] = data
    if mode == "notificationinbox" and "deep_link" in data:
        message["url"] = data["deep_link"]
    return message


def _platform_data(raw: Any) -> dict[str, str]:
    """Push's `platform_specific` settings as FCM data (text values; Android's over iOS's)."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ApiError(400, "content.platform_specific must be an object of platform -> settings")
    data: dict[str, str] = {}
    for platform in ("ios", "android"):
        for key, value in (raw.get(platform) or {}).items():
            if isinstance(value, (str, int, float)) and not isinstance(value, bool):
                data[str(key)] = str(value)
    return data


def _when(raw: Any) -> Any:
    if raw is None:
        raise ApiError(400, "Field when is empty")
    try:
        if raw == "now":
            return "now"
        if isinstance(raw, str):
            return {"at": iso_ms(clevertap_minute_to_ms(raw, "when"))}
        if not isinstance(raw, dict):
            raise ApiError(400, "when must be 'now', 'YYYYMMDD HH:MM' or an object with 'type'")
        kind = raw.get("type")
        if kind == "now":
            return "now"
        if kind != "later":
            raise ApiError(400, "when.type must be 'now' or 'later' (recurring and triggered campaigns: /api/campaigns)")
        times = raw.get("delivery_date_time")
        if not isinstance(times, list) or len(times) != 1:
            raise ApiError(400, "when.delivery_date_time must hold one 'YYYYMMDD HH:MM'")
        at_ms = clevertap_minute_to_ms(times[0], "when.delivery_date_time[0]")
    except DateError as exc:
        raise ApiError(400, str(exc)) from None
    zone = raw.get("delivery_timezone", "account")
    if zone not in ("user", "account"):
        raise ApiError(400, "when.delivery_timezone must be 'user' or 'account'")
    if zone == "account":
        return {"at": iso_ms(at_ms)}
    stamp = str(times[0])
    wrap = raw.get("user_timezone_wrap_around", True)
    if not isinstance(wrap, bool):
        raise ApiError(400, "when.user_timezone_wrap_around must be true or false")
    return {"date": f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}", "local_time": stamp[9:14],
            "if_passed": "next_day" if wrap else "drop"}


def _control_group(raw: Any) -> int:
    if raw is None:
        return 0
    if not isinstance(raw, dict) or raw.get("type") != "campaign":
        raise ApiError(400, "control_group must be {\"type\": \"campaign\", \"percentage\": N} (Kairos has no"
                            " custom control groups)")
    percent = raw.get("percentage")
    if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 90:
        raise ApiError(400, "control_group.percentage must be a whole percent from 0 to 90")
    return percent


def _conversion_goal(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not isinstance(raw.get("event_name"), str):
        raise ApiError(400, "conversion_goal must be an object with 'event_name' and 'conversion_time'")
    time = raw.get("conversion_time", "1D")
    found = _CONVERSION_TIME.match(time) if isinstance(time, str) else None
    if found is None or found.group(2) == "M":
        raise ApiError(400, "conversion_goal.conversion_time must be like '30m', '12H', '1D' or '1W'")
    where = []
    filters = (raw.get("filter_type") or {}).get("event_property", []) if isinstance(raw.get("filter_type"), dict) \
        else []
    for i, item in enumerate(filters if isinstance(filters, list) else [None]):
        operator = item.get("operator", "equals") if isinstance(item, dict) else None
        if not isinstance(operator, str) or operator not in OPERATORS:
            raise ApiError(400, f"conversion_goal.filter_type.event_property[{i}] must be"
                                " {property_name, operator, property_value}")
        where.append({"name": item.get("property_name"), "operator": item.get("operator", "equals"),
                      "value": item.get("property_value")})
    try:
        converted = event_filters(where) if where else []
    except SegmentError as exc:
        raise ApiError(400, f"conversion_goal: {exc}") from None
    return {"event": raw["event_name"], "where": converted,
            "within": found.group(1) + _CONVERSION_UNIT[found.group(2)]}


def _ttl(raw: Any) -> str:
    """CleverTap's ttl (minutes, plain or `{"ttl_type": "relative", "value": N}`) as a duration."""
    minutes = raw.get("value") if isinstance(raw, dict) and raw.get("ttl_type") == "relative" else raw
    if isinstance(minutes, bool) or not isinstance(minutes, int) or not 1 <= minutes <= 28 * 24 * 60:
        raise ApiError(400, "ttl must be minutes from 1 to 40320, or {\"ttl_type\": \"relative\", \"value\": N}")
    return f"{minutes}m"
