"""Open and click tracking: sealed tokens that only this deployment can make or read, and
the rewriting of email HTML and in-app messages. No sockets."""

from __future__ import annotations

import base64
import html
import re

import pytest

from kairos.routing.delivery_events import CLICKED, SentMessage, notification_event
from kairos.routing.settings import TrackingSettings, parse_delivery_settings
from kairos.routing.tracking import BadToken, TrackedLink, Tracker
from kairos.segments.definition import SegmentError

pytestmark = pytest.mark.timeout(30)

KEY = bytes(range(32))
BASE = "https://t.shop.test"
SENT = SentMessage("acct1", "email:ann@example.com", "s-1", "email", "journey", "welcome", "mail", "B")
LINK = TrackedLink(SENT, 3)


@pytest.fixture
def tracker() -> Tracker:
    return Tracker(KEY, BASE + "/")


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


def test_a_token_reads_back_to_the_message_it_was_made_for(tracker: Tracker) -> None:
    url = tracker.click_url(LINK, "https://shop.test/sale?x=1&y=2")
    assert url.startswith(BASE + "/t/c/")
    assert tracker.read(token_of(url)) == TrackedLink(SENT, 3, "https://shop.test/sale?x=1&y=2")
    assert tracker.read(token_of(tracker.open_url(LINK))) == LINK


def test_the_users_identifier_cannot_be_read_from_the_url(tracker: Tracker) -> None:
    token = token_of(tracker.open_url(LINK))
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"ann@example.com" not in raw and b"welcome" not in raw


def test_forged_cut_or_foreign_tokens_are_refused(tracker: Tracker) -> None:
    token = token_of(tracker.click_url(LINK, "https://shop.test/"))
    flipped = token[:20] + ("A" if token[20] != "A" else "B") + token[21:]
    other = Tracker(bytes(32), BASE)
    for bad in (flipped, token[:-4], "", "A" * 9000, "not base64 at all!", token_of(other.open_url(LINK))):
        with pytest.raises(BadToken):
            tracker.read(bad)


def test_email_links_are_tracked_and_a_pixel_added_before_the_body_ends(tracker: Tracker) -> None:
    message = {"subject": "Hi", "text": "Go to https://shop.test/a",
               "html": '<html><BODY><a class="btn" href="https://shop.test/a?x=1&amp;y=2">A</a>'
                       "<a href='http://shop.test/b'>B</a><a href=\"mailto:help@shop.test\">mail</a>"
                       '<a href="#top">top</a><a href="tel:+4930123">call</a></BODY></html>'}
    original = dict(message)
    out = tracker.email(message, LINK, opens=True, clicks=True)
    assert message == original, "the planned message is not changed in place"
    assert out["text"] == message["text"] and out["subject"] == "Hi"
    hrefs = [html.unescape(h) for h in re.findall(r'href="([^"]+)"', out["html"])]
    tracked = [tracker.read(token_of(h)).url for h in hrefs if h.startswith(BASE + "/t/c/")]
    assert tracked == ["https://shop.test/a?x=1&y=2", "http://shop.test/b"]
    assert {"mailto:help@shop.test", "#top", "tel:+4930123"} <= set(hrefs)
    assert 'class="btn" href=' in out["html"]
    pixel_at, body_end = out["html"].index("<img src=\"" + BASE + "/t/o/"), out["html"].index("</BODY>")
    assert pixel_at < body_end


def test_email_tracking_follows_the_settings(tracker: Tracker) -> None:
    message = {"subject": "Hi", "html": '<p><a href="https://shop.test/">x</a></p>'}
    assert tracker.email(message, LINK, opens=False, clicks=False) is message
    only_opens = tracker.email(message, LINK, opens=True, clicks=False)["html"]
    assert only_opens.startswith('<p><a href="https://shop.test/">x</a></p><img src="' + BASE + "/t/o/")
    only_clicks = tracker.email(message, LINK, opens=False, clicks=True, base_url="https://click.shop.test")["html"]
    assert "https://click.shop.test/t/c/" in only_clicks and "<img" not in only_clicks
    text_only = {"subject": "Hi", "text": "plain"}
    assert tracker.email(text_only, LINK, opens=True, clicks=True) == text_only


def test_in_app_messages_get_view_and_click_urls(tracker: Tracker) -> None:
    out = tracker.in_app({"title": "Sale", "url": "myapp://sale"}, LINK, opens=True, clicks=True)
    assert tracker.read(token_of(out["view_url"])) == LINK
    assert tracker.read(token_of(out["click_url"])).url == "myapp://sale"
    bare = tracker.in_app({"title": "Hi"}, LINK, opens=False, clicks=True)
    assert "view_url" not in bare and tracker.read(token_of(bare["click_url"])).url is None


def test_a_push_carries_its_arrival_view_and_click_urls_in_its_data(tracker: Tracker) -> None:
    out = tracker.push({"title": "Hi", "data": {"screen": "sale"}}, LINK, opens=True, clicks=False)
    assert out["data"]["screen"] == "sale" and "kairos_click_url" not in out["data"]
    delivered, viewed = out["data"]["kairos_delivered_url"], out["data"]["kairos_view_url"]
    assert delivered.startswith(BASE + "/t/d/") and viewed.startswith(BASE + "/t/o/")
    assert tracker.read(token_of(delivered)) == tracker.read(token_of(viewed)) == LINK
    assert sum(len(k) + len(v) for k, v in out["data"].items()) < 1024, "FCM allows 4 KB of data in all"


def test_events_describe_the_message_and_dedupe_by_send_id() -> None:
    event = notification_event(SENT, CLICKED, 1000, {"Url": "https://shop.test/"}, "|abc")
    assert event.user == "email:ann@example.com" and event.name == "Notification Clicked"
    assert event.props == {"Channel": "email", "Send Id": "s-1", "Node": "mail", "Journey": "welcome",
                           "Variant": "B", "Url": "https://shop.test/"}
    assert event.message_id == "kairos|s-1|Notification Clicked|abc"


def test_tracking_settings_are_checked() -> None:
    assert parse_delivery_settings({}).tracking == TrackingSettings(True, True, None)
    parsed = parse_delivery_settings({"tracking": {"opens": False, "base_url": "https://t.shop.test"}})
    assert parsed.tracking == TrackingSettings(False, True, "https://t.shop.test")
    for raw, path in (({"tracking": []}, "settings.tracking"), ({"tracking": {"opens": "yes"}}, "settings.tracking.opens"),
                      ({"tracking": {"base_url": "t.shop.test"}}, "settings.tracking.base_url"),
                      ({"tracking": {"base_url": "https://t.shop.test/?q=1"}}, "settings.tracking.base_url"),
                      ({"tracking": {"pixel": True}}, "settings.tracking")):
        with pytest.raises(SegmentError) as info:
            parse_delivery_settings(raw)
        assert info.value.path.startswith(path), (raw, info.value.path)
