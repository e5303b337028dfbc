"""`kairos journey ...`: argument parsing, reading definitions from JSON and YAML, and
errors that never reach a gateway."""

from __future__ import annotations

from pathlib import Path

import pytest

from kairos import cli
from kairos.redis_server import _free_port

pytestmark = pytest.mark.timeout(10)


def test_journey_commands_parse() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(["journey", "put", "Welcome", "w.yaml", "--description", "Say hi", "--url", "http://h:1"])
    assert (args.command, args.journey_command, args.name, args.file) == ("journey", "put", "Welcome", "w.yaml")
    assert (args.description, args.url, args.account, args.passcode) == ("Say hi", "http://h:1", None, None)
    args = parser.parse_args(["journey", "show", "Welcome", "--version", "2", "--account", "a", "--passcode", "p"])
    assert (args.journey_command, args.version, args.account, args.passcode) == ("show", 2, "a", "p")
    assert parser.parse_args(["journey", "list"]).url == cli.DEFAULT_URL
    for command in ("stats", "pause", "resume", "delete"):
        assert parser.parse_args(["journey", command, "X"]).name == "X"
    for wrong in (["journey"], ["journey", "put", "Welcome"], ["journey", "stats"], ["journey", "fly", "X"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(wrong)
        assert exit_.value.code == 2


def test_yaml_reads_as_json_would(tmp_path: Path) -> None:
    path = tmp_path / "journey.yml"
    path.write_text(
        "entry: {event: Signed Up}\n"
        "start: check\n"
        "nodes:\n"
        "  check: {type: branch, condition: {profile: City, op: eq, value: 'on'}, yes: when, no: null}\n"
        "  when: {type: wait_until, time: 10:30}\n"
        "exit: [{event: X, where: [{property: D, op: before, value: 2026-09-01}]}]\n"
        "control_percent: 10\n"
        "other: [true, False, 1.5, -3, 0x10, on]\n")
    loaded = cli.load_definition(str(path))
    assert loaded["nodes"]["check"]["yes"] == "when" and loaded["nodes"]["check"]["no"] is None
    assert loaded["nodes"]["when"]["time"] == "10:30"
    assert loaded["exit"][0]["where"][0]["value"] == "2026-09-01"
    assert loaded["control_percent"] == 10
    assert loaded["other"] == [True, False, 1.5, -3, "0x10", "on"]


def test_unreadable_definitions(tmp_path: Path) -> None:
    cases = {"bad.json": "{nope", "bad.yaml": "a: [1", "list.yaml": "- 1\n- 2\n"}
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(cli.CliError):
            cli.load_definition(str(tmp_path / name))
    with pytest.raises(cli.CliError, match="cannot read"):
        cli.load_definition(str(tmp_path / "missing.json"))


@pytest.mark.parametrize(("name", "text"), [
    ("nan.json", '{"n": NaN}'), ("inf.yaml", "message: {x: .inf}\n"),
    ("binary.yaml", "message: {b: !!binary aGVsbG8=}\n"), ("loop.yaml", "a: &a [*a]\n"),
])
def test_values_json_cannot_carry_are_refused(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(cli.CliError, match="JSON cannot carry"):
        cli.load_definition(str(tmp_path / name))


def test_errors_print_and_exit_2(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("KAIROS_ACCOUNT_ID", raising=False)
    monkeypatch.delenv("KAIROS_PASSCODE", raising=False)
    assert cli.main(["journey", "list"]) == 2
    assert capsys.readouterr().err == "kairos: no account: give --account or set KAIROS_ACCOUNT_ID\n"
    monkeypatch.setenv("KAIROS_ACCOUNT_ID", "acc")
    assert cli.main(["journey", "list"]) == 2
    assert capsys.readouterr().err == "kairos: no passcode: give --passcode or set KAIROS_PASSCODE\n"
    url = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    assert cli.main(["journey", "stats", "X", "--url", url, "--passcode", "p"]) == 2
    assert capsys.readouterr().err.startswith(f"kairos: cannot reach Kairos at {url}: ")
