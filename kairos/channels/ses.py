"""Email through Amazon SES v2 (`SendEmail` with Simple content).

Which rejections mean the address is dead: only a recipient that is not an email address
at all, caught here before any call. SES answers `SendEmail` before it tries to deliver,
so its synchronous errors are about the account, the sender identity, the configuration
set or the content (a sandbox account's "Email address is not verified" names the
recipient, yet the address may be perfectly good). Real bounces and complaints arrive
later as SES events; each message carries the send id as the `kairos_send_id` tag, which
SES copies into those events, so they can be traced back to the send.
"""

from __future__ import annotations

import re
from email.utils import formataddr, parseaddr
from typing import Any

from kairos.channels.aws_common import AWS_FIELDS, AwsClient, AwsSettings, aws_fields
from kairos.channels.base import Delivery, Outcome
from kairos.channels.provider_common import email_content, sender_field, settings_fields, text_field

SEND_ID_TAG = "kairos_send_id"
_TAG_UNSAFE = re.compile(r"[^A-Za-z0-9-]")
MAX_TAG = 256


class SesSettings(AwsSettings, frozen=True, kw_only=True):
    from_address: str  # 'a@b.c' or 'Name <a@b.c>'; must be a verified SES identity
    configuration_set: str | None = None  # where SES publishes bounce/complaint events


def parse_settings(raw: Any, path: str = "ses") -> SesSettings:
    fields = settings_fields(raw, AWS_FIELDS | {"from_address", "configuration_set"}, path, "ses")
    return SesSettings(
        **aws_fields(fields, path),
        from_address=sender_field(fields, "from_address", path),
        configuration_set=text_field(fields, "configuration_set", path, pattern=r"[A-Za-z0-9_-]{1,64}",
                                     hint="letters, digits, '_' and '-', at most 64", max_len=64),
    )


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
        return await self._client.call("send_email", _never_unreachable, **params)

    async def close(self) -> None:
        await self._client.close()


def _never_unreachable(code: str, message: str) -> bool:
    # See the module docstring: SendEmail's own errors never prove the address dead.
    return False
