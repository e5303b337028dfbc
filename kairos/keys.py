"""Every Redis key Kairos uses, in one place.

All keys share the `kairos:` prefix so a Redis shared with other software can be
inspected and cleaned safely.
"""

PREFIX = "kairos:"

# Deployment metadata (e.g. the partition count, fixed at first start).
META = PREFIX + "meta"


def account(account_id: str) -> str:
    """Hash with the account's name, passcode salt and hash."""
    return f"{PREFIX}account:{account_id}"


ACCOUNT_NAMES = PREFIX + "account-names"  # hash: name -> account id


def write_key(digest: str) -> str:
    """The account id that a Segment write key (by its SHA-256) belongs to."""
    return f"{PREFIX}write-key:{digest}"


def partition_stream(partition: int) -> str:
    """The partition's durable log: one entry per applied batch."""
    return f"{PREFIX}p:{partition}:log"


def partition_snapshot(partition: int) -> str:
    """The partition's latest snapshot manifest (msgpack), naming the log id it covers."""
    return f"{PREFIX}p:{partition}:snap"


def partition_chunk(partition: int, chunk_id: str) -> str:
    """One sealed column chunk of a partition: written once, never changed."""
    return f"{PREFIX}p:{partition}:chunk:{chunk_id}"


# --- identity graph (see kairos.identity_graph) ----------------------------------------


def identity_prefix(account_id: str) -> str:
    """Prefix of an account's identity keys: `ids` (hash identifier -> user), `seq`
    (counter of users), `fwd` (hash merged user -> the user it went into) and `m:<user>`
    (set of the user's identifiers)."""
    return f"{PREFIX}a:{account_id}:"


# hash: account \0 merged user -> JSON [account, user, into, since] for a merge, plus
# [[source, fresh user], ...] for a demerge (see kairos.identity_graph.Merge).
PENDING_MERGES = PREFIX + "merges"


def segments(account_id: str) -> str:
    """Hash of the account's saved segments: name -> msgpack `SavedSegment`."""
    return f"{PREFIX}a:{account_id}:segments"


def segment_versions(account_id: str) -> str:
    """Hash: segment name -> the last version number it was saved with (kept on delete)."""
    return f"{PREFIX}a:{account_id}:segment-versions"


# set: accounts that have (or had) a live segment; shards load their definitions at start.
LIVE_SEGMENT_ACCOUNTS = PREFIX + "live-segment-accounts"


def segment_signals(account_id: str, name: str) -> str:
    """Stream of a live segment's entry and exit signals: fields u (user), e (1 entered,
    0 left), v (segment version), t (epoch ms)."""
    return f"{PREFIX}a:{account_id}:signals:{name}"
