"""The first hour, continued: docs/operations.md's "Running", devices_sim/README.md
and grafana/README.md, typed as written; each output checked against the sample the
docs print."""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path

import trio

from tests.broker import Mosquitto
from tests.conftest import require_binary, stop_process
from tests.firsthour.docs import (
    ROOT,
    STATUS_LINE,
    Reader,
    blocks,
    commands,
    on_ports,
    run,
    section,
    start,
)

RUNNING = "## Running"


def doc_sample(pattern: str) -> str:
    """The one line of docs/operations.md's sample output matching ``pattern``."""
    text = "".join(blocks("docs/operations.md", "# Operating the gateway", lang=""))
    (line,) = [x for x in text.splitlines() if re.search(pattern, x)]
    return line


def test_the_running_commands_are_the_ones_checked() -> None:
    (block,) = blocks("docs/operations.md", RUNNING)
    assert [c.text for c in commands(block)] == [
        "gateway run",  # the default ports: what the port-in-use sample shows
        "gateway run --simulate 500",  # make run (tests/firsthour/test_readme.py)
        "gateway run --config /etc/gateway.toml",  # the config error sample
        "gateway run --port 0 --admin-port 0",
    ]


async def test_free_ports_are_logged_at_start_as_the_docs_show() -> None:
    gw = await start("gateway run --port 0 --admin-port 0")
    try:
        assert gw.stderr is not None
        log = Reader(gw.stderr)
        sample = doc_sample(r"listening on")
        shape = re.escape(sample.removeprefix("INFO "))
        shape = shape.replace("8080", r"(\d+)").replace("9108", r"(\d+)")
        shape = re.sub(r"epoch\\ [0-9a-f]+", r"epoch [0-9a-f]{16}", shape)
        m = await log.until(rb" INFO " + shape.encode())
        assert int(m.group(1)) not in (0, 8080) and int(m.group(2)) not in (0, 9108)
    finally:
        await stop_process(gw)
    assert gw.returncode == 0


async def test_a_taken_port_is_the_one_line_the_docs_show() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # `gateway run` on the default ports, with the public one taken (--port P)
        done = await run(f"gateway run --port {port}")
    sample = doc_sample(r"cannot listen on").replace("8080", str(port))
    assert done.returncode == 1
    assert done.stderr.decode().splitlines() == [sample]


async def test_a_config_error_is_the_one_line_the_docs_show(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text("[server]\nprot = 8080\n")
    done = await run(f"gateway run --config {config}")
    sample = doc_sample(r"configuration error")
    assert done.returncode == 2
    (line,) = done.stderr.decode().splitlines()
    assert line.startswith(sample.removesuffix("..."))


async def test_the_simulator_readme_commands(mosquitto: Mosquitto) -> None:
    doc = "devices_sim/README.md"
    (first, *_) = blocks(doc, "# devices_sim: a simulated device fleet")
    cmds = [c.text for c in commands(first)]
    assert cmds == [
        "devices-sim --mqtt mqtt://127.0.0.1:1883 --devices 500 --rate 2 --duration 60",
        # 10,000 devices and a scenario file of your own: the benchmarks run that scale
        "devices-sim --mqtt mqtt://127.0.0.1:1883 --devices 10000 --connections 8 "
        "--scenario incidents.toml",
        "devices-sim --stdout --devices 3 --duration 2",
        "gateway run --simulate 500",  # make run (tests/firsthour/test_readme.py)
    ]
    done = await run(cmds[2])
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in done.stdout.splitlines()]
    assert {r["topic"].split("/")[0] for r in rows} == {"telemetry", "status"}
    assert len({r["topic"] for r in rows if r["topic"].startswith("telemetry/")}) == 3

    # the status line and, on Ctrl-C, the summary, as the README shows them
    sim = await start(on_ports(cmds[0], broker=mosquitto.port))
    try:
        assert sim.stderr is not None
        out = Reader(sim.stderr)
        await out.until(rb"^connections 4/4  devices online 500/500  [\d,]+ msg/s  published ")
        sim.send_signal(signal.SIGINT)
        with trio.fail_after(20):
            assert await sim.wait() == 0
        await out.until(rb"^summary: [\d,]+ messages in [\d.]+ s \([\d,]+/s\), 0 publish errors")
    finally:
        await stop_process(sim)
    shown = [x for x in section(doc, "# devices_sim: a simulated device fleet").splitlines()]
    assert any(re.match(r"connections 3/3  devices online 3/3  \d+ msg/s", x) for x in shown)
    assert any(x.startswith("summary: ") and "0 publish errors" in x for x in shown)


async def test_the_grafana_readme_rule_check() -> None:
    require_binary("promtool", "prometheus")
    (cmd,) = re.findall(r"`(promtool [^`]+)`", (ROOT / "grafana" / "README.md").read_text())
    done = await run(cmd)
    assert done.returncode == 0 and b"SUCCESS" in done.stdout, done.stderr


def test_the_status_and_summary_samples_have_the_form_the_gateway_prints() -> None:
    # the live lines are checked against the same patterns in test_readme.py (make run)
    assert re.fullmatch(STATUS_LINE, doc_sample(r"^devices \d"))
    assert re.fullmatch(
        r"INFO gateway: ran [^:]+: [\d,]+ device messages \([\d,]+/s\), [\d,]+ topics, "
        r"\d+/\d+ devices online at exit, \d+ screens at most",
        doc_sample(r"INFO gateway: ran "),
    )
