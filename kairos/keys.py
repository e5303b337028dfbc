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


def partition_snapshot_staging(partition: int) -> str:
    """A manifest being written, piece by piece, before it replaces `partition_snapshot`."""
    return f"{PREFIX}p:{partition}:snap:staging"


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


# --- journeys (see kairos.journeys) ----------------------------------------------------


def journeys(account_id: str) -> str:
    """Hash of the account's journeys: name -> msgpack `SavedJourney` (every version)."""
    return f"{PREFIX}a:{account_id}:journeys"


def journey_versions(account_id: str) -> str:
    """Hash: journey name -> the last version number it was saved with (kept on delete)."""
    return f"{PREFIX}a:{account_id}:journey-versions"


def journey_stats(account_id: str, name: str) -> str:
    """Hash of a journey's counters: `v<version>|<what>` and `v<version>|node|<id>|<what>`."""
    return f"{PREFIX}a:{account_id}:journey-stats:{name}"


# set: accounts that have (or had) journeys; journey actors and shards load them at start.
JOURNEY_ACCOUNTS = PREFIX + "journey-accounts"


def journey_inbox(partition: int) -> str:
    """Stream of the events a partition's shard forwards to journeys: one entry per log
    batch that had any, with the batch's log id as its id (so a replay adds nothing)."""
    return f"{PREFIX}p:{partition}:journey-inbox"


def journey_positions(partition: int) -> str:
    """Hash: account \\0 journey \\0 user -> msgpack `Position`, for the partition's users."""
    return f"{PREFIX}p:{partition}:journey-positions"


def journey_entries(partition: int) -> str:
    """Hash: account \\0 journey \\0 user -> msgpack [entries, last entry ms]."""
    return f"{PREFIX}p:{partition}:journey-entries"


def journey_cursors(partition: int) -> str:
    """Hash of where the partition's journeys have read to: `inbox`, `sig\\0<account>\\0<segment>`
    (a live segment's signal stream) and `sched\\0<account>\\0<journey>` (last schedule run, ms)."""
    return f"{PREFIX}p:{partition}:journey-cursors"


def outbox(partition: int) -> str:
    """Stream of send requests (field `s`: msgpack `SendRequest`) for the channel router."""
    return f"{PREFIX}p:{partition}:outbox"


# --- campaigns (see kairos.campaigns) ----------------------------------------------------


def campaigns(account_id: str) -> str:
    """Hash of the account's campaigns: id -> msgpack `SavedCampaign`."""
    return f"{PREFIX}a:{account_id}:campaigns"


def campaign_ids(account_id: str) -> str:
    """Counter that numbers the account's campaigns (CleverTap's ids are numbers)."""
    return f"{PREFIX}a:{account_id}:campaign-ids"


def campaigns_stopped(account_id: str) -> str:
    """Set of the account's stopped campaign ids: routers drop their messages still queued."""
    return f"{PREFIX}a:{account_id}:campaigns-stopped"


def campaign_stats(account_id: str, campaign_id: int) -> str:
    """Hash of what a campaign's schedulers did: `audience`, `runs`, `queued|<variant>`,
    `control`, `missed_slot`, `triggered`, and `done|<run>` (how many schedulers finished
    that run; see kairos.campaigns.scheduler)."""
    return f"{PREFIX}a:{account_id}:campaign-stats:{campaign_id}"


def campaign_reached(account_id: str, campaign_id: int, partition: int) -> str:
    """Set of the partition's users a `once`-per-user triggered campaign has taken."""
    return f"{PREFIX}a:{account_id}:campaign-reached:{campaign_id}:{partition}"


# set: accounts that have (or had) campaigns; schedulers and shards load them at start.
CAMPAIGN_ACCOUNTS = PREFIX + "campaign-accounts"


def campaign_inbox(partition: int) -> str:
    """Stream of the events a partition's shard forwards to triggered campaigns (like
    `journey_inbox`: one entry per log batch, under the batch's log id)."""
    return f"{PREFIX}p:{partition}:campaign-inbox"


def campaign_cursors(partition: int) -> str:
    """Hash of the partition's campaign progress: `inbox` (how far its inbox is read) and
    `run\\0<account>\\0<id>` (the run under way and the last user it queued)."""
    return f"{PREFIX}p:{partition}:campaign-cursors"


# --- delivery (see kairos.routing and kairos.channels) ----------------------------------


def delivery_settings(account_id: str) -> str:
    """The account's delivery settings: the JSON its owner saved (kairos.routing.settings)."""
    return f"{PREFIX}a:{account_id}:delivery-settings"


def send_history(partition: int) -> str:
    """Hash: account \0 user -> msgpack list of `HistoryEntry`: the user's recent sends, for
    frequency caps and for dedupe (a send id seen here is never delivered again)."""
    return f"{PREFIX}p:{partition}:send-history"


def router_delayed(partition: int) -> str:
    """Sorted set of send requests waiting (quiet hours, throttle, retry backoff), scored
    by when to look at them again; members are msgpack `Pending`."""
    return f"{PREFIX}p:{partition}:router-delayed"


def router_in_flight(partition: int) -> str:
    """Hash: batch id -> msgpack list of `InFlight`, the requests handed to providers whose
    outcomes are not written yet; what is left after a crash is counted `unknown`."""
    return f"{PREFIX}p:{partition}:router-in-flight"


def arrival_receipt(partition: int, send_id: str) -> str:
    """A push whose arrival the router awaits before it falls back: "0" until the app
    reports it, "1" after (set only while awaited, so receipts nobody waits for leave nothing)."""
    return f"{PREFIX}p:{partition}:receipt:{send_id}"


def provider_message(account_id: str, provider_id: str) -> str:
    """The send (msgpack `TrackedLink`) a provider's own message id stands for, kept for
    the provider's later reports on it (SES deliveries, bounces, complaints); per account,
    as the ids come from providers each account chooses."""
    return f"{PREFIX}a:{account_id}:provider-message:{provider_id}"


def sns_seen(message_id: str) -> str:
    """Set once an SNS notification is taken: SNS delivers at least once."""
    return f"{PREFIX}sns-seen:{message_id}"


def router_cursor(partition: int) -> str:
    """The outbox entry id the partition's router has taken everything up to."""
    return f"{PREFIX}p:{partition}:router-cursor"


def delivery_events(partition: int) -> str:
    """Stream of records the router feeds back into ingest (field `a`: the account, `r`:
    a msgpack list of Records):
    Notification Sent / Failed / Delivered events, and removals of dead push tokens."""
    return f"{PREFIX}p:{partition}:delivery-events"


def dead_letters(account_id: str) -> str:
    """Stream of the account's messages that failed for good (capped length)."""
    return f"{PREFIX}a:{account_id}:dead-letters"


def delivery_stats(account_id: str) -> str:
    """Hash of delivery counters: `<channel>|<outcome>` and `<kind>:<source>|<outcome>`."""
    return f"{PREFIX}a:{account_id}:delivery-stats"


def throttle(account_id: str, source: str, minute: int) -> str:
    """Messages a journey or campaign sent in one minute (epoch minutes), for its throttle."""
    return f"{PREFIX}a:{account_id}:throttle:{source}:{minute}"


def inbox(account_id: str, user: str) -> str:
    """Hash: message id -> msgpack `InboxMessage`, the user's in-app inbox."""
    return f"{PREFIX}a:{account_id}:inbox:{user}"


def inbox_live(account_id: str, user: str) -> str:
    """Pub/sub channel on which a user's new in-app messages are announced (for SSE)."""
    return f"{PREFIX}a:{account_id}:inbox-live:{user}"


# The AES key that seals open and click tracking tokens (kairos.routing.tracking); made
# once per deployment, shared by every router and gateway.
TRACKING_KEY = PREFIX + "tracking-key"

# The manual clock's current time in epoch ms (only with KAIROS_CLOCK=manual).
MANUAL_CLOCK = PREFIX + "manual-clock"
