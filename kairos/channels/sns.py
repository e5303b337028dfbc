"""SMS through Amazon SNS (`Publish` straight to a phone number, no topic).

The number is SNS's to judge (it knows which ranges and countries it can reach), so it is
not pre-checked here: an InvalidParameter about the phone number marks the address
unreachable. An opted-out number is rejected but not unreachable: the number works, its
owner just declined SMS, which is consent for the profile to record, not a dead address.
"""

from __future__ import annotations

import re
from typing import Any

from kairos.channels.aws_common import AWS_FIELDS, AwsClient, AwsSettings, aws_fields
from kairos.channels.base import Delivery, Outcome, rejected
from kairos.channels.provider_common import choice_field, settings_fields, text_field

SMS_TYPES = ("Transactional", "Promotional")
_BAD_PARAMETER = frozenset({"InvalidParameter", "InvalidParameterValue", "ParameterValueInvalid"})
_OPTED_OUT = re.compile(r"opt(ed)?[\s_-]?out", re.IGNORECASE)


class SnsSettings(AwsSettings, frozen=True, kw_only=True):
    sender_id: str | None = None  # alphanumeric sender shown where the country supports one
    sms_type: str = "Transactional"  # Transactional gets the more reliable (dearer) routes


def parse_settings(raw: Any, path: str = "sns") -> SnsSettings:
    fields = settings_fields(raw, AWS_FIELDS | {"sender_id", "sms_type"}, path, "sns")
    return SnsSettings(
        **aws_fields(fields, path),
        sender_id=text_field(fields, "sender_id", path, pattern=r"(?=.*[A-Za-z])[A-Za-z0-9]{1,11}",
                             hint="1 to 11 letters and digits, at least one letter", max_len=11),
        sms_type=choice_field(fields, "sms_type", path, SMS_TYPES, "Transactional"),
    )


class SnsProvider:
    channel = "sms"

    def __init__(self, settings: SnsSettings) -> None:
        self._client = AwsClient("sns", settings)
        self._attributes: dict[str, Any] = {
            "AWS.SNS.SMS.SMSType": {"DataType": "String", "StringValue": settings.sms_type}}
        if settings.sender_id is not None:
            self._attributes["AWS.SNS.SMS.SenderID"] = {"DataType": "String", "StringValue": settings.sender_id}

    async def send(self, delivery: Delivery) -> Outcome:
        text = delivery.message.get("text")
        if not isinstance(text, str) or not text:
            return rejected("message needs a 'text'")
        return await self._client.call("publish", _unreachable, PhoneNumber=delivery.address, Message=text,
                                       MessageAttributes=self._attributes)

    async def close(self) -> None:
        await self._client.close()


def _unreachable(code: str, message: str) -> bool:
    # InvalidParameter also covers a message too long or a bad sender id: only the phone
    # number's own fault kills the address.
    return code in _BAD_PARAMETER and "phone" in message.lower() and not _OPTED_OUT.search(message)
