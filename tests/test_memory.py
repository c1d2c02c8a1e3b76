"""The glibc malloc thresholds are fixed once the gateway serves (gateway/memory.py)."""

from __future__ import annotations

import subprocess
import sys


def test_thresholds_are_set_and_the_environment_wins() -> None:
    code = "from gateway.memory import tune_malloc; print(tune_malloc(), tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]  # glibc here: set once, then kept
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["False", "False"]  # the operator's setting is kept
