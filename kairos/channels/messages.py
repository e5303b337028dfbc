"""What a message holds on each channel, checked when a journey or campaign is saved:
a push without a title or body, or an email without a subject, is refused then rather
than failing at 3 am for a million users. Unknown fields are refused too (a `tittle`
would otherwise go out as an empty notification).

    push     {"title", "body", "data": {str: str}, "image"}       title or body
    email    {"subject", "html", "text", "from"}                   subject, and html or text
    sms      {"text"}                                              text
    webhook  {"payload": any JSON}                                 (all optional)
    in_app   {"title", "body", "image", "url", "data", "expires"}  title or body
"""

from __future__ import annotations

from typing import Any, Mapping

from kairos.segments.definition import SegmentError, no_extra_fields, parse_duration

CHANNELS = ("push", "email", "sms", "webhook", "in_app")

_FIELDS: dict[str, set[str]] = {
    "push": {"title", "body", "data", "image"},
    "email": {"subject", "html", "text", "from"},
    "sms": {"text"},
    "webhook": {"payload"},
    "in_app": {"title", "body", "image", "url", "data", "expires"},
}
# At least one field of each group must be there.
_REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "push": (("title", "body"),),
    "email": (("subject",), ("html", "text")),
    "sms": (("text",),),
    "webhook": (),
    "in_app": (("title", "body"),),
}
_TEXT_FIELDS = {"title", "body", "image", "subject", "html", "text", "from", "url"}


def check_content(channel: str, message: Any, path: str) -> None:
    """SegmentError (the definition languages' error, naming the field) unless `message`
    has what `channel` needs."""
    if channel not in _FIELDS:
        raise SegmentError(path, f"{str(channel)[:40]!r} is not one of {', '.join(CHANNELS)}")
    if not isinstance(message, Mapping):
        raise SegmentError(path, "must be an object")
    no_extra_fields(dict(message), _FIELDS[channel], path)
    for group in _REQUIRED[channel]:
        if not any(isinstance(message.get(field), str) and message[field] for field in group):
            wanted = " or ".join(repr(f) for f in group)
            raise SegmentError(f"{path}.{group[0]}", f"is missing: {channel} messages need {wanted}")
    for field in _TEXT_FIELDS & set(message):
        if not isinstance(message[field], str):
            raise SegmentError(f"{path}.{field}", "must be text")
    data = message.get("data")
    if data is not None and (not isinstance(data, Mapping)
                             or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items())):
        raise SegmentError(f"{path}.data", "must be an object of text values (FCM's data payload)")
    if "expires" in message:
        parse_duration(message["expires"], f"{path}.expires")
