"""One import namespace (issue #12): the package installs as `eprl.agents`, `eprl.envs`, `eprl.training` and
nothing else at the top level; a wheel, the editable install and the checkout import the same files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROBE = (
    "import importlib.util, json, eprl.training.config, eprl.agents.engines, eprl.envs\n"
    "print(json.dumps({'files': [eprl.training.config.__file__, eprl.agents.engines.__file__, eprl.envs.__file__],"
    " 'top': {n: getattr(importlib.util.find_spec(n), 'origin', None) for n in ('agents', 'envs', 'training')},"
    " 'envs': eprl.envs.list_envs()}))"
)


def _probe(cwd: Path, pythonpath: str | None) -> dict:
    """Import the package in a fresh interpreter started outside the checkout."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the sources (building in place would leave build/ in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("eprl", "agents", "envs", "training"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0 and "No module named" in proc.stderr:  # no setuptools/wheel in this interpreter
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return next(out.glob("eprl-*.whl"))


def test_wheel_holds_only_the_eprl_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"eprl", wheel.name.split("-py")[0] + ".dist-info"}
    for module in (
        "eprl/__init__.py",
        "eprl/training/cli.py",
        "eprl/training/__main__.py",
        "eprl/agents/engines/hf.py",
        "eprl/envs/math/env.py",
        "eprl/envs/appworld/env.py",
    ):
        assert module in names
    entry_points = zipfile.ZipFile(wheel).read(f"{wheel.name.split('-py')[0]}.dist-info/entry_points.txt").decode()
    assert "eprl = eprl.training.cli:main" in entry_points


def test_installed_wheel_imports_from_outside_the_checkout(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not {"agents", "envs", "training"} & {p.name for p in target.iterdir()}
    got = _probe(tmp_path, str(target))  # the target dir comes before site-packages, so it wins over any install
    assert all(Path(f).is_relative_to(target / "eprl") for f in got["files"]), got["files"]
    assert "eprl/Arithmetic-v0" in got["envs"]
    for origin in got["top"].values():  # a generic top-level name never resolves into this project
        assert origin is None or not (Path(origin).is_relative_to(target) or Path(origin).is_relative_to(REPO))


def test_checkout_imports_its_own_files(tmp_path):
    got = _probe(tmp_path, str(REPO))
    assert [Path(f) for f in got["files"]] == [
        REPO / "training" / "config.py",
        REPO / "agents" / "engines" / "__init__.py",
        REPO / "envs" / "__init__.py",
    ]


def test_editable_install_imports_the_checkout(tmp_path):
    # the installed dist-info (the checkout's own eprl.egg-info, first on sys.path here, has no direct_url.json)
    urls = [d.read_text("direct_url.json") for d in metadata.distributions(name="eprl")]
    if not any(urls):
        pytest.skip("eprl is not installed in this interpreter")
    direct = json.loads(next(u for u in urls if u))
    if not direct.get("dir_info", {}).get("editable") or Path(direct["url"].removeprefix("file://")) != REPO:
        pytest.skip(f"eprl is installed, but not as an editable install of {REPO}")
    got = _probe(tmp_path, None)
    assert [Path(f) for f in got["files"]] == [
        REPO / "training" / "config.py",
        REPO / "agents" / "engines" / "__init__.py",
        REPO / "envs" / "__init__.py",
    ]
    for origin in got["top"].values():
        assert origin is None or not Path(origin).is_relative_to(REPO)
