"""The first hour: README.md's "Using it" and the Prometheus steps of
docs/operations.md, typed as written, against the gateway `make run` starts.

The commands come from the Markdown (tests/firsthour/docs.py); the lists below are
what this suite knows how to check, and the first test fails when the docs and the
lists part ways, so a new command in the README needs a check here.
"""

from __future__ import annotations

import ast
import contextlib
import os
import re
import signal
import subprocess
from pathlib import Path

import orjson
import pytest
import trio

from devices_sim.fleet import FleetConfig
from tests.broker import free_port
from tests.conftest import require_binary
from tests.firsthour.docs import (
    ROOT,
    STATUS_LINE,
    TAIL_LINE,
    Reader,
    blocks,
    commands,
    on_ports,
    run,
    section,
    shell_env,
    start,
)

USING = "## Using it"
MAKE_RUN_COMMANDS = [
    ". .venv/bin/activate",
    "gateway run --simulate 500",
    "gateway tail 'berlin/#'",
    "gateway tail 'berlin/line1/#' --json --count 10",
    "curl -s 'http://127.0.0.1:8080/api/snapshot?filter=berlin/line1/%23'",
]
MQTT_COMMANDS = [  # run by test_mqtt.py
    "gateway run --mqtt mqtt://127.0.0.1:1883",
    'mosquitto_pub -t telemetry/plant1/press-7 -m \'{"temperature": 21.5, "rpm": 1180}\'',
    "mosquitto_pub -t status/plant1/press-7 -m online -r",
    "gateway tail 'plant1/#' --count 1",
    "gateway run --mqtt mqtt://127.0.0.1:1883 --mqtt-topic 'plant/#'",
    "mosquitto_pub -t plant/line1/press-7 -m '{\"rpm\": 1180}'",
    "gateway tail 'plant/#' --count 1",
    "devices-sim --mqtt mqtt://127.0.0.1:1883 --devices 1000 --rate 2",
]
PROMETHEUS = "## Prometheus and Grafana"
PROMETHEUS_COMMANDS = [
    "apt-get install -y prometheus",
    "cp grafana/prometheus.yml grafana/alerts.yml /etc/prometheus/",
    "promtool check config /etc/prometheus/prometheus.yml",
    "prometheus --config.file=/etc/prometheus/prometheus.yml",
    "curl -s 'http://127.0.0.1:9090/api/v1/query?query=gateway_build_info'",
]


def readme_commands() -> list[str]:
    return [c.text for b in blocks("README.md", USING) for c in commands(b)]


def test_this_suite_runs_every_command_of_the_readme_and_the_prometheus_steps() -> None:
    assert readme_commands() == MAKE_RUN_COMMANDS + MQTT_COMMANDS
    steps = [c.text for c in commands(blocks("docs/operations.md", PROMETHEUS)[0])]
    # the Grafana steps that follow need Grafana's own packages: not run here
    assert steps[: len(PROMETHEUS_COMMANDS)] == PROMETHEUS_COMMANDS


def test_the_readme_image_caption_says_what_the_image_shows() -> None:
    script = (ROOT / "scripts" / "screenshots.py").read_text()
    devices = int(re.search(r'"--devices", type=int, default=(\d+)', script).group(1))  # type: ignore[union-attr]
    title = re.search(r"\?title=([^\"&]+)", script).group(1).replace("%20", " ")  # type: ignore[union-attr]
    caption = re.search(
        r"!\[([^\]]+)\]\(docs/img/dashboard-1920x1080.jpg\)", section("README.md", "## Status")
    )
    assert caption is not None
    assert f"{devices:,} simulated devices" in caption.group(1) and f'"{title}"' in caption.group(1)
    run_sh = (ROOT / "scripts" / "run.sh").read_text()
    shown = int(re.search(r"exec \S+ run --simulate (\d+)", run_sh).group(1))  # type: ignore[union-attr]
    assert f"make run shows the same wall with {shown} devices" in caption.group(1)


def sample(block_index: int, pattern: str) -> list[str]:
    """The README's sample output lines (its plain ``` blocks) that match ``pattern``."""
    text = blocks("README.md", USING, lang="")[block_index]
    return [line for line in text.splitlines() if re.search(pattern, line)]


async def test_make_run_and_every_readme_command_against_it(tmp_path: Path) -> None:
    require_binary("make")
    require_binary("curl")
    # `make run ARGS=...` (README) with free ports (`--port 0`, docs/operations.md), on a
    # terminal: the status line is drawn only there
    master, slave = os.openpty()
    proc = await trio.lowlevel.open_process(
        ["make", "run", "ARGS=--port 0 --admin-port 0"],
        cwd=ROOT,
        env=shell_env(),
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    out = Reader(trio.lowlevel.FdStream(master))
    try:
        # first run in a clone installs the dashboard's npm packages
        m = await out.until(
            rb"listening on http://127\.0\.0\.1:(\d+)/ \(WebSocket /ws\), "
            rb"admin on http://127\.0\.0\.1:(\d+)/metrics",
            within=120,
        )
        port, admin = int(m.group(1)), int(m.group(2))
        before = out.text[: m.start()].splitlines()
        assert len(before) <= 8, before  # a few lines, not pages of pip warnings
        assert not [x for x in before if "WARNING" in x or "pip" in x.split()], before

        status = await out.until(rb"\r\x1b\[K" + STATUS_LINE.encode())
        assert status["online"] == status["devices"] == status["topics"] == b"500"
        assert len(sample(0, STATUS_LINE)) == 1  # the README shows the same line

        await readme_commands_against(port, tmp_path)
        await prometheus_steps(admin, tmp_path)

        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C on the terminal
        summary = await out.until(
            rb"ran [^:]+: ([\d,]+) device messages \(([\d,]+)/s\), 500 topics"
        )
        assert int(summary[1].replace(b",", b"")) > 500
        documented = sample(0, r"INFO gateway: ran ")
        assert len(documented) == 1 and re.search(
            r"ran [^:]+: [\d,]+ device messages \([\d,]+/s\), 500 topics, 500/500 devices "
            r"online at exit, \d+ screens at most$",
            documented[0],
        )
        with trio.fail_after(15):
            await proc.wait()
            # the terminal closes once the gateway under make has exited too
            with contextlib.suppress(OSError, trio.BrokenResourceError):
                while await out.stream.receive_some(65536):
                    pass
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await out.stream.aclose()


async def readme_commands_against(port: int, tmp_path: Path) -> None:
    # `. .venv/bin/activate` puts the commands on PATH
    with trio.fail_after(10):
        found = await trio.run_process(
            ["bash", "-c", ". .venv/bin/activate && command -v gateway devices-sim"],
            cwd=ROOT,
            env={**os.environ, "PATH": "/usr/local/bin:/usr/bin:/bin"},
            capture_stdout=True,
        )
    assert found.stdout.decode().split() == [
        str(ROOT / ".venv/bin/gateway"),
        str(ROOT / ".venv/bin/devices-sim"),
    ]
    # `gateway run --simulate 500` is what make run starts
    assert (
        "exec .venv/bin/gateway run --simulate 500 ${ARGS:-}"
        in (ROOT / "scripts" / "run.sh").read_text()
    )

    # gateway tail 'berlin/#': a line per topic, then a line per change; Ctrl-C ends it
    tail = await start(on_ports("gateway tail 'berlin/#'", gateway=port))
    assert tail.stdout is not None
    lines = Reader(tail.stdout)
    await lines.until(rb"(.*\n){130}")  # 125 berlin devices, then changes
    tail.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await tail.wait() == 130
    shown = lines.text.splitlines()[:130]
    for line in shown:
        m = re.match(TAIL_LINE, line)
        assert m and m["topic"].startswith("berlin/"), line
    assert len({re.match(TAIL_LINE, x)["topic"] for x in shown}) == 125  # type: ignore[index]
    documented = sample(0, TAIL_LINE)
    assert len(documented) == 2  # the README's sample lines have the same form

    # --json --count 10: exactly 10 JSON lines, then exit 0
    done = await run(on_ports("gateway tail 'berlin/line1/#' --json --count 10", gateway=port))
    assert done.returncode == 0, done.stderr
    rows = [orjson.loads(x) for x in done.stdout.splitlines()]
    assert len(rows) == 10
    assert all(r["topic"].startswith("berlin/line1/") for r in rows)
    assert rows[0]["kind"] == "snapshot" and rows[0]["online"] is True
    (doc_row,) = [orjson.loads(x) for x in sample(0, r'^\{"topic"')]
    assert set(doc_row) == set(rows[0])

    # curl the snapshot API: every berlin/line1 topic with its fields
    done = await run(
        on_ports(
            "curl -s 'http://127.0.0.1:8080/api/snapshot?filter=berlin/line1/%23'", gateway=port
        )
    )
    assert done.returncode == 0, done.stderr
    snap = orjson.loads(done.stdout)
    assert snap["filter"] == "berlin/line1/#" and len(snap["topics"]) == 32
    assert all(t.startswith("berlin/line1/") and v["fields"] for t, v in snap["topics"].items())
    (doc_snap,) = sample(0, r'^\{"epoch"')
    assert doc_snap.startswith('{"epoch":') and '"filter":"berlin/line1/#","topics":{' in doc_snap

    # the old README's `gateway tail 'site/#'`: says that nothing matches, as documented
    tail = await start(on_ports("gateway tail 'site/#'", gateway=port))
    assert tail.stderr is not None
    said = await Reader(tail.stderr).until(rb"^gateway tail: 0 topics match .*$")
    tail.send_signal(signal.SIGINT)
    with trio.fail_after(10):
        assert await tail.wait() == 130
    (doc_line,) = [
        x
        for x in section("docs/operations.md", "## Running").splitlines()
        if x.startswith("gateway tail: 0 topics match")
    ]
    assert said[0].decode() == doc_line.replace("127.0.0.1:8080", f"127.0.0.1:{port}")

    # the Python example, as a script: prints the device's fields
    (script,) = blocks("README.md", USING, lang="python")
    example = tmp_path / "example.py"
    example.write_text(on_ports(script, gateway=port))
    done = await run(f"python {example}")  # with the venv active, as the README says
    assert done.returncode == 0, done.stderr
    fields = ast.literal_eval(done.stdout.decode().strip())
    assert set(fields) == {"temperature", "humidity"}
    m = re.search(r"It prints the device's fields, e\.g\. `(\{.*?\})`", section("README.md", USING))
    assert m and set(ast.literal_eval(m.group(1))) == set(fields)


async def prometheus_steps(admin: int, tmp_path: Path) -> None:
    prometheus = require_binary("prometheus")
    require_binary("promtool", "prometheus")
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    web = free_port()

    def here(cmd: str) -> str:  # /etc/prometheus -> a scratch copy; Prometheus on a free port
        return cmd.replace("/etc/prometheus", str(etc)).replace(
            "127.0.0.1:9090", f"127.0.0.1:{web}"
        )

    steps = PROMETHEUS_COMMANDS
    done = await run(here(steps[1]))
    assert done.returncode == 0, done.stderr
    # "With several gateways, list every admin address under targets": here, make run's
    config = etc / "prometheus.yml"
    assert '"127.0.0.1:9108"' in config.read_text()
    config.write_text(config.read_text().replace("127.0.0.1:9108", f"127.0.0.1:{admin}"))
    done = await run(here(steps[2]))
    assert done.returncode == 0 and b"SUCCESS" in done.stdout + done.stderr, done.stderr
    assert steps[3].startswith("prometheus ")
    proc = await start(
        here(steps[3]).replace("prometheus ", f"{prometheus} ", 1)
        + f" --web.listen-address=127.0.0.1:{web} --storage.tsdb.path={tmp_path / 'tsdb'}",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with trio.fail_after(40):  # ready, then the first scrape (every 5 s)
            while True:
                done = await run(here(steps[4]))
                if done.returncode == 0 and done.stdout.startswith(b"{"):  # not starting
                    doc = orjson.loads(done.stdout)
                    if doc["status"] == "success" and doc["data"]["result"]:
                        break
                await trio.sleep(0.5)
        (series,) = doc["data"]["result"]
        assert series["metric"]["job"] == "gateway"
        assert series["metric"]["instance"] == f"127.0.0.1:{admin}"
    finally:
        proc.terminate()
        with trio.move_on_after(10):
            await proc.wait()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize("doc", ["README.md", "docs/operations.md", "devices_sim/README.md"])
def test_docs_tail_only_topics_that_exist(doc: str) -> None:
    """Every `gateway tail` in the docs' code names topics that `make run` or the
    commands before it create (the old README said `site/...`, which never exists)."""
    text = (ROOT / doc).read_text()
    code = "\n".join(re.findall(r"^```\w*\n(.*?)^```$", text, re.M | re.S))
    for filt in re.findall(r"gateway tail '([^']+)'", code):
        assert filt.split("/")[0] in {*FleetConfig().site_names, "plant", "plant1"}, filt
