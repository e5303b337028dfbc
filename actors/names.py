"""Names of Kairos's actors in Ray. Actors find each other by these names rather than
taking handles as constructor arguments: Ray keeps such arguments in the object store,
where a restart after the driver is gone could not find them."""

NAMESPACE = "kairos"


def shard(index: int) -> str:
    return f"kairos-shard-{index}"


def ingest(index: int) -> str:
    return f"kairos-ingest-{index}"


def gateway(index: int) -> str:
    return f"kairos-gateway-{index}"


def journey(index: int) -> str:
    return f"kairos-journey-{index}"


def channel_router(index: int) -> str:
    return f"kairos-channel-router-{index}"


def campaign_scheduler(index: int) -> str:
    return f"kairos-campaign-scheduler-{index}"
