"""Shared helpers for the benchmark scripts: machine facts and docs/benchmarks.md sections."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import os
import pathlib
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

LIBS = (
    "trio",
    "trio-websocket",
    "wsproto",
    "orjson",
    "paho-mqtt",
    "prometheus-client",
    "websockets",
)


def cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    versions = {}
    for lib in LIBS:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "libraries": versions,
    }


HEADER = """# Benchmarks

Every number here was produced on this project's machine by the command named in its
section, with the peer baseline measured in the same run. `make bench` rewrites the
sections it owns; text outside the markers is kept.
"""


def write_section(path: pathlib.Path, key: str, title: str, body: str) -> None:
    """Replace (or append) the section between <!-- bench:key --> markers."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.exists() else HEADER
    block = f"{start}\n## {title}\n\n{body.strip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    info = machine_info()
    libs = ", ".join(f"{k} {v}" for k, v in info["libraries"].items() if v)  # type: ignore[union-attr]
    machine = f"Machine: {info['cores']} cores, {info['cpu']}; Python {info['python']}; {libs}."
    m_start, m_end = "<!-- bench:machine -->", "<!-- /bench:machine -->"
    m_block = f"{m_start}\n{machine}\n{m_end}"
    if m_start in text:
        head, rest = text.split(m_start, 1)
        _, tail = rest.split(m_end, 1)
        text = head + m_block + tail
    else:
        text = text.replace(HEADER.strip(), HEADER.strip() + "\n\n" + m_block, 1)
    path.write_text(text)


#: how Debian's Chromium is started here (headless as root, no network chatter)
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def results_path(name: str, quick: bool) -> pathlib.Path:
    """Where a benchmark's raw results go: bench/results/NAME.json for the full runs
    that docs/benchmarks.md reports, bench/results/quick/ for `make bench-quick`, so a
    quick run never replaces the numbers the report was written from."""
    base = pathlib.Path(__file__).resolve().parent / "results"
    out = (base / "quick" if quick else base) / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


@dataclasses.dataclass
class Running:
    port: int
    proc: subprocess.Popen[str]


@contextlib.contextmanager
def gateway_process(
    *args: str,
    env: dict[str, str] | None = None,
    cpu: int | None = None,
    log: pathlib.Path | None = None,
    listeners: dict[str, socket.socket] | None = None,
    nice: int = 0,
) -> Iterator[Running]:
    """Run ``gateway run --port 0 --admin-port 0 ARGS`` (later flags win) and yield its
    public port and process; it is stopped (SIGTERM, then killed) on the way out.

    Its stdout and stderr go to a file (``log``, else a temporary file removed after a
    clean stop), never to a pipe: a pipe nobody reads blocks a gateway that logs more
    than the pipe holds (64 KiB), which would make the benchmark measure its own
    plumbing.

    ``listeners`` (name -> listening socket, e.g. ``{"public": sock}``): handed to the
    gateway as systemd's socket activation does (gateway/serve/activation.py); the
    caller keeps them open, so they outlive this gateway (a restart refuses nothing).

    ``nice``: the gateway's niceness (all its threads), e.g. so that a browser on the
    same machine runs first, as on a wall PC that does not also run the gateway."""
    root = pathlib.Path(__file__).resolve().parent.parent
    if log is None:
        fd, name = tempfile.mkstemp(prefix="bench-gateway-", suffix=".log")
        os.close(fd)
        path, keep = pathlib.Path(name), False
    else:
        log.parent.mkdir(parents=True, exist_ok=True)
        path, keep = log, True
    with path.open("w") as out:
        prefix: list[str] = []
        passed: dict[str, Any] = {"env": {}}
        if listeners:
            from gateway.serve.activation import passing

            prefix, passed = passing(listeners)
        proc = subprocess.Popen(
            [
                *prefix,
                *(sys.executable, "-m", "gateway", "run", "--port", "0", "--admin-port", "0"),
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=root,
            **{
                **passed,
                "preexec_fn": _child_setup(passed.get("preexec_fn"), nice),
                "env": {**os.environ, **(env or {}), **passed["env"]},
            },
        )
    failed = True
    try:
        if cpu is not None:
            os.sched_setaffinity(proc.pid, {cpu})
        deadline = time.monotonic() + 60
        while True:
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", path.read_text())
            if m:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not listen (its output: {path})")
            time.sleep(0.05)
        yield Running(int(m.group(1)), proc)
        failed = False
    finally:
        stop(proc)
        if not keep and not failed:
            path.unlink(missing_ok=True)


def _child_setup(passing: Any, nice: int) -> Any:
    """The child's set-up after fork: the listeners' (activation.passing), then its
    niceness; None when there is neither."""
    if not nice:
        return passing

    def setup() -> None:
        if passing is not None:
            passing()
        os.nice(nice)

    return setup


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM, 10 s to exit, then SIGKILL: for the processes a benchmark started."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
