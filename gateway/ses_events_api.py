"""SES's reports on sent email (deliveries, bounces, complaints), through SNS.

    POST /t/ses/<account id>   an SNS HTTP(S) subscription's endpoint

The account's SES settings name the topic (`events_topic_arn`) its configuration set
publishes to. A message is taken only when SNS signed it (kairos.channels.sns_messages)
and it comes from that topic: anyone can make an SNS topic, so a valid signature alone
proves nothing about whose. A subscription confirmation for that topic is confirmed;
a notification is traced back to its send by SES's message id (the router noted it at
the hand-over) and becomes events and profile changes for the user
(kairos.routing.ses_feedback), queued durably with the user's other delivery events,
and counted once (SNS delivers at least once) before the 200 goes back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis
from aiohttp import web

from gateway.body import json_decode_errors, read_body
from gateway.errors import ApiError
from kairos import keys
from kairos.channels import ses
from kairos.channels.sns_messages import (
    NOTIFICATION, SUBSCRIPTION_CONFIRMATION, NotGenuine, SnsVerifier,
)
from kairos.journeys.clock import Clock
from kairos.routing import feedback, ses_feedback
from kairos.routing.delivery_store import sent_as, source_counters
from kairos.segments.definition import SegmentError

logger = logging.getLogger(__name__)

SES_EVENTS_PATH = "/t/ses/"
MAX_BODY_BYTES = 512 * 1024  # a 256 KB SNS message, JSON-escaped in its envelope
SEEN_FOR_S = 7 * 3600  # longer than the age past which a message is refused as a replay
# An event for one of the account's sends (it carries the send id tag) that arrives before
# the router has noted SES's message id gets 503, for SNS to retry, this long after it was sent.
EARLY_EVENTS_RETRIED_MS = 15 * 60_000


class SesEventsApi:
    def __init__(self, client: aioredis.Redis, verifier: SnsVerifier, clock: Clock) -> None:
        self.redis = client
        self.verifier = verifier
        self.clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [web.post(SES_EVENTS_PATH + "{account}", self.received)]

    async def _topic(self, account: str) -> str | None:
        """The SNS topic the account's SES settings name. Only the email provider's part is
        parsed: the whole settings would load other providers' keys on every message."""
        raw = await self.redis.get(keys.delivery_settings(account))
        try:
            stored = msgspec.json.decode(raw) if raw is not None else None
            email = stored.get("providers", {}).get("email") if isinstance(stored, dict) else None
            if not isinstance(email, dict) or email.get("provider") != "ses":
                return None
            return ses.parse_settings(email, "providers.email").events_topic_arn
        except (SegmentError, msgspec.DecodeError, AttributeError):
            return None

    async def received(self, request: web.Request) -> web.Response:
        account = request.match_info["account"]
        body = await read_body(request, MAX_BODY_BYTES)
        with json_decode_errors():
            message = msgspec.json.decode(body)
        if not isinstance(message, dict):
            raise ApiError(400, "the body is not an SNS message: not a JSON object")
        topic = await self._topic(account)
        if topic is None or message.get("TopicArn") != topic:
            raise ApiError(403, "this account takes SES events from its email settings' events_topic_arn only")
        try:
            await self.verifier.verify(message)
        except NotGenuine as exc:
            raise ApiError(403, f"not a genuine SNS message: {exc}") from None
        except (OSError, TimeoutError, aiohttp.ClientError) as exc:  # SNS's certificate out of reach: SNS retries
            raise ApiError(503, f"the SNS signing certificate could not be fetched: {exc}") from None
        if message["Type"] == SUBSCRIPTION_CONFIRMATION:
            try:
                await self.verifier.confirm(message)
            except NotGenuine as exc:
                raise ApiError(403, str(exc)) from None
            except (OSError, TimeoutError, aiohttp.ClientError) as exc:
                raise ApiError(503, f"confirming the subscription failed: {exc}") from None
            logger.info("account %s: subscribed to SES events from %s", account, topic)
        elif message["Type"] == NOTIFICATION:
            await self._notification(account, message)
        return web.Response(status=200)

    async def _notification(self, account: str, message: dict[str, Any]) -> None:
        try:
            event = msgspec.json.decode(message["Message"])
            if not isinstance(event, dict):
                raise ses_feedback.SesEvent("the SES event is not a JSON object")
            link = await sent_as(self.redis, account, ses_feedback.message_id(event))
            now = await self.clock.now_ms()
            if link is None:
                wall_ms = int(time.time() * 1000)  # SES's times are real ones, whatever the deployment's clock
                recent = wall_ms - ses_feedback.sent_at_ms(event, 0) < EARLY_EVENTS_RETRIED_MS
                if ses_feedback.sent_by_kairos(event) and recent:
                    # Ours, and so recent that the router may not have written down which
                    # send it is yet (it does so once the batch's calls are done).
                    raise ApiError(503, "this message's send is not known yet; retry")
                return  # not sent by Kairos, or older than it keeps the trace
            records, counted = ses_feedback.records(event, link, now)
        except (msgspec.DecodeError, ses_feedback.SesEvent) as exc:
            # Genuine, from the account's topic, yet not an SES event we can read: a 4xx
            # would only make SNS retry it. Note it and take it.
            logger.warning("account %s: unreadable SES event in SNS message %s: %s",
                           account, message.get("MessageId"), exc)
            return
        if not records:
            return
        seen = keys.sns_seen(str(message["MessageId"]))
        if not await self.redis.set(seen, 1, nx=True, ex=SEEN_FOR_S):
            return  # SNS redelivered it
        sent = link.sent
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                feedback.append(pipe, link.partition, account, records)
                if counted is not None:
                    pipe.hincrby(keys.delivery_stats(account), f"{sent.channel}|{counted}", 1)
                    for name in source_counters(sent.source_kind, sent.source, sent.variant, counted):
                        pipe.hincrby(keys.delivery_stats(account), name, 1)
                await pipe.execute()
        except BaseException:
            await self.redis.delete(seen)  # not taken: SNS's retry must be
            raise
