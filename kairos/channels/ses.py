"""Email through Amazon SES v2 (`SendEmail` with Simple content).

Which rejections mean the address is dead: only a recipient that is not an email address
at all, caught here before any call. SES answers `SendEmail` before it tries to deliver,
so its synchronous errors are about the account, the sender identity, the configuration
set or the content (a sandbox account's "Email address is not verified" names the
recipient, yet the address may be perfectly good). Deliveries, bounces and complaints
arrive later as SES events, through the configuration set's SNS topic
(`events_topic_arn`) to the gateway (see gateway/ses_events_api.py), which finds the send
by SES's message id. Each message also carries the send id as the `kairos_send_id` tag,
for the account's own event destinations.
"""

from __future__ import annotations

import re
from email.utils import formataddr, parseaddr
from typing import Any

import msgspec

from kairos.channels.aws_common import AWS_FIELDS, AwsClient, AwsSettings, aws_fields
from kairos.channels.base import DELIVERED, Delivery, Outcome
from kairos.channels.provider_common import email_content, sender_field, settings_fields, text_field
from kairos.segments.definition import SegmentError

SEND_ID_TAG = "kairos_send_id"
TOPIC_ARN = r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9-]")
MAX_TAG = 256


class SesSettings(AwsSettings, frozen=True, kw_only=True):
    from_address: str  # 'a@b.c' or 'Name <a@b.c>'; must be a verified SES identity
    configuration_set: str | None = None  # where SES publishes bounce/complaint events
    # The SNS topic that configuration set publishes to, subscribed to the gateway's
    # /t/ses/<account> (None: Kairos hears nothing back from SES).
    events_topic_arn: str | None = None


def parse_settings(raw: Any, path: str = "ses") -> SesSettings:
    fields = settings_fields(raw, AWS_FIELDS | {"from_address", "configuration_set", "events_topic_arn"}, path, "ses")
    settings = SesSettings(
        **aws_fields(fields, path),
        from_address=sender_field(fields, "from_address", path),
        configuration_set=text_field(fields, "configuration_set", path, pattern=r"[A-Za-z0-9_-]{1,64}",
                                     hint="letters, digits, '_' and '-', at most 64", max_len=64),
        events_topic_arn=text_field(fields, "events_topic_arn", path, pattern=TOPIC_ARN,
                                    hint="arn:aws:sns:<region>:<account>:<topic>"),
    )
    if settings.events_topic_arn is not None and settings.configuration_set is None:
        raise SegmentError(f"{path}.configuration_set", "is needed with events_topic_arn: SES publishes events "
                           "through a configuration set's event destination")
    return settings


def tag_value(send_id: str) -> str:
    """The send id in SES's tag alphabet (letters, digits, '_', '-'). Other characters,
    and '_' itself, become '_' plus their code point in hex, so two ids never collide."""
    escaped = _TAG_UNSAFE.sub(lambda m: f"_{ord(m.group()):x}_", send_id)
    return escaped[:MAX_TAG]


class SesProvider:
    channel = "email"

    def __init__(self, settings: SesSettings) -> None:
        self._settings = settings
        self._client = AwsClient("sesv2", settings)

    async def send(self, delivery: Delivery) -> Outcome:
        content = email_content(delivery, self._settings.from_address)
        if isinstance(content, Outcome):
            return content
        body: dict[str, Any] = {}
        if content.text is not None:
            body["Text"] = {"Data": content.text, "Charset": "UTF-8"}
        if content.html is not None:
            body["Html"] = {"Data": content.html, "Charset": "UTF-8"}
        params: dict[str, Any] = {
            # SES wants a non-ASCII display name as an RFC 2047 encoded word, and a name with
            # a comma or quote quoted: formataddr does both.
            "FromEmailAddress": formataddr((parseaddr(content.sender)[0], content.sender_address)),
            "Destination": {"ToAddresses": [content.recipient]},
            "Content": {"Simple": {"Subject": {"Data": content.subject, "Charset": "UTF-8"}, "Body": body}},
            "EmailTags": [{"Name": SEND_ID_TAG, "Value": tag_value(delivery.send_id)}],
        }
        if self._settings.configuration_set is not None:
            params["ConfigurationSetName"] = self._settings.configuration_set
        outcome = await self._client.call("send_email", _never_unreachable, **params)
        if outcome.status == DELIVERED and outcome.provider_id and self._settings.events_topic_arn:
            return msgspec.structs.replace(outcome, reports_later=True)
        return outcome

    async def close(self) -> None:
        await self._client.close()


def _never_unreachable(code: str, message: str) -> bool:
    # See the module docstring: SendEmail's own errors never prove the address dead.
    return False
