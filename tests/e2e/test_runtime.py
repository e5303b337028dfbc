"""The runtime as a user runs it: `kairos up --demo`, the printed curl, `kairos account
create` against the running instance, Ctrl-C, and a restart on the same data directory."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from kairos.redis_server import _free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]
KAIROS = str(Path(sys.executable).with_name("kairos"))


class Running:
    def __init__(self, data_dir: Path, port: int, **extra_env: str) -> None:
        env = {**os.environ, "KAIROS_DATA_DIR": str(data_dir), "KAIROS_PORT": str(port), **extra_env}
        env.pop("RAY_ADDRESS", None)
        self.process = subprocess.Popen([KAIROS, "up", "--demo"], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output = ""
        assert self.process.stdout is not None
        deadline = time.monotonic() + 120
        while "Press Ctrl-C to stop." not in self.output:
            line = self.process.stdout.readline()
            if not line and self.process.poll() is not None:
                raise AssertionError(f"kairos up exited {self.process.returncode}:\n{self.output}")
            self.output += line
            assert time.monotonic() < deadline, self.output

    def value(self, label: str) -> str:
        match = re.search(rf"{label}:\s+(\S+)", self.output)
        assert match, self.output
        return match.group(1)

    def curl_commands(self) -> list[str]:
        text = self.output.split("Try it:\n", 1)[1].split("Press Ctrl-C", 1)[0]
        return [c.strip() for c in re.split(r"\n(?=curl )", text.strip())]

    def stop(self) -> int:
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=90)
        self.output += out
        return self.process.returncode


def _get(url: str, account: str, passcode: str) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": passcode})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


def _post(url: str, account: str, passcode: str, body: Any) -> tuple[int, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"X-CleverTap-Account-Id": account, "X-CleverTap-Passcode": passcode})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, json.load(resp)


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "kairos-data"


def test_up_demo_curl_restart_finds_everything(data_dir: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    first = Running(data_dir, port)
    try:
        account, passcode = first.value("Demo account id"), first.value("Demo passcode")
        upload_curl, profile_curl, segment_curl = first.curl_commands()
        # The printed curls work as printed.
        result = subprocess.run(["bash", "-c", upload_curl], capture_output=True, text=True, timeout=30)
        assert json.loads(result.stdout) == {"status": "success", "processed": 1, "unprocessed": []}
        result = subprocess.run(["bash", "-c", profile_curl], capture_output=True, text=True, timeout=30)
        assert json.loads(result.stdout)["record"]["events"]["Product Viewed"]["count"] == 1
        result = subprocess.run(["bash", "-c", segment_curl], capture_output=True, text=True, timeout=30)
        assert json.loads(result.stdout) == {"success": True}
        # Segment's userId is CleverTap's identity: one customer across both APIs.
        result = subprocess.run(["bash", "-c", profile_curl], capture_output=True, text=True, timeout=30)
        events = json.loads(result.stdout)["record"]["events"]
        assert (events["Product Viewed"]["count"], events["Order Completed"]["count"]) == (1, 1)

        # `kairos account create` talks to the running instance.
        created = subprocess.run([KAIROS, "account", "create", "acme", "--data-dir", str(data_dir)],
                                 capture_output=True, text=True, timeout=60, check=True)
        acme_id = re.search(r"account id:\s+(\S+)", created.stdout).group(1)
        acme_pass = re.search(r"passcode:\s+(\S+)", created.stdout).group(1)
        records = [{"identity": f"buyer-{i}", "type": "event", "evtName": "Charged", "evtData": {"Amount": i}}
                   for i in range(300)]
        assert _post(base + "/1/upload", acme_id, acme_pass, {"d": records})[1]["processed"] == 300
        duplicate = subprocess.run([KAIROS, "account", "create", "acme", "--data-dir", str(data_dir)],
                                   capture_output=True, text=True, timeout=60)
        assert duplicate.returncode == 2 and "already exists" in duplicate.stderr
    finally:
        assert first.stop() == 0
    assert "Kairos is stopping." in first.output
    assert not (data_dir / "redis.url").exists(), "Ctrl-C must stop the embedded Redis"

    second = Running(data_dir, port)
    try:
        new_passcode = second.value("Demo passcode")
        assert second.value("Demo account id") == account
        assert _get(f"{base}/1/profile.json?identity=user-1", account, passcode)[0] == 401, "old passcode revoked"
        status, body = _get(f"{base}/1/profile.json?identity=user-1", account, new_passcode)
        assert status == 200 and body["record"]["events"]["Product Viewed"]["count"] == 1
        status, body = _post(base + "/1/counts/events.json", acme_id, acme_pass,
                             {"event_name": "Charged", "from": 20200101, "to": 20991231})
        assert (status, body["count"]) == (200, 300)
        status, body = _get(f"{base}/1/profile.json?identity=buyer-7", acme_id, acme_pass)
        assert body["record"]["events"]["Charged"]["count"] == 1
    finally:
        assert second.stop() == 0


def _wait_for(check: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_a_journey_saved_with_the_cli_keeps_its_waiting_user_across_a_restart(data_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    journey = tmp_path / "welcome.yaml"
    journey.write_text(
        "entry: {event: Signed Up}\nstart: wait\nnodes:\n"
        "  wait: {type: wait, duration: 3d, next: hello}\n"
        "  hello: {type: send, channel: email, message: {subject: Welcome back, text: Good to see you}}\n")
    first = Running(data_dir, port, KAIROS_CLOCK="manual")
    try:
        account, passcode = first.value("Demo account id"), first.value("Demo passcode")
        cli = [KAIROS, "journey", "put", "welcome", str(journey), "--url", base, "--account", account,
               "--passcode", passcode]
        subprocess.run(cli, capture_output=True, text=True, timeout=60, check=True)
        record = {"identity": "newbie", "type": "event", "evtName": "Signed Up", "evtData": {}}
        assert _post(base + "/1/upload", account, passcode, {"d": [record]})[1]["processed"] == 1
        _wait_for(lambda: _get(f"{base}/api/journeys/welcome/stats", account, passcode)[1]["totals"]["waiting"] == 1)
    finally:
        assert first.stop() == 0

    second = Running(data_dir, port, KAIROS_CLOCK="manual")
    try:
        passcode = second.value("Demo passcode")
        stats = _get(f"{base}/api/journeys/welcome/stats", account, passcode)[1]
        assert stats["totals"]["waiting"] == 1 and stats["versions"]["1"]["nodes"]["hello"]["sent"] == {}
        # Three days pass (the manual clock lives in the runtime's Redis).
        redis_url = (data_dir / "redis.url").read_text().strip()
        subprocess.run([sys.executable, "-c", "import redis, sys; from kairos.keys import MANUAL_CLOCK; "
                        "redis.Redis.from_url(sys.argv[1]).incrby(MANUAL_CLOCK, 3 * 86_400_000)", redis_url],
                       check=True, timeout=30)
        sent = _wait_for(lambda: _get(f"{base}/api/journeys/welcome/stats", account, passcode)[1]
                         ["versions"]["1"]["nodes"]["hello"]["sent"])
        assert sent == {"-": 1}
        time.sleep(1.0)
        stats = _get(f"{base}/api/journeys/welcome/stats", account, passcode)[1]
        assert stats["totals"]["completed"] == 1 and stats["versions"]["1"]["nodes"]["hello"]["sent"] == {"-": 1}
    finally:
        assert second.stop() == 0
