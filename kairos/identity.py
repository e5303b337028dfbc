"""How a record's identifiers become the user key that places it.

Until the identity graph lands (issue 3), a user is keyed by the first identifier the
record carries, in CleverTap's order of precedence. The key keeps the identifier's kind
so that `identity:42` and `objectId:42` are different users, as they are in CleverTap.
"""

from __future__ import annotations

IDENTIFIER_KINDS = ("identity", "objectId", "FBID", "GPID")


def user_key(kind: str, value: str) -> str:
    return f"{kind}:{value}"


def split_user_key(key: str) -> tuple[str, str]:
    kind, _, value = key.partition(":")
    return kind, value
