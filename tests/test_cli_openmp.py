"""The `eprl` console script (cli.main) chooses passive OpenMP waiting before torch loads, as `python -m
eprl.training` does; a user's own OMP_WAIT_POLICY wins (training/cli.py, passive_openmp_default)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import os, sys
from eprl.training import cli
assert "torch" not in sys.modules, "importing the CLI loaded torch: the wait policy would come too late"
try:
    cli.main(["envs"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print("policy", os.environ.get("OMP_WAIT_POLICY"))
"""


@pytest.mark.parametrize("user, expected", [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_console_script_sets_the_wait_policy_before_torch(user, expected):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if user:
        env["OMP_WAIT_POLICY"] = user
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == f"policy {expected}"
