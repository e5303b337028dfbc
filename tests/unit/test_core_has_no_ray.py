"""The plain core never imports Ray: only the start-up code (runtime, cli) may."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
ALLOWED_TO_USE_RAY = {"kairos.runtime", "kairos.cli"}

SCRIPT = """
import importlib, json, pkgutil, sys
import kairos
names = sorted(
    m.name for m in pkgutil.walk_packages(kairos.__path__, "kairos.")
    if m.name not in set(sys.argv[1].split(","))
)
for name in names:
    importlib.import_module(name)
print(json.dumps({"modules": names, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))}))
"""


def run_import_check(excluded: set[str]) -> dict[str, list[str]]:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, ",".join(sorted(excluded))],
        cwd=REPO, capture_output=True, text=True, timeout=50,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_core_modules_import_without_ray() -> None:
    found = run_import_check(ALLOWED_TO_USE_RAY)
    modules = set(found["modules"])
    # The check really walked the package (store subpackage included).
    for expected in ("kairos.upload", "kairos.shard", "kairos.ingest", "kairos.store.partition", "kairos.config"):
        assert expected in modules
    assert not modules & ALLOWED_TO_USE_RAY
    assert found["ray"] == [], f"importing the core pulled in Ray: {found['ray'][:5]}"


def test_the_module_walk_lists_every_source_file() -> None:
    on_disk = {
        ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        for p in (REPO / "kairos").rglob("*.py")
    } - {"kairos"}
    import kairos

    walked = {m.name for m in pkgutil.walk_packages(kairos.__path__, "kairos.")}
    assert on_disk <= walked
