"""What campaigns keep: the saved campaign, as its author wrote it plus what Kairos
decided when it was saved (its id, the instant `now` meant)."""

from __future__ import annotations

from typing import Any

import msgspec

from kairos.campaigns.definition import Campaign, parse_campaign

ACTIVE, STOPPED = "active", "stopped"


class SavedCampaign(msgspec.Struct):
    id: int
    name: str
    definition: dict[str, Any]  # as written (the Kairos language; the CleverTap API's body is translated)
    status: str  # active | stopped
    created_ms: int
    stopped_ms: int = 0
    api: str = "kairos"  # the API it was created through: kairos | clevertap
    labels: list[str] = []
    description: str = ""

    def parsed(self) -> Campaign:
        return parse_campaign(self.definition, self.created_ms)


saved_campaign_decoder = msgspec.msgpack.Decoder(SavedCampaign)
