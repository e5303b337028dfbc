"""Identifiers: how a record names the person it is about.

An identifier is a kind and a value, written `"kind:value"`, e.g. `identity:42`. The
kind is kept so that `identity:42` and `objectId:42` stay different people unless a
record ties them. Segment's `userId` is the customer's own id, as CleverTap's
`identity` is, so both are the kind `identity`; an app that uses both APIs reaches the
same profile. Which canonical user an identifier belongs to is the identity graph's
business (kairos.identity_graph).
"""

from __future__ import annotations

import re

# CleverTap's record-level identifiers, in its order of precedence.
IDENTIFIER_KINDS = ("identity", "objectId", "FBID", "GPID")
# Profile properties that identify a person too: a profile carrying one of these is
# merged with whoever else carries it.
IDENTIFYING_PROPERTIES = ("Email", "Phone")
# Segment's anonymous device id. Segment's userId maps to `identity`.
ANONYMOUS_ID = "anonymousId"

# What an email or phone number must look like to identify anyone: junk such as "n/a"
# would otherwise merge every profile that carries it.
EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
PHONE_RE = re.compile(r"\+[0-9]{6,15}")
IDENTIFYING_FORMATS = {"Email": EMAIL_RE, "Phone": PHONE_RE}


def user_key(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def split_user_key(key: str) -> tuple[str, str]:
    kind, _, value = key.partition(":")
    return kind, value


def identifying_key(name: str, value: str) -> str:
    """The identifier of an identifying property's value. Emails differ only in letter
    case as typed, not as people: `Ann@Example.com` and `ann@example.com` are one."""
    return user_key(name, value.lower() if name == "Email" else value)
