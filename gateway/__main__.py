"""Command line: ``gateway run`` serves; ``gateway tail`` watches a running gateway."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import trio

from . import __version__
from .config import Config, ConfigError, load_config

RUN_HELP = """\
Run the gateway: WebSocket at /ws, dashboard at /, REST at /api/topics and
/api/snapshot, health at /healthz and /readyz on the public port; /metrics on the
admin port. Settings come from defaults < --config FILE < GATEWAY_<SECTION>_<KEY>
environment variables < these flags. See docs/operations.md for every key.
"""

TAIL_HELP = """\
Print live updates of the topics matching FILTER, as a person or a script would
want them: one line per change, or one JSON object per line with --json.
Reconnects by itself and resumes where it left off.
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gateway",
        description="Trio telemetry gateway: device state in, snapshots and deltas out.",
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the gateway", description=RUN_HELP)
    run.add_argument("--config", metavar="FILE", help="TOML configuration file")
    run.add_argument("--host", help="public listener address (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="public port; 0 picks a free one (default 8080)")
    run.add_argument("--admin-host", help="admin listener address (default 127.0.0.1)")
    run.add_argument(
        "--admin-port", type=int, help="admin port for /metrics; 0 picks a free one (default 9108)"
    )
    run.add_argument(
        "--simulate",
        type=int,
        metavar="N",
        help="run an embedded simulator fleet of N devices (no broker needed)",
    )
    run.add_argument(
        "--mqtt", metavar="URL", help="ingest from an MQTT broker, mqtt://[user:pass@]host:port"
    )
    run.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="allow auth mode 'none' on a non-loopback address",
    )
    run.add_argument("--dashboard-dir", metavar="DIR", help="serve the dashboard from DIR")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    tail = sub.add_parser(
        "tail", help="print live updates from a running gateway", description=TAIL_HELP
    )
    tail.add_argument("filter", metavar="FILTER", help="topic filter, e.g. 'site/berlin/#'")
    tail.add_argument("--url", default="ws://127.0.0.1:8080/ws", help="gateway WebSocket URL")
    tail.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="access token (default: $GATEWAY_TOKEN)",
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--rate", type=float, default=None, metavar="HZ", help="most updates per second per topic"
    )
    tail.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N updates (0: run until interrupted)",
    )
    return ap


def _run_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    for key in ("host", "port", "admin_host", "admin_port", "dashboard_dir"):
        value = getattr(args, key)
        if value is not None:
            server[key] = value
    if args.allow_anonymous:
        server["allow_anonymous"] = True
    out: dict[str, dict[str, Any]] = {"server": server}
    if args.mqtt:
        out["mqtt"] = {"url": args.mqtt}
    if args.simulate is not None:
        if args.simulate < 0:
            raise ConfigError("--simulate: the number of devices must be >= 0")
        out["simulator"] = {"devices": args.simulate}
    return out


def _check_simulator(cfg: Config) -> None:
    """The embedded fleet's settings and scenario, checked against the real device
    list before serving (config.py does not import the simulator)."""
    sim = cfg.simulator
    if not sim.devices:
        return
    from devices_sim.fleet import Fleet, FleetConfig, FleetError, load_scenario

    try:
        events = load_scenario(sim.scenario) if sim.scenario else []
        Fleet(
            FleetConfig(
                devices=sim.devices,
                sites=sim.sites,
                lines=sim.lines,
                rate_hz=sim.rate_hz,
                seed=sim.seed,
            ),
            events,
        )
    except FleetError as err:
        raise ConfigError(f"simulator: {err}") from None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, getattr(args, "log_level", "info").upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "run":
        try:
            cfg = load_config(args.config, os.environ, _run_overrides(args))
            _check_simulator(cfg)
        except ConfigError as err:
            print(f"gateway: configuration error: {err}", file=sys.stderr)
            return 2
        from .app import serve

        try:
            trio.run(lambda: serve(cfg, install_signals=True))
        except OSError as err:
            print(f"gateway: {err}", file=sys.stderr)
            return 1
        return 0
    if args.command == "tail":
        from .client import tail

        try:
            code: int = trio.run(tail, args)
            return code
        except KeyboardInterrupt:
            return 130
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
