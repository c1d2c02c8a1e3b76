"""What the docs tell a user to type, read from the Markdown, and how the suite runs it.

The commands are taken from the fenced code blocks under a heading, one per line,
without their trailing comment (two spaces, then ``#``). They run as they are, through
``bash`` in the repository, with ``.venv/bin`` first on PATH (what the README's
``. .venv/bin/activate`` does). The only changes are the ones the docs themselves
give for a gateway or broker that is not on the default ports (see :func:`on_ports`).
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"


def section(doc: str, heading: str) -> str:
    """The text under ``heading`` (a whole heading line), up to the next heading of the
    same or a higher level (lines in code blocks are never headings)."""
    level = len(heading) - len(heading.lstrip("#"))
    out: list[str] = []
    inside = fenced = False
    for line in (ROOT / doc).read_text().splitlines(keepends=True):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(rf"#{{1,{level}}} ", line):
            if inside:
                break
            inside = line.rstrip("\n") == heading
            continue
        if inside:
            out.append(line)
    assert out, f"{doc}: no section {heading!r}"
    return "".join(out)


def blocks(doc: str, heading: str, lang: str = "sh") -> list[str]:
    """The code blocks of language ``lang`` ("" for plain ones) in that section."""
    found: list[str] = []
    current: list[str] | None = None
    fence_lang = ""
    for line in section(doc, heading).splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, fence_lang = [], line[3:].strip()
            else:
                if fence_lang == lang:
                    found.append("".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return found


@dataclass(frozen=True)
class Command:
    text: str  # as written in the docs
    comment: str  # what the docs say it does or prints


def commands(block: str) -> list[Command]:
    out = []
    for line in block.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = re.split(r"\s{2,}#\s*", line, maxsplit=1)
        out.append(Command(parts[0].strip(), parts[1].strip() if len(parts) > 1 else ""))
    return out


def on_ports(cmd: str, *, gateway: int | None = None, broker: int | None = None) -> str:
    """``cmd`` for a gateway on public port ``gateway`` and a broker on ``broker``, the
    way the docs say: `--url ws://127.0.0.1:P/ws` for `gateway tail`, 127.0.0.1:P for
    URLs, `--port 0 --admin-port 0` (free ports) for `gateway run`, the broker's port
    in the mqtt:// URL and `-p` for mosquitto_pub."""
    if gateway is not None:
        cmd = cmd.replace("127.0.0.1:8080", f"127.0.0.1:{gateway}")
        if cmd.startswith("gateway tail "):
            cmd += f" --url ws://127.0.0.1:{gateway}/ws"
    if cmd.startswith("gateway run"):
        cmd += " --port 0 --admin-port 0"
    if broker is not None:
        cmd = cmd.replace("mqtt://127.0.0.1:1883", f"mqtt://127.0.0.1:{broker}")
        if cmd.startswith("mosquitto_pub "):
            cmd = cmd.replace("mosquitto_pub ", f"mosquitto_pub -p {broker} ", 1)
    return cmd


def shell_env() -> dict[str, str]:
    if not (VENV_BIN / "gateway").exists() or not (VENV_BIN / "activate").exists():
        require_binary(str(VENV_BIN / "gateway"), "the project (make venv)")
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    return env


def argv(cmd: str) -> list[str]:
    # as the README says: activate the venv, then the command, in the repository
    return ["bash", "-c", f". .venv/bin/activate && exec {cmd}"]


async def run(cmd: str, within: float = 30) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(within):
        return await trio.run_process(
            argv(cmd),
            cwd=ROOT,
            env=shell_env(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )


async def start(cmd: str, **kwargs: object) -> trio.Process:
    return await trio.lowlevel.open_process(
        argv(cmd),
        cwd=ROOT,
        env=shell_env(),
        stdout=kwargs.pop("stdout", subprocess.PIPE),
        stderr=kwargs.pop("stderr", subprocess.PIPE),
        **kwargs,  # type: ignore[arg-type]
    )


class Reader:
    """Everything a process wrote to one stream so far, and waiting for a pattern."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.data = bytearray()

    async def until(self, pattern: bytes, within: float = 40) -> re.Match[bytes]:
        with trio.fail_after(within):
            while True:
                m = re.search(pattern, bytes(self.data), re.M)
                if m:
                    return m
                chunk = await self.stream.receive_some(65536)
                if not chunk:
                    raise AssertionError(
                        f"stream ended before {pattern!r}:\n{self.data.decode(errors='replace')}"
                    )
                self.data += chunk

    @property
    def text(self) -> str:
        return self.data.decode(errors="replace")


#: `gateway tail`'s human format, as README shows it: time, topic, #seq, fields
TAIL_LINE = r"^\d\d:\d\d:\d\d\.\d{3} (?P<topic>\S+) #(?P<seq>\d+)(?P<fields>( [A-Za-z_]+=\S+)+)$"
STATUS_LINE = (
    r"devices (?P<online>\d+)/(?P<devices>\d+) online \| topics (?P<topics>[\d,]+) \| "
    r"screens (?P<screens>\d+) \| (?P<rate>[\d,]+) msg/s \| data age (?P<age>[\d.]+) s"
)
