"""What SES's reports on an email mean for its user."""

from __future__ import annotations

from typing import Any

import pytest

from kairos.models import EventRecord, ProfileRecord
from kairos.routing import ses_feedback
from kairos.routing.delivery_events import SentMessage
from kairos.routing.tracking import TrackedLink

pytestmark = pytest.mark.timeout(30)

LINK = TrackedLink(SentMessage("ACC", "identity:ann", "ACC/j/1/ann/1/mail", "email", "journey", "j", "mail"), 3)
NOW = 1_795_500_000_000
MAIL = {"messageId": "ses-1", "destination": ["ann@example.com"], "timestamp": "2026-11-24T10:00:00.000Z"}


def event(kind: str, **sections: Any) -> dict[str, Any]:
    return {"eventType": kind, "mail": MAIL, **sections}


def test_a_delivery_is_notification_delivered_at_its_time() -> None:
    records, counted = ses_feedback.records(event("Delivery", delivery={"timestamp": "2026-11-24T10:00:05.000Z"}),
                                            LINK, NOW)
    [delivered] = records
    assert isinstance(delivered, EventRecord) and delivered.name == "Notification Delivered"
    assert delivered.ts_ms == 1_795_514_405_000 and delivered.user == "identity:ann" and counted == "delivered"
    assert delivered.props["Send Id"] == "ACC/j/1/ann/1/mail" and delivered.props["Journey"] == "j"


def test_a_hard_bounce_fails_the_message_and_forgets_that_address_only() -> None:
    bounce = {"bounceType": "Permanent", "bounceSubType": "General", "timestamp": "2026-11-24T10:01:00.000Z",
              "bouncedRecipients": [{"emailAddress": "ann@example.com", "diagnosticCode": "smtp; 550 5.1.1 user unknown"}]}
    records, counted = ses_feedback.records(event("Bounce", bounce=bounce), LINK, NOW)
    failed, forget = records
    assert isinstance(failed, EventRecord) and failed.name == "Notification Failed"
    assert failed.props["Reason"] == "bounce: Permanent/General: smtp; 550 5.1.1 user unknown"
    assert isinstance(forget, ProfileRecord) and forget.props == {}
    assert forget.unset_if == {"Email": "ann@example.com"} and counted == "bounced"


def test_a_soft_bounce_fails_the_message_and_keeps_the_address() -> None:
    records, counted = ses_feedback.records(
        event("Bounce", bounce={"bounceType": "Transient", "bounceSubType": "MailboxFull"}), LINK, NOW)
    assert [type(r) for r in records] == [EventRecord] and counted == "soft_bounced"
    assert records[0].ts_ms == NOW  # no timestamp in the report: when it came


def test_a_complaint_unsubscribes_the_user_from_email() -> None:
    records, counted = ses_feedback.records(event("Complaint", complaint={"complaintFeedbackType": "abuse"}), LINK, NOW)
    [unsubscribe] = records
    assert isinstance(unsubscribe, ProfileRecord) and unsubscribe.props == {"MSG-email": False}
    assert counted == "complained"


def test_events_kairos_tracks_itself_add_nothing_and_broken_ones_are_named() -> None:
    assert ses_feedback.records(event("Open", open={}), LINK, NOW) == ([], None)
    assert ses_feedback.message_id(event("Delivery")) == "ses-1"
    with pytest.raises(ses_feedback.SesEvent, match="mail.messageId"):
        ses_feedback.message_id({"eventType": "Delivery", "mail": {}})
    with pytest.raises(ses_feedback.SesEvent, match="bounce"):
        ses_feedback.records({"eventType": "Bounce", "mail": MAIL}, LINK, NOW)
