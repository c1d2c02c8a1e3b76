"""One frozen, validated configuration object, built once at start.

Sources, later ones win: defaults < TOML file (``--config``) < environment
(``GATEWAY_<SECTION>_<KEY>``, e.g. ``GATEWAY_SERVER_PORT=9000``) < command-line flags.
Every error names the key and what is allowed (:class:`ConfigError`). Units are in
the key names (``_s`` seconds, ``_hz`` per second, ``_bytes``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import math
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .core.alarms import AlarmRule
from .core.history import HistoryConfig
from .core.meta import FieldMeta
from .core.state import Deadband, UpdateMode
from .core.topics import TopicError, validate_filter
from .core.walls import WallsConfig
from .errors import ConfigError
from .ingest.codec import Route

__all__ = [
    "AlarmsConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "HistoryConfig",
    "MetaConfig",
    "MqttConfig",
    "PersistConfig",
    "ServerConfig",
    "SimulatorConfig",
    "StateConfig",
    "load_config",
]


@dataclass(frozen=True)
class StaticToken:
    name: str
    token: str = field(repr=False)
    grants: tuple[str, ...] = ("#",)
    ack: bool = False  # may acknowledge alarms (docs/alarms.md)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    admin_host: str = "127.0.0.1"
    admin_port: int = 9108
    #: exact Origin values allowed to open /ws, besides the gateway's own origin and
    #: localhost origins (which are always allowed); ["*"] allows any origin
    allowed_origins: tuple[str, ...] = ()
    #: requests without an Origin header (non-browser clients) are allowed unless false
    allow_missing_origin: bool = True
    allow_anonymous: bool = False  # auth "none" on a non-loopback address
    max_connections: int = 10_000
    max_connections_per_ip: int = 1_000
    #: new public connections per second, all addresses together (burst: as many);
    #: 0 = no limit. Over it: 503 before the upgrade
    max_new_connections_per_s: float = 0.0
    #: addresses of reverse proxies (nginx) whose X-Forwarded-For is believed: their
    #: clients are limited and logged by the forwarded address
    trusted_proxies: tuple[str, ...] = ()
    max_message_bytes: int = 65_536
    #: a client message begun must be complete within this (a cut frame, then silence)
    message_timeout_s: float = 5.0
    messages_per_s: float = 50.0  # per connection, token bucket
    message_burst: int = 100
    max_protocol_errors: int = 20
    max_subscriptions: int = 32
    handshake_timeout_s: float = 10.0
    auth_timeout_s: float = 10.0
    idle_timeout_s: float = 0.0  # 0: no idle limit (screens may watch quiet topics)
    heartbeat_s: float = 15.0
    pong_timeout_s: float = 10.0
    shutdown_timeout_s: float = 5.0
    close_timeout_s: float = 2.0
    tick_hz: float = 20.0
    default_rate_hz: float = 10.0
    #: the slowest subscription rate; requested rates snap down to the steps of
    #: docs/protocol.md (tick_hz and the 1-2-5 series down to this)
    min_rate_hz: float = 0.1
    max_filters_per_connection: int = 256  # over all of a connection's subscriptions
    max_groups_per_connection: int = 64  # distinct (filter, rate) streams per connection
    stall_s: float = 10.0
    max_lag_s: float = 30.0
    max_frame_bytes: int = 1 << 20
    #: SO_SNDBUF of client sockets; 0 keeps the kernel's autotuning (up to
    #: net.ipv4.tcp_wmem's maximum, 4 MiB by default, per stalled screen)
    send_buffer_bytes: int = 0
    #: how often the event-loop lag sampler wakes (gateway_event_loop_lag_seconds)
    loop_lag_interval_s: float = 0.01
    #: permessage-deflate when the client offers it (browsers do): each frame is
    #: compressed once for every screen that receives it
    compression: bool = True
    dashboard_dir: str = ""  # empty: the dashboard/ folder next to the package
    #: the wall's description (TOML or JSON), served at /api/wall; empty: automatic wall
    wall_file: str = ""

    #: origins the gateway is reached under besides loopback names (e.g.
    #: "https://wall.example.com"): the own-origin rule trusts a Host header only when
    #: it is a loopback name or one of these (DNS rebinding, docs/security.md)
    public_origins: tuple[str, ...] = ()
    #: bytes a connection may have queued for a peer that does not read (control
    #: frames, errors, pongs, the rest of an HTTP response); over it: WebSocket close
    #: 4009, SSE and HTTP cut. State frames are taken only while nothing is queued
    max_pending_bytes: int = 1 << 20
    #: bytes of plain-HTTP response bodies held by all connections together; a
    #: response that would go over is answered 503 (Retry-After)
    max_http_pending_bytes: int = 64 << 20
    #: a plain-HTTP response must make progress within this, and end within
    #: http_response_timeout_s of its first byte
    http_write_timeout_s: float = 5.0
    http_response_timeout_s: float = 30.0
    #: requests served on one keep-alive connection (the last answers Connection: close)
    max_requests_per_connection: int = 100
    #: the dashboard's Content-Security-Policy frame-ancestors ("'none'": no embedding;
    #: e.g. "'self' https://portal.example.com" for a wall that embeds it)
    frame_ancestors: str = "'none'"
    #: processes serving screens on the public port (SO_REUSEPORT), fed by one ingest
    #: in the parent process (gateway/cluster, docs/deployment.md); 1: one process
    workers: int = 1
    #: bytes of replicated changes queued for one worker; a worker that falls this far
    #: behind is restarted (and resynced) rather than letting the parent's memory grow
    worker_channel_bytes: int = 64 << 20
    #: a worker that sends nothing (not even its once-a-second beat) this long is hung
    #: (stopped, its event loop stalled): it is killed and restarted
    worker_silent_s: float = 10.0

    def validate(self) -> None:
        """Checks of this section alone (``ConfigError`` names the key)."""
        if not 1 <= self.workers <= 256:
            raise ConfigError("server.workers: must be 1 (one process) to 256")
        if self.worker_channel_bytes < 1 << 20:
            raise ConfigError("server.worker_channel_bytes: must be at least 1 MiB (1048576)")
        if not 2.0 <= self.worker_silent_s <= 3600.0:
            raise ConfigError("server.worker_silent_s: must be 2 to 3600 (seconds)")
        for key in ("port", "admin_port"):
            if not 0 <= getattr(self, key) <= 65535:
                raise ConfigError(f"server.{key}: must be 0 (any free port) to 65535")
        positive = [
            "max_connections",
            "max_connections_per_ip",
            "max_message_bytes",
            "message_timeout_s",
            "messages_per_s",
            "message_burst",
            "max_protocol_errors",
            "max_subscriptions",
            "handshake_timeout_s",
            "auth_timeout_s",
            "heartbeat_s",
            "pong_timeout_s",
            "shutdown_timeout_s",
            "close_timeout_s",
            "tick_hz",
            "default_rate_hz",
            "min_rate_hz",
            "max_filters_per_connection",
            "max_groups_per_connection",
            "stall_s",
            "max_lag_s",
            "max_frame_bytes",
            "loop_lag_interval_s",
            "max_pending_bytes",
            "max_http_pending_bytes",
            "http_write_timeout_s",
            "http_response_timeout_s",
            "max_requests_per_connection",
        ]
        for key in positive:
            if not getattr(self, key) > 0:
                raise ConfigError(f"server.{key}: must be > 0, got {getattr(self, key)!r}")
        for addr in self.trusted_proxies:
            try:
                ipaddress.ip_address(addr)
            except ValueError:
                raise ConfigError(
                    f"server.trusted_proxies: {addr!r} is not an IP address"
                ) from None
        for origin in self.public_origins:
            if not origin.startswith(("http://", "https://")) or origin.endswith("/"):
                raise ConfigError(
                    f"server.public_origins: {origin!r} must be scheme://host[:port], no path"
                )
        if self.max_new_connections_per_s < 0:
            raise ConfigError("server.max_new_connections_per_s: must be >= 0 (0: no limit)")
        if self.send_buffer_bytes < 0:
            raise ConfigError("server.send_buffer_bytes: must be >= 0 (0: the kernel's default)")
        if self.idle_timeout_s < 0:
            raise ConfigError("server.idle_timeout_s: must be >= 0 (0 disables it)")
        if self.min_rate_hz > self.default_rate_hz:
            raise ConfigError(
                f"server.min_rate_hz: {self.min_rate_hz} exceeds server.default_rate_hz "
                f"{self.default_rate_hz}"
            )
        if self.default_rate_hz > self.tick_hz:
            raise ConfigError(
                f"server.default_rate_hz: {self.default_rate_hz} exceeds "
                f"server.tick_hz {self.tick_hz}"
            )


@dataclass(frozen=True)
class AuthConfig:
    mode: str = "none"  # none | static | jwt
    tokens: tuple[StaticToken, ...] = ()
    jwt_secret: str = field(default="", repr=False)  # HS256
    jwt_public_key_file: str = ""  # RS256 (PEM)
    jwt_algorithms: tuple[str, ...] = ("HS256",)
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_grants_claim: str = "topics"
    #: a JWT claim that must be true for the identity to acknowledge alarms
    jwt_ack_claim: str = "ack_alarms"
    jwt_leeway_s: float = 5.0
    #: longest lifetime (exp - iat, or exp - now without iat) a JWT may have; 0: any
    jwt_max_lifetime_s: float = 0.0
    #: most grants one token may carry, and its longest length in bytes
    max_grants: int = 256
    max_token_bytes: int = 8192

    def validate(self) -> None:
        """Checks of this section alone (``ConfigError`` names the key)."""
        if self.jwt_max_lifetime_s < 0 or self.max_grants < 1 or self.max_token_bytes < 64:
            raise ConfigError(
                "auth: jwt_max_lifetime_s must be >= 0, max_grants >= 1, max_token_bytes >= 64"
            )
        if self.mode not in ("none", "static", "jwt"):
            raise ConfigError(f"auth.mode: {self.mode!r} is not one of none, static, jwt")
        if self.mode == "static" and not self.tokens:
            raise ConfigError(
                "auth.tokens: auth.mode = 'static' needs at least one [[auth.tokens]]"
            )
        if self.mode == "jwt":
            algs = set(self.jwt_algorithms)
            if not algs or algs - {"HS256", "RS256"}:
                raise ConfigError("auth.jwt_algorithms: allowed values are HS256 and RS256")
            if "HS256" in algs and len(self.jwt_secret) < 32:
                raise ConfigError("auth.jwt_secret: HS256 needs a secret of at least 32 characters")
            if "RS256" in algs and not self.jwt_public_key_file:
                raise ConfigError("auth.jwt_public_key_file: RS256 needs a PEM public key file")
            if algs == {"HS256", "RS256"}:
                raise ConfigError(
                    "auth.jwt_algorithms: choose HS256 or RS256, not both "
                    "(mixing them invites key-confusion attacks)"
                )


@dataclass(frozen=True)
class StateConfig:
    max_topics: int = 1_000_000
    max_fields: int = 256
    max_tombstones: int = 32
    max_topic_bytes: int = 1024
    #: (filter, field, Deadband); field "*" is every numeric field
    deadbands: tuple[tuple[str, str, Deadband], ...] = ()
    #: (filter, seconds): a topic silent longer than this is marked stale
    stale_after: tuple[tuple[str, float], ...] = ()
    #: stale by default: a topic silent for stale_multiple x its learned reporting
    #: interval (within [stale_floor_s, stale_ceiling_s]) is stale (docs/operations.md)
    stale_default: bool = True
    stale_multiple: float = 3.0
    stale_floor_s: float = 5.0
    stale_ceiling_s: float = 3600.0


@dataclass(frozen=True)
class MetaConfig:
    """What values mean: field display names, units, decimals, ranges; device names."""

    fields: tuple[FieldMeta, ...] = ()  # [[meta.fields]]
    name_field: str = ""  # a field devices send with their display name
    #: topic -> display name ([meta.names]), merged over names_file's
    names: tuple[tuple[str, str], ...] = ()
    names_file: str = ""  # a TOML or JSON object of topic -> display name
    groups: tuple[tuple[str, int], ...] = ()  # [meta.groups] site = 0, line = 1


@dataclass(frozen=True)
class AlarmsConfig:
    rules: tuple[AlarmRule, ...] = ()  # [[alarms.rules]]


@dataclass(frozen=True)
class SimulatorConfig:
    devices: int = 0  # 0: no embedded simulator
    sites: int = 4
    lines: int = 4  # per site
    rate_hz: float = 1.0  # messages per second per device
    seed: int = 1
    scenario: str = ""  # a scenario TOML file (devices_sim/README.md)


#: Devices publish data to telemetry/<device path> and their presence (retained,
#: and as last will) to status/<device path>; the gateway topic is the device path.
DEFAULT_ROUTES = (
    Route("telemetry/#", topic="{#}", kind="data"),
    Route("status/#", topic="{#}", kind="status"),
)


@dataclass(frozen=True)
class MqttConfig:
    url: str = field(default="", repr=False)  # may hold a password
    client_id: str = ""  # default: gateway-<random>
    #: "3.1.1" or "5". 3.1.1 by default: the ingest uses no MQTT 5 feature, and paho
    #: 2.x parses MQTT 5 properties on every PUBLISH, which costs about 45% of its
    #: receive rate (docs/benchmarks.md)
    protocol: str = "3.1.1"
    keepalive_s: float = 30.0
    connect_timeout_s: float = 10.0
    #: (filter, QoS) pairs the gateway subscribes to
    subscriptions: tuple[tuple[str, int], ...] = (("telemetry/#", 0), ("status/#", 1))
    routes: tuple[Route, ...] = DEFAULT_ROUTES
    max_payload_bytes: int = 65_536
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_insecure: bool = False
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    stable_s: float = 60.0  # connected this long: the next failure starts backoff afresh
    tcp_nodelay: bool = True  # a lone message must not wait for Nagle (data age)
    #: after the reader drained the socket it waits this long before the next read, so
    #: that one wake-up serves many messages (0: read every message as it arrives)
    read_gather_ms: float = 5.0

    def validate(self) -> None:
        """Checks of this section alone (``ConfigError`` names the key)."""
        if self.url:
            from .ingest.paho_trio import parse_url

            try:
                parse_url(self.url)
            except ValueError as err:
                raise ConfigError(f"mqtt.url: {err}") from None
        if self.protocol not in ("5", "3.1.1"):
            raise ConfigError(f"mqtt.protocol: {self.protocol!r} is not '5' or '3.1.1'")
        for key in (
            "keepalive_s",
            "connect_timeout_s",
            "reconnect_min_s",
            "stable_s",
            "max_payload_bytes",
        ):
            if not getattr(self, key) > 0:
                raise ConfigError(f"mqtt.{key}: must be > 0")
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ConfigError("mqtt.reconnect_max_s: must be >= mqtt.reconnect_min_s")
        if not 0 <= self.read_gather_ms <= 100:  # a NaN fails too
            raise ConfigError("mqtt.read_gather_ms: must be between 0 and 100")


@dataclass(frozen=True)
class PersistConfig:
    #: where checkpoints go (gateway/persist.py); empty: nothing is persisted
    state_dir: str = ""
    #: a checkpoint this often while the state changes, and one at graceful shutdown
    interval_s: float = 30.0

    def validate(self) -> None:
        if not self.interval_s > 0:
            raise ConfigError(f"persist.interval_s: must be > 0, got {self.interval_s!r}")


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    state: StateConfig = field(default_factory=StateConfig)
    simulator: SimulatorConfig = field(default_factory=SimulatorConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    persist: PersistConfig = field(default_factory=PersistConfig)
    meta: MetaConfig = field(default_factory=MetaConfig)
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    walls: WallsConfig = field(default_factory=WallsConfig)


_SECTIONS: Mapping[str, type] = {
    "server": ServerConfig,
    "auth": AuthConfig,
    "state": StateConfig,
    "simulator": SimulatorConfig,
    "mqtt": MqttConfig,
    "persist": PersistConfig,
    "meta": MetaConfig,
    "alarms": AlarmsConfig,
    "history": HistoryConfig,
    "walls": WallsConfig,
}


def _coerce(key: str, value: Any, annotation: Any, from_env: bool) -> Any:
    """Convert a TOML/env value to the field's type, or raise naming the key."""
    hint = annotation
    if hint is bool:
        if from_env and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if hint is int:
        if from_env and isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if hint is float:
        if from_env and isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    origin = typing.get_origin(hint)
    if origin is tuple and typing.get_args(hint)[:1] == (str,):
        if from_env and isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"{key}: expected a list of strings, got {value!r}")
    raise ConfigError(f"{key}: cannot be set here")  # structured keys: see _special


def _section(
    name: str, cls: type, values: Mapping[str, Any], from_env: bool = False
) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    allowed = sorted(f.name for f in dataclasses.fields(cls))
    for key, value in values.items():
        full = f"{name}.{key}"
        if key not in hints:
            raise ConfigError(
                f"{full}: unknown key; allowed keys in [{name}]: {', '.join(allowed)}"
            )
        special = _SPECIAL.get(full)
        out[key] = special(full, value) if special else _coerce(full, value, hints[key], from_env)
    return out


def _tokens(key: str, value: Any) -> tuple[StaticToken, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of tables ([[auth.tokens]])")
    tokens = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) - {"name", "token", "grants", "ack"}:
            raise ConfigError(f"{where}: expected keys name, token, grants, ack")
        name, token = item.get("name"), item.get("token")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{where}.name: expected a non-empty string")
        if not isinstance(token, str) or len(token) < 16:
            raise ConfigError(f"{where}.token: expected a string of at least 16 characters")
        grants = _filters(f"{where}.grants", item.get("grants", ["#"]))
        ack = _coerce(f"{where}.ack", item.get("ack", False), bool, False)
        tokens.append(StaticToken(name, token, grants, ack))
    return tuple(tokens)


def _filters(key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of topic filters")
    try:
        return tuple(validate_filter(v) for v in value)
    except TopicError as err:
        raise ConfigError(f"{key}: {err}") from None


def _deadbands(key: str, value: Any) -> tuple[tuple[str, str, Deadband], ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of tables ([[state.deadbands]])")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) - {"filter", "field", "abs", "rel"}:
            raise ConfigError(f"{where}: expected keys filter, field, abs, rel")
        (flt,) = _filters(f"{where}.filter", [item.get("filter")])
        fld = item.get("field", "*")
        if not isinstance(fld, str) or not fld:
            raise ConfigError(f"{where}.field: expected a field name or '*'")
        try:
            band = Deadband(abs=item.get("abs", 0.0), rel=item.get("rel", 0.0))
        except ValueError as err:
            raise ConfigError(f"{where}: {err}") from None
        out.append((flt, fld, band))
    return tuple(out)


def _stale(key: str, value: Any) -> tuple[tuple[str, float], ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{key}: expected a list of tables ([[state.stale_after]])")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) != {"filter", "after_s"}:
            raise ConfigError(f"{where}: expected keys filter and after_s")
        (flt,) = _filters(f"{where}.filter", [item["filter"]])
        after = _coerce(f"{where}.after_s", item["after_s"], float, False)
        if after <= 0:
            raise ConfigError(f"{where}.after_s: must be > 0")
        out.append((flt, after))
    return tuple(out)


def _subscriptions(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of {{filter = '...', qos = 0}}")
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) - {"filter", "qos"} or "filter" not in item:
            raise ConfigError(f"{where}: expected keys filter and qos")
        (flt,) = _filters(f"{where}.filter", [item["filter"]])
        qos = item.get("qos", 0)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ConfigError(f"{where}.qos: must be 0, 1 or 2")
        out.append((flt, int(qos)))
    return tuple(out)


def _routes(key: str, value: Any) -> tuple[Route, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{key}: expected a non-empty list of tables ([[mqtt.routes]])")
    allowed = {"filter", "topic", "kind", "mode", "timestamp_field", "value_field"}
    out = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]"
        if not isinstance(item, dict) or set(item) - allowed or "filter" not in item:
            raise ConfigError(f"{where}: expected keys {', '.join(sorted(allowed))}")
        for k, v in item.items():
            if not isinstance(v, str):
                raise ConfigError(f"{where}.{k}: expected a string")
        mode = item.get("mode", "merge")
        if mode not in ("merge", "replace"):
            raise ConfigError(f"{where}.mode: must be 'merge' or 'replace'")
        try:
            out.append(
                Route(
                    item["filter"],
                    item.get("topic", "{topic}"),
                    item.get("kind", "data"),
                    UpdateMode(mode),
                    item.get("timestamp_field", "ts"),
                    item.get("value_field", "value"),
                )
            )
        except (ValueError, TopicError) as err:
            raise ConfigError(f"{where}: {err}") from None
    return tuple(out)


def _tables(key: str, value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{key}: expected a list of tables ([[{key}]]) {what}")
    return value


def _build(
    where: str, cls: Any, item: dict[str, Any], allowed: dict[str, Any], required: tuple[str, ...]
) -> Any:
    """``cls(**item)`` with each key's type checked; errors name ``where.key``."""
    for key in required:
        if key not in item:
            raise ConfigError(f"{where}.{key}: required")
    unknown = set(item) - set(allowed)
    if unknown:
        raise ConfigError(
            f"{where}.{sorted(unknown)[0]}: unknown key; allowed: {', '.join(allowed)}"
        )
    args = {}
    for k, v in item.items():
        hint = allowed[k]
        args[k] = v if hint is None else _coerce(f"{where}.{k}", v, hint, False)
    try:
        return cls(**args)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}.{err}") from None


_FIELD_KEYS = {"filter": str, "field": str, "name": str, "unit": str, "decimals": int,
               "min": float, "max": float}  # fmt: skip
_RULE_KEYS = {"name": str, "filter": str, "condition": str, "severity": str, "field": str,
              "threshold": float, "hysteresis": float, "on_delay_s": float,
              "off_delay_s": float, "message": str}  # fmt: skip


def _meta_fields(key: str, value: Any) -> tuple[FieldMeta, ...]:
    items = _tables(key, value, "with keys " + ", ".join(_FIELD_KEYS))
    req = ("filter", "field")
    return tuple(
        _build(f"{key}[{i}]", FieldMeta, it, _FIELD_KEYS, req) for i, it in enumerate(items)
    )


def _alarm_rules(key: str, value: Any) -> tuple[AlarmRule, ...]:
    items = _tables(key, value, "with keys " + ", ".join(_RULE_KEYS))
    req = ("name", "filter", "condition")
    rules = tuple(
        _build(f"{key}[{i}]", AlarmRule, it, _RULE_KEYS, req) for i, it in enumerate(items)
    )
    seen: set[str] = set()
    for i, rule in enumerate(rules):
        if rule.name in seen:
            raise ConfigError(f"{key}[{i}].name: {rule.name!r} is used by an earlier rule")
        seen.add(rule.name)
    return rules


def _names(key: str, value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) and v for v in value.values()):
        raise ConfigError(f"{key}: expected a table of topic = 'display name'")
    return tuple(value.items())


def _groups(key: str, value: Any) -> tuple[tuple[str, int], ...]:
    if not isinstance(value, dict):
        raise ConfigError(f"{key}: expected a table of group name = topic level (0 = first)")
    out = []
    for name, level in value.items():
        if type(level) is not int or not 0 <= level < 32:
            raise ConfigError(f"{key}.{name}: expected a topic level from 0 to 31")
        out.append((name, level))
    return tuple(out)


def load_names(cfg: MetaConfig) -> dict[str, str]:
    """The device-name registry: names_file (TOML or JSON object), then [meta.names]."""
    names: dict[str, str] = {}
    if cfg.names_file:
        path = Path(cfg.names_file)
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except OSError as err:
            raise ConfigError(f"meta.names_file: cannot read {path}: {err.strerror}") from None
        except ValueError as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors
            raise ConfigError(f"meta.names_file: {path} is not valid: {err}") from None
        names.update(_names(f"meta.names_file ({path})", data))
    names.update(cfg.names)
    return names


_SPECIAL = {
    "auth.tokens": _tokens,
    "state.deadbands": _deadbands,
    "state.stale_after": _stale,
    "mqtt.subscriptions": _subscriptions,
    "mqtt.routes": _routes,
    "meta.fields": _meta_fields,
    "meta.names": _names,
    "meta.groups": _groups,
    "alarms.rules": _alarm_rules,
}


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Config:
    """Build and validate the configuration; raises :class:`ConfigError`."""
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    if path is not None:
        try:
            data = tomllib.loads(Path(path).read_text())
        except OSError as err:
            raise ConfigError(f"--config {path}: cannot read: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"--config {path}: not valid TOML: {err}") from None
        for name, values in data.items():
            if name not in _SECTIONS or not isinstance(values, dict):
                raise ConfigError(f"{name}: unknown section; allowed: {', '.join(_SECTIONS)}")
            sections[name].update(_section(name, _SECTIONS[name], values))
    for var, raw in (env or {}).items():
        if not var.startswith("GATEWAY_"):
            continue
        rest = var[len("GATEWAY_") :].lower()
        name, _, key = rest.partition("_")
        if name not in _SECTIONS:
            raise ConfigError(f"{var}: unknown section {name!r}; allowed: {', '.join(_SECTIONS)}")
        if f"{name}.{key}" in _SPECIAL:
            raise ConfigError(f"{var}: {name}.{key} can only be set in the config file")
        sections[name].update(_section(name, _SECTIONS[name], {key: raw}, from_env=True))
    for name, values in (overrides or {}).items():
        sections[name].update(_section(name, _SECTIONS[name], values))
    built = {}
    for name, vals in sections.items():
        try:
            built[name] = _SECTIONS[name](**vals)
        except ValueError as err:  # a section dataclass that validates itself
            raise ConfigError(f"{name}.{err}") from None
    cfg = Config(**built)
    _validate(cfg)
    return cfg


def _validate(cfg: Config) -> None:
    """Each section checks itself; what spans sections is checked here. The
    simulator's devices and scenario are checked by devices_sim when it starts
    (``gateway run`` checks them before serving: gateway/__main__.py)."""
    for section in (cfg.server, cfg.auth, cfg.mqtt, cfg.persist):
        section.validate()
    s, a = cfg.server, cfg.auth
    if s.wall_file:
        from .wall import load_wall  # checks the file's shape; raises ConfigError

        load_wall(s.wall_file)
    st = cfg.state
    if not st.stale_multiple >= 1:
        raise ConfigError("state.stale_multiple: must be >= 1")
    if not 0 < st.stale_floor_s <= st.stale_ceiling_s:
        raise ConfigError("state.stale_floor_s: must be > 0 and <= state.stale_ceiling_s")
    load_names(cfg.meta)  # a names_file that cannot be read is an error at start
    if a.mode == "none" and not s.allow_anonymous and not _is_loopback(s.host):
        raise ConfigError(
            f"server.host: {s.host!r} is not a loopback address and auth.mode is 'none'; "
            "configure auth, or pass --allow-anonymous to serve every topic to anyone"
        )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
