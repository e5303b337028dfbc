"""cluster.yaml is a Ray cluster-launcher config that `ray up` accepts and that starts Kairos.

Checked offline: the file against the JSON schema that ships in the ray wheel, then the
same preparation and validation that `ray up` runs before it talks to AWS. Nothing here
starts Ray or opens a socket.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

pytestmark = pytest.mark.timeout(60)

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "cluster.yaml"


@pytest.fixture(scope="module")
def config() -> dict:
    with CLUSTER_YAML.open() as f:
        loaded = yaml.safe_load(f)
    assert isinstance(loaded, dict), "cluster.yaml must be a mapping"
    return loaded


@pytest.fixture(scope="module")
def ray_schema() -> dict:
    import ray.autoscaler

    path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(path.read_text())


def _commands(config: dict, key: str) -> list[str]:
    commands = config.get(key) or []
    assert all(isinstance(c, str) for c in commands), f"{key} must be a list of strings"
    return commands


def _invocations(commands: list[str], program: str) -> list[list[str]]:
    """The arguments of each `program ...` in the commands, up to a shell operator."""
    found = []
    for command in commands:
        for match in re.finditer(rf"(?:^|[\s;&|(/]){re.escape(program)}\s+([^;&|<>\n]*)", command):
            found.append(shlex.split(match.group(1)))
    return found


def test_matches_rays_schema(config: dict, ray_schema: dict) -> None:
    # The schema forbids unknown top-level keys, so a misspelt field fails here.
    jsonschema.validate(config, ray_schema)


def test_passes_ray_up_validation(config: dict) -> None:
    # What `ray up` does before bootstrapping the provider: merge the AWS defaults,
    # merge head/worker setup commands, fill min/max workers, then validate.
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # The merged head setup still installs Kairos and boto3 for the autoscaler.
    head_setup = " ".join(prepared["head_setup_commands"])
    assert "install" in head_setup and "kairos" in head_setup and "boto3" in head_setup


def test_aws_cluster_named_kairos(config: dict) -> None:
    assert config["cluster_name"] == "kairos"
    assert config["provider"]["type"] == "aws"
    assert config["provider"].get("region")


def test_head_and_worker_node_types(config: dict) -> None:
    node_types = config["available_node_types"]
    head = config["head_node_type"]
    assert head in node_types
    workers = [name for name in node_types if name != head]
    assert workers, "cluster.yaml needs a worker node type besides the head"
    for name, node_type in node_types.items():
        node_config = node_type["node_config"]
        assert node_config.get("InstanceType"), f"{name} has no InstanceType"
        assert node_config.get("ImageId", "").startswith("ami-"), f"{name} has no ImageId"
    for name in workers:
        assert node_types[name]["max_workers"] >= node_types[name].get("min_workers", 0)
    assert sum(node_types[n].get("min_workers", 0) for n in workers) <= config["max_workers"]


def test_setup_installs_kairos_from_the_synced_repo(config: dict) -> None:
    mounts = config["file_mounts"]
    remote_repo = next((remote for remote, local in mounts.items() if local == "."), None)
    assert remote_repo, "file_mounts must sync the repository (.) to the nodes"
    setup = _commands(config, "setup_commands")
    pip_installs = [args for args in _invocations(setup, "pip") if args[:1] == ["install"]]
    assert any(remote_repo in args for args in pip_installs), (
        f"setup_commands must pip install the synced repo {remote_repo}: {setup}"
    )


def test_cluster_ray_is_the_ray_kairos_is_tested_with(config: dict) -> None:
    import ray

    setup = " ".join(_commands(config, "setup_commands"))
    pins = re.findall(r"ray(?:\[[\w,]+\])?==([\w.]+)", setup)
    assert pins == [ray.__version__], (
        f"setup_commands pin ray {pins}; the .venv has ray {ray.__version__}: "
        "`ray up` and notebooks attaching to the cluster need the same Ray"
    )


def _ray_start_options() -> set[str]:
    from ray.scripts.scripts import start

    return {opt for param in start.params for opt in param.opts}


def _check_ray_start(args: list[str], known: set[str]) -> None:
    unknown = [a.split("=", 1)[0] for a in args if a.startswith("--") and a.split("=", 1)[0] not in known]
    assert not unknown, f"`ray start` has no option {unknown}"


def test_head_starts_ray_then_kairos(config: dict) -> None:
    commands = _commands(config, "head_start_ray_commands")
    known = _ray_start_options()
    starts = [args for args in _invocations(commands, "ray") if args[:1] == ["start"]]
    assert len(starts) == 1, commands
    args = starts[0]
    _check_ray_start(args, known)
    assert "--head" in args and "--port=6379" in args
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in args
    assert ["stop"] in _invocations(commands, "ray")

    ray_start = next(i for i, c in enumerate(commands) if re.search(r"\bray start\b", c))
    kairos_up = next((i for i, c in enumerate(commands) if "kairos up" in c), None)
    assert kairos_up is not None and kairos_up > ray_start, "head must run `kairos up` after `ray start`"
    line = commands[kairos_up]
    assert "nohup kairos up" in line and "KAIROS_REDIS_URL" in line


def test_kairos_up_line_is_accepted_by_the_cli(config: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    # Parse the exact `kairos up ...` arguments with the real CLI; the runtime is
    # replaced so nothing starts.
    import kairos.runtime
    from kairos import cli

    commands = _commands(config, "head_start_ray_commands")
    (args,) = [a for a in _invocations(commands, "kairos") if a[:1] == ["up"]]
    calls = []
    monkeypatch.setattr(kairos.runtime, "up", lambda settings, **kw: calls.append((settings, kw)))
    for name in list(os.environ):
        if name.startswith("KAIROS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("KAIROS_REDIS_URL", "redis://redis.invalid:6379/0")
    assert cli.main(args) == 0
    ((settings, kw),) = calls
    assert settings.ray_address == "auto"
    assert settings.host == "0.0.0.0"
    assert settings.redis_url == "redis://redis.invalid:6379/0"


def test_workers_join_the_head(config: dict) -> None:
    commands = _commands(config, "worker_start_ray_commands")
    starts = [args for args in _invocations(commands, "ray") if args[:1] == ["start"]]
    assert len(starts) == 1, commands
    _check_ray_start(starts[0], _ray_start_options())
    assert "--address=$RAY_HEAD_IP:6379" in starts[0]
    assert ["stop"] in _invocations(commands, "ray")


def test_head_uses_the_same_ray_system_config_as_a_local_start(config: dict) -> None:
    """Coalesced batches must stay inline on a cluster too (see actors.deploy)."""
    from actors.deploy import RAY_SYSTEM_CONFIG

    head_start = " ".join(_commands(config, "head_start_ray_commands"))
    [flag] = [w for w in shlex.split(head_start) if w.startswith("--system-config=")]
    assert json.loads(flag.split("=", 1)[1]) == dict(RAY_SYSTEM_CONFIG)
