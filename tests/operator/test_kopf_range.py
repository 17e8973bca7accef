"""The peering tap (kopf's pause toggle, read off its watch streams) on the lowest and the
highest kopf of the range ``pyproject.toml`` pins: each is downloaded from the package index
(``pip download``) into a throwaway directory and the tap is installed on it in a fresh
interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import logging, sys
import kopf
from kenning_operator import watchhook
from kopf._cogs.clients import watching
assert kopf.__file__.startswith(sys.argv[1]), kopf.__file__
settings = kopf.OperatorSettings()
assert watchhook.install(settings, watchhook.PeeringGate(enabled=True))
assert getattr(watching.infinite_watch, "_kenning_tap", False)
from importlib.metadata import version
print(version("kopf"))
"""


def kopf_range() -> str:
    """The kopf requirement of the operator extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    spec = next(r for r in project["optional-dependencies"]["operator"]
                if r.startswith("kopf"))
    assert re.fullmatch(r"kopf>=[\d.]+,<[\d.]+", spec), f"kopf is not pinned to a range: {spec}"
    return spec


def lowest(spec: str) -> str:
    """``kopf==<lower bound>``."""
    return "kopf==" + spec.split(">=")[1].split(",")[0]


@pytest.mark.parametrize("which", ["lowest", "highest"])
def test_the_tap_installs_on_each_end_of_the_kopf_range(which: str, tmp_path: Path) -> None:
    spec = kopf_range()
    requirement = lowest(spec) if which == "lowest" else spec
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--disable-pip-version-check", "-q", "-d", str(tmp_path / "dl"), requirement],
        capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, f"pip download {requirement}: {got.stderr[-2000:]}"
    wheel = next((tmp_path / "dl").glob("kopf-*.whl"))
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(target)
    env = {"PYTHONPATH": f"{target}:{REPO / 'sdk'}:{REPO / 'operator'}", "PATH": "/usr/bin"}
    probe = subprocess.run([sys.executable, "-c", PROBE, str(target)], capture_output=True,
                           text=True, timeout=60, env=env)
    assert probe.returncode == 0, probe.stderr[-3000:]
    version = probe.stdout.strip().splitlines()[-1]
    assert wheel.name.startswith(f"kopf-{version}-"), (wheel.name, version)
    if which == "lowest":
        assert version == requirement.removeprefix("kopf=="), version
