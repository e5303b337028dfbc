"""The journey API over HTTP with real Ray and Redis: saving versions, errors that name
their path, pause / resume / delete, moving users between versions, the counters of a
journey that ran, and the same through kairos.client and the `kairos journey` CLI."""

from __future__ import annotations

import asyncio
import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

import redis.asyncio as aioredis

from kairos import cli
from kairos.client import KairosClient, KairosError
from kairos.journeys.clock import ManualClock
from tests.integration.conftest import Api, Kairos

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WELCOME: dict[str, Any] = {
    "entry": {"event": "Signed Up"},
    "start": "hi",
    "nodes": {
        "hi": {"type": "send", "channel": "email", "message": {"subject": "Welcome", "text": "Welcome"}, "next": "wait"},
        # Long: the suite's manual clock may be advanced by other tests, never this far.
        "wait": {"type": "wait", "duration": "30d"},
    },
}


def welcome(**changes: Any) -> dict[str, Any]:
    definition = copy.deepcopy(WELCOME)
    definition.update(changes)
    return definition


async def signed_up(kairos: Kairos, identity: str) -> dict[str, Any]:
    """A `Signed Up` at the journeys' clock's now (manual: other tests may have moved it
    days ahead, and an entry event over a day old enters no one)."""
    client = aioredis.Redis.from_url(kairos.settings.redis_url)
    try:
        now_s = await ManualClock(client).now_ms() // 1000
    finally:
        await client.aclose()
    return {"identity": identity, "type": "event", "evtName": "Signed Up", "ts": now_s, "evtData": {}}


async def stats_when(api: Api, name: str, done: Any, timeout_s: float = 10.0) -> dict[str, Any]:
    """The journey's stats once `done(stats)` holds (or the last seen, at the deadline)."""
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await api.request("GET", f"/api/journeys/{name}/stats")
        assert status == 200, body
        if done(body) or time.monotonic() > deadline:
            return body
        await asyncio.sleep(0.1)


async def test_save_get_list_and_versions(kairos: Kairos, make_api: Any) -> None:
    api = await make_api()
    status, first = await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME, "description": "hi"})
    assert status == 200, first
    assert first["name"] == "Welcome" and first["version"] == 1 and first["versions"] == [1]
    assert first["status"] == "active" and first["description"] == "hi" and first["definition"] == WELCOME
    assert first["created_ms"] == first["updated_ms"] > 0

    # A user waits on version 1, so version 1 is kept when version 2 is saved.
    assert (await api.upload([await signed_up(kairos, "keeper")]))[0] == 200
    await stats_when(api, "Welcome", lambda s: s["totals"]["waiting"] == 1)
    second_definition = welcome(reentry="always")
    status, second = await api.request("PUT", "/api/journeys/Welcome", {"definition": second_definition})
    assert status == 200, second
    assert (second["version"], second["versions"], second["definition"]) == (2, [1, 2], second_definition)
    assert second["created_ms"] == first["created_ms"]
    assert second["description"] == "hi"  # not given: kept

    status, got = await api.request("GET", "/api/journeys/Welcome")
    assert (status, got) == (200, second)
    status, old = await api.request("GET", "/api/journeys/Welcome?version=1")
    assert status == 200 and old["definition"] == WELCOME and old["version"] == 2 and old["definition_version"] == 1
    # Once every journey actor has the new version, old versions no one is on are
    # dropped: 2 had no one; 1 still has its user.
    status, third = await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME, "description": ""})
    assert (status, third["versions"], third["description"]) == (200, [1, 3], "")
    status, fourth = await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME})
    assert (status, fourth["versions"]) == (200, [1, 4])
    status, body = await api.request("GET", "/api/journeys/Welcome?version=7")
    assert status == 404 and body["path"] == "version" and body["code"] == 404, body
    status, body = await api.request("GET", "/api/journeys/Welcome?version=two")
    assert status == 400 and body["path"] == "version", body

    await api.request("PUT", "/api/journeys/Another one", {"definition": WELCOME})
    status, listed = await api.request("GET", "/api/journeys")
    assert status == 200
    assert [j["name"] for j in listed["journeys"]] == ["Another one", "Welcome"]
    assert listed["journeys"][1] == fourth

    # Another account sees none of them.
    other = await make_api()
    assert await other.request("GET", "/api/journeys") == (200, {"journeys": []})
    assert (await other.request("GET", "/api/journeys/Welcome"))[0] == 404


def _with_node(node_id: str, node: dict[str, Any], **changes: Any) -> dict[str, Any]:
    definition = welcome(**changes)
    definition["nodes"][node_id] = node
    return definition


BAD_DEFINITIONS = {
    "unknown node type": (_with_node("wait", {"type": "sleep", "duration": "1d"}), "definition.nodes.wait.type"),
    "cycle": (_with_node("wait", {"type": "wait", "duration": "1d", "next": "hi"}), "definition.nodes.wait"),
    "unreachable node": (_with_node("orphan", {"type": "exit"}), "definition.nodes.orphan"),
    "bad duration": (_with_node("wait", {"type": "wait", "duration": "1 day"}), "definition.nodes.wait.duration"),
    "percents not 100": (
        _with_node("wait", {"type": "split", "variants": [{"name": "a", "percent": 50, "next": None},
                                                          {"name": "b", "percent": 40, "next": None}]}),
        "definition.nodes.wait.variants"),
    "bad channel": (_with_node("hi", {"type": "send", "channel": "pigeon", "message": {}, "next": "wait"}),
                    "definition.nodes.hi.channel"),
    "missing start": (welcome(start="nowhere"), "definition.start"),
    "not an object": ([1, 2], "definition"),
    "a number beyond 64 bits in a message": (
        _with_node("hi", {"type": "send", "channel": "push", "message": {"n": 2**70}, "next": "wait"}),
        "definition.nodes.hi.message"),
    "a time with a newline": (_with_node("wait", {"type": "wait_until", "time": "09:00\n"}),
                              "definition.nodes.wait.time"),
    "an empty time zone": (welcome(tz=""), "definition.tz"),
    "re-entry every 19,000 years": (welcome(reentry={"every": "999999w"}), "definition.reentry.every"),
    "a live-segment entry on no segment": (welcome(entry={"segment": "Nobody"}), "definition.entry.segment"),
}


@pytest.mark.parametrize("case", sorted(BAD_DEFINITIONS))
async def test_bad_definitions_are_400_naming_the_path(make_api: Any, case: str) -> None:
    api = await make_api()
    definition, path = BAD_DEFINITIONS[case]
    status, body = await api.request("PUT", "/api/journeys/Bad", {"definition": definition})
    assert status == 400, body
    assert body["status"] == "fail" and body["code"] == 400 and body["path"] == path, body
    assert body["error"].startswith(path + ": ")
    # Nothing was saved.
    assert (await api.request("GET", "/api/journeys/Bad"))[0] == 404


async def test_bad_requests_name_their_part(make_api: Any) -> None:
    api = await make_api()
    cases = [
        ({"description": "no definition"}, "definition"),
        ({"definition": WELCOME, "live": True}, "live"),
        ({"definition": WELCOME, "description": 5}, "description"),
        ({"definition": WELCOME, "description": "x" * 1001}, "description"),
    ]
    for request, path in cases:
        status, body = await api.request("PUT", "/api/journeys/Welcome", request)
        assert (status, body.get("path")) == (400, path), (request, body)
    status, body = await api.request("PUT", "/api/journeys/Welcome", raw=b"{not json")
    assert status == 400 and "malformed JSON" in body["error"], body
    status, body = await api.request("PUT", "/api/journeys/%20leading%20space", {"definition": WELCOME})
    assert status == 400 and body["path"] == "name", body


async def test_missing_journeys_are_404(make_api: Any) -> None:
    api = await make_api()
    for method, path, request in [
        ("GET", "/api/journeys/Nope", None),
        ("DELETE", "/api/journeys/Nope", None),
        ("POST", "/api/journeys/Nope/pause", None),
        ("POST", "/api/journeys/Nope/resume", None),
        ("POST", "/api/journeys/Nope/move", {"from_version": 1}),
        ("GET", "/api/journeys/Nope/stats", None),
    ]:
        status, body = await api.request(method, path, request)
        assert status == 404, (method, path, body)
        assert body == {"status": "fail", "code": 404, "error": "no journey named 'Nope'"}


async def test_unauthenticated_requests_are_refused(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.request("GET", "/api/journeys", headers={})
    assert status == 401 and body["status"] == "fail", body


async def test_pause_resume_and_delete(make_api: Any) -> None:
    api = await make_api()
    await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME})
    status, paused = await api.request("POST", "/api/journeys/Welcome/pause")
    assert status == 200 and paused["status"] == "paused" and paused["version"] == 1, paused
    assert (await api.request("GET", "/api/journeys/Welcome"))[1]["status"] == "paused"
    # A new version keeps the status.
    status, saved = await api.request("PUT", "/api/journeys/Welcome", {"definition": welcome(reentry="always")})
    assert (saved["status"], saved["version"]) == ("paused", 2)
    status, resumed = await api.request("POST", "/api/journeys/Welcome/resume")
    assert status == 200 and resumed["status"] == "active", resumed
    status, resumed = await api.request("POST", "/api/journeys/Welcome/resume")
    assert status == 200 and resumed["status"] == "active", resumed

    assert await api.request("DELETE", "/api/journeys/Welcome") == (200, {"deleted": True})
    assert (await api.request("GET", "/api/journeys/Welcome"))[0] == 404
    assert await api.request("GET", "/api/journeys") == (200, {"journeys": []})
    assert (await api.request("DELETE", "/api/journeys/Welcome"))[0] == 404
    # Saved again, it takes the next version number: versions never repeat.
    status, again = await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME})
    assert (again["version"], again["versions"], again["status"]) == (3, [3], "active")


async def test_move_is_validated(kairos: Kairos, make_api: Any) -> None:
    api = await make_api()
    await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME})
    move = "/api/journeys/Welcome/move"
    status, body = await api.request("POST", move, {"from_version": 1})
    assert status == 400 and body["path"] == "from_version" and "current version" in body["error"], body
    # One user waits at "wait" on version 1 (so version 1 is kept), which version 2 lacks.
    assert (await api.upload([await signed_up(kairos, "mover")]))[0] == 200
    await stats_when(api, "Welcome", lambda s: s["totals"]["waiting"] == 1)
    await api.request("PUT", "/api/journeys/Welcome", {"definition": welcome(start="hello", nodes={
        "hello": {"type": "send", "channel": "push", "message": {"title": "Hi"}, "next": "pause"},
        "pause": {"type": "wait", "duration": "30d"}})})
    for request, path in [
        ({"from_version": 2}, "from_version"),
        ({"from_version": 5}, "from_version"),
        ({"from_version": "1"}, "from_version"),
        ({"from_version": True}, "from_version"),
        ({}, "from_version"),
        ({"from_version": 1, "nodes": {"wait": "wait"}}, "nodes.wait"),
        ({"from_version": 1, "nodes": {"gone": "pause"}}, "nodes.gone"),
        ({"from_version": 1, "nodes": ["wait"]}, "nodes"),
        ({"from_version": 1, "nodes": {"wait": 3}}, "nodes"),
        ({"from_version": 1, "extra": 1}, "extra"),
        ({"from_version": 1}, "nodes.wait"),  # its user would have nowhere to go
    ]:
        status, body = await api.request("POST", move, request)
        assert (status, body.get("path")) == (400, path), (request, body)
    assert await api.request("POST", move, {"from_version": 1, "nodes": {"wait": "pause", "hi": "hello"}}) == (
        200, {"moved": 1})


async def test_stats_of_a_journey_that_ran_and_a_move(kairos: Kairos, make_api: Any) -> None:
    api = await make_api()
    status, saved = await api.request("PUT", "/api/journeys/Welcome", {"definition": WELCOME})
    assert status == 200, saved
    status, fresh = await api.request("GET", "/api/journeys/Welcome/stats")
    assert status == 200
    zero_nodes = {"hi": {"waiting": 0, "reached": 0, "sent": {}}, "wait": {"waiting": 0, "reached": 0, "sent": {}}}
    assert fresh == {
        "name": "Welcome", "version": 1, "status": "active",
        "totals": {"entered": 0, "control_entered": 0, "completed": 0, "exited": 0, "converted": 0,
                   "control_converted": 0, "goal_window": 0, "waiting": 0},
        "versions": {"1": {"entered": 0, "control_entered": 0, "completed": 0, "exited": 0, "converted": 0,
                           "control_converted": 0, "moved_in": 0, "moved_out": 0, "goal_window": 0,
                           "nodes": zero_nodes}},
    }

    status, body = await api.upload([await signed_up(kairos, "newcomer")])
    assert status == 200 and body["processed"] == 1, body
    stats = await stats_when(api, "Welcome", lambda s: s["totals"]["entered"] == 1 and s["totals"]["waiting"] == 1)
    assert stats["totals"] == {"entered": 1, "control_entered": 0, "completed": 0, "exited": 0, "converted": 0,
                               "control_converted": 0, "goal_window": 0, "waiting": 1}, stats
    assert stats["versions"]["1"]["nodes"] == {"hi": {"waiting": 0, "reached": 1, "sent": {"-": 1}},
                                               "wait": {"waiting": 1, "reached": 1, "sent": {}}}, stats

    # Version 2 renames the wait; the user waiting on version 1 moves to it.
    v2 = copy.deepcopy(WELCOME)
    v2["nodes"]["hi"]["next"] = "linger"
    v2["nodes"]["linger"] = v2["nodes"].pop("wait")
    await api.request("PUT", "/api/journeys/Welcome", {"definition": v2})
    status, body = await api.request("POST", "/api/journeys/Welcome/move", {"from_version": 1, "nodes": {"wait": "linger"}})
    assert (status, body) == (200, {"moved": 1})
    stats = await stats_when(api, "Welcome", lambda s: s["versions"]["2"]["moved_in"] == 1)
    assert (stats["version"], stats["versions"]["1"]["moved_out"], stats["versions"]["2"]["moved_in"]) == (2, 1, 1)
    assert stats["versions"]["1"]["nodes"]["wait"]["waiting"] == 0
    assert stats["versions"]["2"]["nodes"]["linger"]["waiting"] == 1
    assert stats["totals"]["entered"] == 1 and stats["totals"]["waiting"] == 1
    # Nobody is left on version 1 to move.
    assert await api.request("POST", "/api/journeys/Welcome/move", {"from_version": 1}) == (200, {"moved": 0})


async def test_client_methods(kairos: Kairos, make_api: Any) -> None:
    api = await make_api()

    def use_client() -> None:
        with KairosClient(kairos.base_url, api.creds.account_id, api.creds.passcode) as client:
            saved = client.save_journey("Client journey", WELCOME, description="from the client")
            assert (saved["version"], saved["description"]) == (1, "from the client")
            second = client.save_journey("Client journey", welcome(reentry="always"))
            # No one was on version 1: it is not kept.
            assert (second["versions"], second["description"]) == ([2], "from the client")
            assert client.journey("Client journey")["definition"]["reentry"] == "always"
            assert client.journey("Client journey", version=2)["definition_version"] == 2
            assert [j["name"] for j in client.journeys()] == ["Client journey"]
            assert client.pause_journey("Client journey")["status"] == "paused"
            assert client.resume_journey("Client journey")["status"] == "active"
            with pytest.raises(KairosError) as gone:
                client.move_journey("Client journey", 1, {"wait": "wait"})
            assert (gone.value.status, gone.value.path) == (400, "from_version")
            stats = client.journey_stats("Client journey")
            assert stats["totals"]["entered"] == 0 and set(stats["versions"]) == {"2"}
            with pytest.raises(KairosError) as bad:
                client.save_journey("Client journey", welcome(start="nowhere"))
            assert (bad.value.status, bad.value.path) == (400, "definition.start")
            with pytest.raises(KairosError) as bad_move:
                client.move_journey("Client journey", 2)
            assert (bad_move.value.status, bad_move.value.path) == (400, "from_version")
            client.delete_journey("Client journey")
            with pytest.raises(KairosError) as missing:
                client.journey("Client journey")
            assert missing.value.status == 404

    await asyncio.to_thread(use_client)


async def test_cli(kairos: Kairos, make_api: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    api = await make_api()
    connection = ["--url", kairos.base_url, "--account", api.creds.account_id, "--passcode", api.creds.passcode]

    async def run(*args: str, connect: bool = True) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["journey", *args, *(connection if connect else [])])
        out, err = capsys.readouterr()
        return code, out, err

    as_json = tmp_path / "welcome.json"
    as_json.write_text(json.dumps(WELCOME))
    assert await run("put", "Welcome", str(as_json), "--description", "Say hi") == (
        0, "saved 'Welcome' version 1 (active)\n", "")
    as_yaml = tmp_path / "welcome.yaml"
    as_yaml.write_text(
        "entry: {event: Signed Up}\n"
        "start: hi\n"
        "nodes:\n"
        "  hi: {type: send, channel: email, message: {subject: Welcome, text: Welcome}, next: when}\n"
        "  when: {type: wait_until, time: 10:30, next: check}\n"
        "  check: {type: branch, condition: {profile: City, op: eq, value: Pune}, yes: wait, no: null}\n"
        "  wait: {type: wait, duration: 30d}\n")
    code, out, err = await run("put", "Welcome", str(as_yaml))
    assert (code, out, err) == (0, "saved 'Welcome' version 2 (active)\n", "")

    code, out, _ = await run("show", "Welcome")
    shown = json.loads(out)
    assert code == 0 and shown["version"] == 2 and shown["versions"] == [2]
    assert shown["definition"]["nodes"]["when"]["time"] == "10:30"
    assert shown["definition"]["nodes"]["check"]["yes"] == "wait"
    code, out, _ = await run("list")
    assert (code, out) == (0, "Welcome\tv2\tactive\tSay hi\n")  # saved again without one: kept
    assert await run("pause", "Welcome") == (0, "'Welcome' is paused (version 2)\n", "")
    assert await run("resume", "Welcome") == (0, "'Welcome' is active (version 2)\n", "")
    code, out, _ = await run("stats", "Welcome")
    assert code == 0 and json.loads(out)["totals"]["entered"] == 0

    # Credentials from the environment.
    monkeypatch.setenv("KAIROS_ACCOUNT_ID", api.creds.account_id)
    monkeypatch.setenv("KAIROS_PASSCODE", api.creds.passcode)
    code, out, _ = await run("list", "--url", kairos.base_url, connect=False)
    assert code == 0 and out.startswith("Welcome\tv2")

    # Errors: the server's message on stderr, exit 2.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(welcome(start="nowhere")))
    code, out, err = await run("put", "Welcome", str(bad))
    assert (code, out) == (2, "") and err.startswith("kairos: definition.start: "), err
    code, out, err = await run("put", "Welcome", str(tmp_path / "missing.yaml"))
    assert code == 2 and err.startswith("kairos: cannot read "), err
    assert await run("delete", "Welcome") == (0, "deleted 'Welcome'\n", "")
    assert await run("show", "Welcome") == (2, "", "kairos: no journey named 'Welcome'\n")
    monkeypatch.setenv("KAIROS_PASSCODE", "wrong")
    code, _, err = await run("list", "--url", kairos.base_url, connect=False)
    assert code == 2 and err.startswith("kairos: "), err


async def test_a_segment_a_journey_enters_on_can_be_neither_deleted_nor_made_not_live(make_api: Any) -> None:
    api = await make_api()
    gold = {"definition": {"profile": "Plan", "op": "eq", "value": "gold"}, "live": True}
    assert (await api.request("PUT", "/api/segments/Gold", gold))[0] == 200
    status, body = await api.request("PUT", "/api/journeys/Gold welcome",
                                     {"definition": welcome(entry={"segment": "Gold"})})
    assert status == 200, body
    status, body = await api.request("DELETE", "/api/segments/Gold")
    assert status == 409 and "Gold welcome" in body["error"], body
    status, body = await api.request("PUT", "/api/segments/Gold", {**gold, "live": False})
    assert status == 409 and "Gold welcome" in body["error"], body
    assert (await api.request("PUT", "/api/segments/Gold", gold))[0] == 200  # still live: fine
    assert (await api.request("DELETE", "/api/journeys/Gold welcome"))[0] == 200
    assert (await api.request("DELETE", "/api/segments/Gold"))[0] == 200


async def test_a_bare_definition_is_told_to_go_under_definition(make_api: Any) -> None:
    api = await make_api()
    status, body = await api.request("PUT", "/api/journeys/Bare", WELCOME)
    assert status == 400 and body["path"] == "definition" and "goes under 'definition'" in body["error"], body
