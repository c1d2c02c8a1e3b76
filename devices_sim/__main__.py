"""devices-sim: run a simulated device fleet against an MQTT broker (or print it)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from .fleet import Fleet, FleetConfig, FleetError, load_scenario

if TYPE_CHECKING:
    from .mqtt import MqttPublisher

DESCRIPTION = """\
Simulate a fleet of devices (sensors on machines in lines on sites) and publish it:
data to telemetry/<site>/<line>/<device> (JSON with a 'ts' timestamp), presence to
status/<site>/<line>/<device> (retained 'online'/'offline', and the last will).
The gateway's default MQTT routes read exactly these topics.

Examples:
  devices-sim --mqtt mqtt://127.0.0.1:1883 --devices 500 --rate 2 --duration 60
  devices-sim --mqtt mqtt://127.0.0.1:1883 --devices 10000 --connections 8
  devices-sim --stdout --devices 3 --duration 2          # JSON lines, no broker
  devices-sim --config fleet.toml --scenario incidents.toml
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="devices-sim",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    fleet = ap.add_argument_group("fleet")
    fleet.add_argument(
        "--config",
        metavar="FILE",
        help="TOML file with a [fleet] table (keys as the flags); flags win",
    )
    fleet.add_argument("--devices", type=int, help="number of devices (default 100)")
    fleet.add_argument("--sites", type=int, help="number of sites (default 4)")
    fleet.add_argument("--lines", type=int, help="lines per site (default 4)")
    fleet.add_argument("--rate", type=float, help="messages per second per device (default 1)")
    fleet.add_argument("--kinds", help="device kinds, comma-separated (default env,machine,server)")
    fleet.add_argument("--seed", type=int, help="random seed: same seed, same values (default 1)")
    fleet.add_argument("--scenario", metavar="FILE", help="a timeline of events (TOML)")
    fleet.add_argument(
        "--duration",
        type=float,
        metavar="S",
        help="stop after S seconds (default: run until interrupted)",
    )
    out = ap.add_argument_group("output")
    target = out.add_mutually_exclusive_group(required=True)
    target.add_argument("--mqtt", metavar="URL", help="mqtt://[user:pass@]host:port")
    target.add_argument("--stdout", action="store_true", help="print JSON lines instead")
    out.add_argument(
        "--connections",
        type=int,
        default=None,
        metavar="N",
        help="shared MQTT connections; 0 = one per device with a last will "
        "(default: one per device up to 200 devices, else 4)",
    )
    out.add_argument(
        "--connect-timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="every connection must be up within S seconds, else devices-sim stops with "
        "exit 1 and the broker's last answer (default: %(default)g)",
    )
    out.add_argument("--qos", type=int, choices=[0, 1], default=0, help="QoS of data messages")
    out.add_argument("--protocol", choices=["3.1.1", "5"], default="3.1.1")
    out.add_argument("--client-prefix", default="sim", help="MQTT client id prefix")
    out.add_argument(
        "--no-offline-on-exit",
        action="store_true",
        help="do not publish 'offline' for every device on a clean stop",
    )
    out.add_argument("--quiet", action="store_true", help="no status line")
    return ap


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    values: dict[str, Any] = {}
    if args.config:
        try:
            data = tomllib.loads(Path(args.config).read_text())
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise FleetError(f"--config {args.config}: {err}") from None
        table = data.get("fleet", {})
        allowed = {"devices", "sites", "lines", "rate_hz", "kinds", "seed"}
        unknown = set(table) - allowed
        if unknown:
            raise FleetError(
                f"--config: unknown keys in [fleet]: {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        values.update(table)
        if "kinds" in values:
            values["kinds"] = tuple(values["kinds"])
    for flag, key in (
        ("devices", "devices"),
        ("sites", "sites"),
        ("lines", "lines"),
        ("rate", "rate_hz"),
        ("seed", "seed"),
    ):
        if getattr(args, flag) is not None:
            values[key] = getattr(args, flag)
    if args.kinds:
        values["kinds"] = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    try:
        return FleetConfig(**values)
    except TypeError as err:
        raise FleetError(f"--config: {err}") from None


class StatusLine:
    """A live line on stderr: connections up, devices online (as the broker sees them:
    online and connected), messages per second, errors (failed publishes and failed
    connection attempts, with the last reason)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = (time.monotonic(), 0)
        self.started = time.monotonic()

    def show(
        self,
        online: int,
        total: int,
        published: int,
        errors: int,
        conns: tuple[int, int] | None = None,
        last_error: str = "",
    ) -> None:
        now = time.monotonic()
        t0, p0 = self.last
        rate = (published - p0) / max(now - t0, 1e-9)
        self.last = (now, published)
        if self.quiet:
            return
        line = (
            (f"connections {conns[0]}/{conns[1]}  " if conns else "")
            + f"devices online {online}/{total}  {rate:,.0f} msg/s  published {published:,}"
            f"  errors {errors}  up {now - self.started:.0f} s"
            + (f"  last error: {last_error}" if errors and last_error else "")
        )
        print(
            ("\r" + line + "   ") if self.tty else line,
            end="" if self.tty else "\n",
            file=sys.stderr,
            flush=True,
        )


async def run_stdout(fleet: Fleet, duration: float | None) -> int:
    t0 = trio.current_time()
    n = 0
    for m in fleet.initial():
        print(json.dumps({"topic": f"status/{m.path}", "payload": "online"}))
    while duration is None or trio.current_time() - t0 < duration:
        n += 1
        await trio.sleep_until(t0 + n * 0.05)
        for m in fleet.step(trio.current_time() - t0):
            if m.kind == "data":
                print(
                    json.dumps(
                        {
                            "topic": f"telemetry/{m.path}",
                            "payload": {**(m.fields or {}), "ts": m.ts},
                        }
                    )
                )
            else:
                print(
                    json.dumps(
                        {
                            "topic": f"status/{m.path}",
                            "payload": "online" if m.online else "offline",
                        }
                    )
                )
    return 0


async def run_mqtt(fleet: Fleet, args: argparse.Namespace) -> int:
    from gateway.ingest.paho_trio import first_leaf, parse_url

    from .mqtt import ConnectError, MqttPublisher

    broker = parse_url(args.mqtt)
    connections = args.connections
    if connections is None:
        connections = 0 if len(fleet.devices) <= 200 else 4
    pub = MqttPublisher(
        fleet,
        broker,
        connections=connections,
        qos=args.qos,
        protocol=args.protocol,
        client_prefix=args.client_prefix,
        offline_on_exit=not args.no_offline_on_exit,
        connect_timeout_s=args.connect_timeout,
    )
    status = StatusLine(args.quiet)
    started = time.monotonic()
    s = pub.stats

    async def report() -> None:
        while True:
            await trio.sleep(1.0)
            up = sum(c.session is not None and c.session.connected for c in pub.conns)
            status.show(
                pub.online(),
                len(fleet.devices),
                s.published,
                s.errors + s.connect_failures,
                (up, len(pub.conns)),
                s.last_error,
            )

    failed: list[str] = []
    with trio.CancelScope() as run_scope:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(report)
                nursery.start_soon(_stop_on_signal, run_scope, pub)
                await pub.run(args.duration)  # a clean stop publishes 'offline' for each device
                nursery.cancel_scope.cancel()
        except* ConnectError as group:
            failed.append(str(first_leaf(group)))
    elapsed = time.monotonic() - started
    print(
        ("\n" if sys.stderr.isatty() and not args.quiet else "")
        + f"summary: {s.published:,} messages in {elapsed:.1f} s "
        f"({s.published / max(elapsed, 1e-9):,.0f}/s), {s.errors} publish errors, "
        f"{s.connect_failures} failed connection attempts, {s.reconnects} reconnects, "
        f"{len(fleet.devices)} devices",
        file=sys.stderr,
    )
    if failed:
        print(f"devices-sim: {failed[0]}", file=sys.stderr)
    return 0 if s.errors == 0 and not failed else 1


async def _stop_on_signal(scope: trio.CancelScope, pub: MqttPublisher | None = None) -> None:
    """Ctrl-C or SIGTERM: a publishing fleet stops cleanly (every device publishes
    ``offline``); before that, or at a second signal, everything stops at once."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            if pub is not None and pub.publishing and not pub.stop_requested:
                pub.stop()
                continue
            scope.cancel()
            return


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        cfg = fleet_config(args)
        events = load_scenario(args.scenario) if args.scenario else []
        fleet = Fleet(cfg, events, start_wall=time.time())
        if args.duration is not None and args.duration <= 0:
            raise FleetError("--duration must be > 0 seconds")
        if not args.connect_timeout > 0:
            raise FleetError("--connect-timeout must be > 0 seconds")
        if args.mqtt:
            from gateway.ingest.paho_trio import parse_url

            parse_url(args.mqtt)
    except (FleetError, ValueError) as err:
        print(f"devices-sim: {err}", file=sys.stderr)
        return 2
    try:
        if args.stdout:
            return trio.run(run_stdout, fleet, args.duration)
        return trio.run(run_mqtt, fleet, args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. piped into `head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
