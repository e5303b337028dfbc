"""Liquid message templates: checked on save, rendered per user, never half-rendered."""

from __future__ import annotations

import pytest

from kairos.segments.definition import SegmentError
from kairos.templates import RenderError, check_message, render_message

pytestmark = pytest.mark.timeout(30)


def test_profile_and_event_fill_the_message_with_defaults() -> None:
    message = {"title": "Hi {{ profile.Name | default: 'there' }}",
               "body": "Your {{ event.Product }} is waiting ({{ event.Price | times: 0.9 }} with the coupon)",
               "data": {"deep": ["{{ profile.City | upcase }}", 3]}, "badge": 1}
    rendered = render_message(message, {"Name": "Ann", "City": "Pune"}, {"Product": "Watch", "Price": 100})
    assert rendered == {"title": "Hi Ann", "body": "Your Watch is waiting (90.0 with the coupon)",
                        "data": {"deep": ["PUNE", 3]}, "badge": 1}
    assert render_message(message, {"City": "Pune"}, {"Product": "Watch", "Price": 100})["title"] == "Hi there"


def test_a_missing_value_without_default_is_a_failure_naming_the_field() -> None:
    with pytest.raises(RenderError) as caught:
        render_message({"title": "ok", "body": "Dear {{ profile.Name }}"}, {}, {})
    assert caught.value.path == "message.body" and "profile.Name is undefined" in caught.value.message


def test_html_is_escaped_and_plain_text_is_not() -> None:
    rendered = render_message({"subject": "{{ event.q }}", "html": "<p>{{ event.q }}</p>"}, {},
                              {"q": "<b>Tom & Jerry</b>"})
    assert rendered == {"subject": "<b>Tom & Jerry</b>", "html": "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>"}


def test_runaway_templates_stop_at_their_limits() -> None:
    with pytest.raises(RenderError, match="loop iteration limit"):
        render_message({"body": "{% for i in (1..100000) %}x{% endfor %}"}, {}, {})
    with pytest.raises(RenderError, match="output stream limit"):
        render_message({"body": "{% for i in (1..9000) %}{{ event.big }}{% endfor %}"}, {}, {"big": "x" * 100})


@pytest.mark.parametrize(("message", "path", "text"), [
    ({"title": "{% if %}"}, "message.title", "not a valid Liquid template"),
    ({"data": {"x": ["ok", "{{ a | nosuch }}"]}}, "message.data.x[1]", "unknown filter 'nosuch'"),
    ({"body": "{{ a }"}, "message.body", "not a valid Liquid template"),
    ({"body": "x" * 20_000}, "message.body", "longer than"),
])
def test_bad_templates_are_refused_on_save_naming_the_field(message: dict, path: str, text: str) -> None:
    with pytest.raises(SegmentError) as caught:
        check_message(message)
    assert caught.value.path == path and text in caught.value.message


def test_good_templates_pass_the_check() -> None:
    check_message({"title": "Hi {{ profile.Name | default: 'there' }}", "html": "<p>{{ event.x }}</p>", "n": 3})
