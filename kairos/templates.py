"""Message personalisation: Liquid templates (python-liquid) over the user's profile and
the event that triggered the message.

    {"title": "Hi {{ profile.Name | default: 'there' }}",
     "body": "Your {{ event.Product }} is waiting"}

Every string in a message is a template. Checked when the message is saved (syntax,
known filters, size) and rendered when it is sent:
- undefined variables are errors, unless the template gives a `default`: a message never
  goes out with a hole where a name should be;
- an `html` field is escaped (autoescape), the others are not (they are not HTML);
- loops, nesting and output are bounded, so one template cannot hold a router;
- a failure renders nothing: the caller reports it, it never sends half a message.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Iterable, Mapping

from liquid import BoundTemplate, Environment, StrictDefaultUndefined
from liquid.exceptions import LiquidError

from kairos.segments.definition import SegmentError

MAX_TEMPLATE_CHARS = 16_384
HTML_FIELDS = frozenset({"html"})


class RenderError(ValueError):
    """A message that could not be rendered; `path` names the field (e.g. `message.title`)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class _Bounded(Environment):
    context_depth_limit = 30
    loop_iteration_limit = 10_000
    local_namespace_limit = 64 * 1024
    output_stream_limit = 256 * 1024


_PLAIN = _Bounded(undefined=StrictDefaultUndefined)
_HTML = _Bounded(undefined=StrictDefaultUndefined, autoescape=True)


def _environment(field: str) -> Environment:
    return _HTML if field in HTML_FIELDS else _PLAIN


@lru_cache(maxsize=4096)
def _parsed(text: str, html: bool) -> BoundTemplate:
    # A journey sends the same few templates to millions: parse each once, not per message.
    return (_HTML if html else _PLAIN).from_string(text)


def event_properties(messages: Iterable[Mapping[str, Any]]) -> frozenset[str] | None:
    """The properties of the triggering event these messages' templates read (what a
    journey must keep for a user who waits before the send), or None when a template
    reads the event whole or by a computed name, so every property is needed."""
    names: set[str] = set()
    for message in messages:
        for _, field, text in _strings(message, ""):
            for variable in _parsed(text, field in HTML_FIELDS).analyze().globals.get("event", ()):
                segments = variable.segments
                if len(segments) < 2 or not isinstance(segments[1], str):
                    return None
                names.add(segments[1])
    return frozenset(names)


def check_message(message: Mapping[str, Any], path: str = "message") -> None:
    """Every string of the message parses, within size, with known filters; else a
    SegmentError (the definition languages' error: it names the field)."""
    for field_path, field, text in _strings(message, path):
        if len(text) > MAX_TEMPLATE_CHARS:
            raise SegmentError(field_path, f"is longer than {MAX_TEMPLATE_CHARS} characters")
        env = _environment(field)
        try:
            unknown = sorted(set(_parsed(text, field in HTML_FIELDS).analyze().filters) - set(env.filters))
        except LiquidError as exc:
            raise SegmentError(field_path, f"is not a valid Liquid template: {_first_line(exc)}") from None
        if unknown:
            raise SegmentError(field_path, f"uses the unknown filter {unknown[0]!r}")


def render_message(message: Mapping[str, Any], profile: Mapping[str, Any], event: Mapping[str, Any],
                   path: str = "message") -> dict[str, Any]:
    """The message with every string rendered; RenderError naming the first field that fails."""
    context = {"profile": dict(profile), "event": dict(event)}

    def render(value: Any, field: str, at: str) -> Any:
        if isinstance(value, str):
            try:
                return _parsed(value, field in HTML_FIELDS).render(**context)
            except LiquidError as exc:
                raise RenderError(at, _first_line(exc)) from None
        if isinstance(value, dict):
            return {k: render(v, k, f"{at}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [render(v, field, f"{at}[{i}]") for i, v in enumerate(value)]
        return value

    return {k: render(v, k, f"{path}.{k}") for k, v in message.items()}


def _strings(value: Any, path: str, field: str = "") -> list[tuple[str, str, str]]:
    if isinstance(value, str):
        return [(path, field, value)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(v, f"{path}.{k}", k)]
    if isinstance(value, list):
        return [s for i, v in enumerate(value) for s in _strings(v, f"{path}[{i}]", field)]
    return []


def _first_line(exc: LiquidError) -> str:
    return str(exc).splitlines()[0]
