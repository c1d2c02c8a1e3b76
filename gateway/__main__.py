"""Command line: ``gateway run`` serves; ``gateway tail`` watches a running gateway.

Every user-facing error is one line on stderr and a non-zero exit code (2: the
command line or the configuration is wrong; 1: the gateway could not run, e.g. its
port is taken); the traceback only with ``--log-level debug``.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import trio

from . import __version__
from .config import Config, ConfigError, load_config
from .errors import user_error

if TYPE_CHECKING:
    from .app import Gateway
    from .status import StatusLogHandler

log = logging.getLogger("gateway")

RUN_HELP = """\
Run the gateway: WebSocket at /ws, dashboard at /, REST at /api/topics and
/api/snapshot, health at /healthz and /readyz on the public port; /metrics on the
admin port. Settings come from defaults < --config FILE < GATEWAY_<SECTION>_<KEY>
environment variables < these flags. See docs/operations.md for every key. With
--workers N the parent keeps the ingest and the admin port and N worker processes
serve the public port (docs/deployment.md, "Every core").
"""

TAIL_HELP = """\
Print live updates of the topics matching FILTER, as a person or a script would
want them: one line per change, or one JSON object per line with --json. First a
snapshot line per matching topic, then one line per change. Reconnects by itself
and resumes where it left off.
"""


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gateway",
        description="Trio telemetry gateway: device state in, snapshots and deltas out.",
        allow_abbrev=False,
    )
    ap.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="run the gateway", description=RUN_HELP, allow_abbrev=False)
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
        "--mqtt-topic",
        action="append",
        metavar="FILTER",
        help="where your devices publish, e.g. 'plant/#' (repeatable): subscribe to FILTER "
        "and use each message's MQTT topic as the gateway topic, JSON payloads as fields. "
        "Replaces the default routes (telemetry/<path> and status/<path>)",
    )
    run.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="allow auth mode 'none' on a non-loopback address",
    )
    run.add_argument("--dashboard-dir", metavar="DIR", help="serve the dashboard from DIR")
    run.add_argument(
        "--state-dir",
        metavar="DIR",
        help="keep the state, alarms, chart history and (over a graceful restart) the "
        "epoch in checkpoints in DIR, so screens resume with deltas ([persist] state_dir; "
        "default: none, every start is empty with a new epoch; docs/operations.md, "
        "'Restarts')",
    )
    run.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="serve screens from N processes on one port (SO_REUSEPORT), fed by one ingest "
        "in the parent process: same epoch and seqs everywhere, so a screen resumes on any "
        "worker; worker i has its own /metrics on admin port + 1 + i (default 1: one "
        "process; docs/deployment.md)",
    )
    run.add_argument(
        "--status-interval",
        type=float,
        metavar="S",
        help="seconds between status lines (default: 1 on a terminal, where the line is "
        "rewritten in place; 60 otherwise, as a log line); 0: none",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="default: %(default)s; debug also shows tracebacks of errors",
    )

    tail = sub.add_parser(
        "tail",
        help="print live updates from a running gateway",
        description=TAIL_HELP,
        allow_abbrev=False,
    )
    tail.add_argument("filter", metavar="FILTER", help="topic filter, e.g. 'berlin/#'")
    tail.add_argument(
        "--url",
        default="ws://127.0.0.1:8080/ws",
        help="gateway WebSocket URL (default: %(default)s)",
    )
    tail.add_argument(
        "--token",
        default=os.environ.get("GATEWAY_TOKEN"),
        help="access token (default: $GATEWAY_TOKEN)",
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.add_argument(
        "--rate",
        type=float,
        default=None,
        metavar="HZ",
        help="most updates per second per topic (default: the gateway's, 10)",
    )
    tail.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N lines (default: 0, run until interrupted)",
    )
    return ap


def _run_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    server: dict[str, Any] = {}
    for key in ("host", "port", "admin_host", "admin_port", "dashboard_dir", "workers"):
        value = getattr(args, key)
        if value is not None:
            server[key] = value
    if args.allow_anonymous:
        server["allow_anonymous"] = True
    out: dict[str, dict[str, Any]] = {"server": server}
    mqtt: dict[str, Any] = {}
    if args.mqtt:
        mqtt["url"] = args.mqtt
    if args.mqtt_topic:
        mqtt["subscriptions"] = [{"filter": f, "qos": 1} for f in args.mqtt_topic]
        mqtt["routes"] = [{"filter": f, "topic": "{topic}"} for f in args.mqtt_topic]
    if mqtt:
        out["mqtt"] = mqtt
    if args.state_dir is not None:
        out["persist"] = {"state_dir": args.state_dir}
    if args.simulate is not None:
        if args.simulate < 0:
            raise ConfigError("--simulate: the number of devices must be >= 0")
        out["simulator"] = {"devices": args.simulate}
    if args.status_interval is not None and args.status_interval < 0:
        raise ConfigError("--status-interval: must be >= 0 seconds (0: no status line)")
    return out


def mqtt_mapping(cfg: Config) -> list[str]:
    """What the gateway subscribes to and how MQTT topics become gateway topics, for
    the start log: one line per subscription, one per route with an example."""
    from .ingest.codec import IngestError, Router

    m = cfg.mqtt
    subs = ", ".join(f"{flt} (QoS {qos})" for flt, qos in m.subscriptions)
    lines = [f"MQTT: subscribing to {subs}; messages on other topics never reach the gateway"]
    for route in m.routes:
        levels = route.filter.split("/")
        example = "/".join(
            {"+": f"x{i}", "#": "a/b"}.get(level, level) for i, level in enumerate(levels)
        )
        try:
            shown = f"e.g. {example} -> {Router((route,)).route(example)[1]}"
        except IngestError:
            shown = f"template {route.topic}"
        lines.append(
            f"MQTT route: {route.filter} -> gateway topic {route.topic} ({route.kind}; {shown})"
        )
    lines.append("MQTT: a message no route maps is refused as 'unmapped' (counted, logged)")
    return lines


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, possibly inside a Trio nursery's exception group."""
    if isinstance(exc, BaseExceptionGroup):
        return exc.split(KeyboardInterrupt)[1] is None
    return isinstance(exc, KeyboardInterrupt)


async def _serve_with_status(
    cfg: Config, interval_s: float, handler: StatusLogHandler | None, log_level: str = "info"
) -> str:
    from .app import serve
    from .status import StatusReporter

    if cfg.server.workers > 1:
        from .cluster.parent import serve_cluster

        serve = functools.partial(serve_cluster, log_level=log_level)

    reporter = StatusReporter(handler, interval_s)
    gw: Gateway | None = None
    async with trio.open_nursery() as nursery:

        async def serve_then_stop(task_status: trio.TaskStatus[Gateway]) -> None:
            await serve(cfg, install_signals=True, task_status=task_status)
            nursery.cancel_scope.cancel()

        gw = await nursery.start(serve_then_stop)
        if interval_s > 0:
            nursery.start_soon(reporter.run, gw)
        else:
            reporter.started_wall, reporter.started_mono = gw.clock.wall(), gw.clock.mono()
    assert gw is not None
    return await reporter.summary(gw)


def _setup_logging(level: str, status_line: bool) -> StatusLogHandler | None:
    from .status import StatusLogHandler

    handler: logging.StreamHandler[Any] = (
        StatusLogHandler(sys.stderr) if status_line else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=getattr(logging, level.upper()), handlers=[handler])
    return handler if isinstance(handler, StatusLogHandler) else None


def _run(args: argparse.Namespace) -> int:
    from .status import terminal

    try:
        cfg = load_config(args.config, os.environ, _run_overrides(args))
        _check_simulator(cfg)
        if args.mqtt_topic and not cfg.mqtt.url:
            raise ConfigError("--mqtt-topic: needs a broker (--mqtt URL, or mqtt.url)")
    except ConfigError as err:
        print(f"gateway: configuration error: {err}", file=sys.stderr)
        return 2
    tty = terminal()
    interval = args.status_interval
    if interval is None:
        interval = 1.0 if tty else 60.0
    handler = _setup_logging(args.log_level, tty and interval > 0)
    if cfg.mqtt.url:
        for line in mqtt_mapping(cfg):
            log.info("%s", line)
    try:
        summary = trio.run(
            functools.partial(_serve_with_status, cfg, interval, handler, args.log_level)
        )
    except BaseException as exc:
        if handler is not None:
            handler.finish()
        if _interrupted(exc):  # Ctrl-C before the signal handlers were installed
            return 130
        message = user_error(exc)
        if message is None or args.log_level == "debug":
            raise
        print(f"gateway: {message}", file=sys.stderr)
        return 1
    log.info("%s", summary)
    return 0


def _check_simulator(cfg: Config) -> None:
    """The embedded fleet's settings and scenario, checked against its sites, lines
    and device names before serving (config.py does not import the simulator)."""
    sim = cfg.simulator
    if not sim.devices:
        return
    from devices_sim.fleet import FleetConfig, FleetError, check_events, load_scenario

    try:
        events = load_scenario(sim.scenario) if sim.scenario else []
        check_events(
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
    if args.command == "run":
        return _run(args)
    if args.command == "tail":
        from .client import tail

        logging.basicConfig(  # the tail says itself when the connection comes and goes
            level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        try:
            code: int = trio.run(tail, args)
            return code
        except BaseException as exc:
            if _interrupted(exc):  # Ctrl-C: the way to stop a tail without --count
                return 130
            raise
    return 2  # pragma: no cover - argparse requires a command


if __name__ == "__main__":
    sys.exit(main())
