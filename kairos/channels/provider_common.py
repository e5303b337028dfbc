"""What the delivery providers share that is not about any one wire protocol: reading
their settings with errors that name the bad field, checking an email address before it
reaches a header or an envelope, and taking an email's parts out of a rendered message.
"""

from __future__ import annotations

import re
from email.utils import parseaddr
from typing import Any

import msgspec

from kairos.channels.base import Delivery, Outcome, rejected
from kairos.segments.definition import SegmentError, no_extra_fields

MAX_TIMEOUT_S = 60.0  # a slow provider must not hold a router round for minutes
# Deliberately loose (what MTAs accept is wider than any regex), but strict about what can
# break a header or an SMTP command: whitespace, control characters, angle brackets, commas.
_LOCAL = r"[^@\s\x00-\x1f\x7f\"(),:;<>\[\\\]]{1,64}"
_LABEL = r"[^@.\s\x00-\x1f\x7f\"(),:;<>\[\\\]]+"
_EMAIL = re.compile(rf"{_LOCAL}@(?:{_LABEL}\.)+{_LABEL}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def settings_fields(raw: Any, allowed: set[str], path: str, provider: str) -> dict[str, Any]:
    """The settings object itself: a dict with known fields only. A `provider` field is
    accepted (the channel config names which provider it configures) but must match."""
    if not isinstance(raw, dict):
        raise SegmentError(path, f"must be an object with the {provider} provider's settings")
    no_extra_fields(raw, allowed | {"provider"}, path)
    if "provider" in raw and raw["provider"] != provider:
        raise SegmentError(f"{path}.provider", f"must be {provider!r} here, not {str(raw['provider'])[:40]!r}")
    return raw


def text_field(raw: dict[str, Any], key: str, path: str, *, required: bool = False,
               pattern: str | None = None, hint: str = "", max_len: int = 500) -> str | None:
    if key not in raw or raw[key] is None:
        if required:
            raise SegmentError(f"{path}.{key}", f"is missing{': ' + hint if hint else ''}")
        return None
    value = raw[key]
    if not isinstance(value, str) or not value.strip() or len(value) > max_len or _CONTROL.search(value):
        raise SegmentError(f"{path}.{key}", f"must be a non-empty single-line string of at most {max_len} characters")
    if pattern is not None and not re.fullmatch(pattern, value):
        raise SegmentError(f"{path}.{key}", f"{value[:60]!r} is not valid{': ' + hint if hint else ''}")
    return value


def choice_field(raw: dict[str, Any], key: str, path: str, options: tuple[str, ...], default: str) -> str:
    value = raw.get(key, default)
    if value not in options:
        raise SegmentError(f"{path}.{key}", f"{str(value)[:40]!r} is not one of {', '.join(options)}")
    return str(value)


def timeout_field(raw: dict[str, Any], path: str, default: float) -> float:
    value = raw.get("timeout_s", default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_TIMEOUT_S:
        raise SegmentError(f"{path}.timeout_s", f"must be a number of seconds above 0 and at most {MAX_TIMEOUT_S:g}")
    return float(value)


def secret_pair(raw: dict[str, Any], user_key: str, secret_key: str, path: str) -> tuple[str | None, str | None]:
    """Both or neither: one alone is always a configuration mistake, never a choice."""
    user = text_field(raw, user_key, path)
    secret = text_field(raw, secret_key, path)
    if (user is None) != (secret is None):
        missing = secret_key if secret is None else user_key
        raise SegmentError(f"{path}.{missing}", f"is missing: {user_key} and {secret_key} go together")
    return user, secret


def sender_field(raw: dict[str, Any], key: str, path: str) -> str:
    value = text_field(raw, key, path, required=True, hint="the address mail is sent from")
    assert value is not None
    if sender_address(value) is None:
        raise SegmentError(f"{path}.{key}", f"{value[:60]!r} is not an email address (or 'Name <address>')")
    return value


def plausible_email(address: str) -> bool:
    return len(address) <= 254 and _EMAIL.fullmatch(address) is not None


def sender_address(value: str) -> str | None:
    """The bare address in 'a@b.c' or 'Name <a@b.c>', or None if it is neither."""
    if _CONTROL.search(value):
        return None
    _, address = parseaddr(value)
    return address if plausible_email(address) else None


def single_line(value: str) -> str:
    """`value` with control characters (line breaks above all) made harmless for a header."""
    return _CONTROL.sub("_", value)


def redacted_repr(settings: msgspec.Struct, secrets: frozenset[str]) -> str:
    """Settings end up in logs and error messages: never with a password in them."""
    parts = []
    for name in settings.__struct_fields__:
        value = getattr(settings, name)
        parts.append(f"{name}={'***' if name in secrets and value is not None else repr(value)}")
    return f"{type(settings).__name__}({', '.join(parts)})"


class EmailContent(msgspec.Struct, frozen=True):
    sender: str  # as given: 'a@b.c' or 'Name <a@b.c>'
    sender_address: str  # the bare address, for the SMTP envelope and the Message-ID
    recipient: str
    subject: str
    html: str | None
    text: str | None


def email_content(delivery: Delivery, default_sender: str) -> EmailContent | Outcome:
    """The parts of a rendered email message, or the rejection that says what is wrong with
    it. A bad recipient is unreachable for good; a bad message is only this message's fault."""
    if not plausible_email(delivery.address):
        return rejected(f"not an email address: {delivery.address[:100]!r}", unreachable=True)
    message = delivery.message
    subject, html, text = message.get("subject"), message.get("html"), message.get("text")
    if not isinstance(subject, str) or not subject or _CONTROL.search(subject):
        return rejected("message needs a single-line 'subject'")
    if not any(isinstance(part, str) and part for part in (html, text)):
        return rejected("message needs an 'html' or a 'text' body")
    if any(part is not None and not isinstance(part, str) for part in (html, text)):
        return rejected("message 'html' and 'text' must be strings")
    sender = message.get("from") or default_sender
    bare = sender_address(sender) if isinstance(sender, str) else None
    if bare is None:
        return rejected(f"message 'from' is not an email address: {str(sender)[:100]!r}")
    return EmailContent(sender, bare, delivery.address, subject, html or None, text or None)
