"""From MQTT messages to state updates: routes, topic templates and payload codecs.

No I/O here; ``gateway/ingest/mqtt.py`` feeds it. Rules:

* A :class:`Route` matches MQTT topics by filter (first route wins) and names the
  gateway topic with a template: ``{topic}`` is the whole MQTT topic, ``{1}``,
  ``{2}``... the levels matched by the filter's ``+`` wildcards, ``{#}`` the levels
  matched by ``#``. A message no route matches, or whose rendered topic is not a
  valid topic name, is refused as ``unmapped``; one whose rendered topic begins with
  ``$`` as ``reserved_topic``: those topics are the gateway's own (``$alarms/...``),
  and a device writing there could fake, hide or acknowledge alarms on every wall.
* Data payloads: a JSON object merges into the topic's fields (its
  ``timestamp_field``, if present, is taken out and used as the device timestamp:
  seconds, or milliseconds when larger than 1e11); a JSON scalar becomes the field
  ``value_field``; an empty payload (a cleared retained message) clears the topic.
* Status payloads: ``online``/``offline`` (also ``1``/``0``, ``true``/``false``, or
  JSON ``{"online": true}`` / ``{"status": "online"}``) set the device's presence.
* Anything else raises :class:`IngestError` with a ``reason`` (a metric label). The
  payload never appears in the error message (it may be large or sensitive).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import orjson

from ..core.state import UpdateMode
from ..core.topics import TopicError, matches, validate_filter, validate_topic

__all__ = [
    "IngestError",
    "Route",
    "Router",
    "decode_fields",
    "decode_status",
]


class IngestError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Route:
    filter: str
    topic: str = "{topic}"
    kind: str = "data"  # data | status
    mode: UpdateMode = UpdateMode.MERGE
    timestamp_field: str = "ts"
    value_field: str = "value"

    def __post_init__(self) -> None:
        validate_filter(self.filter)
        if self.kind not in ("data", "status"):
            raise ValueError(f"route kind must be 'data' or 'status', not {self.kind!r}")
        wild = self.filter.split("/").count("+")
        for i in range(1, 10):
            if f"{{{i}}}" in self.topic and i > wild:
                raise ValueError(
                    f"route {self.filter!r}: template uses {{{i}}} but the filter has "
                    f"{wild} '+' level(s)"
                )
        if "{#}" in self.topic and not self.filter.endswith("#"):
            raise ValueError(
                f"route {self.filter!r}: template uses {{#}} but the filter has no '#'"
            )


class Router:
    """MQTT topic -> (route, gateway topic); cached per MQTT topic, bounded."""

    def __init__(
        self, routes: tuple[Route, ...], max_topic_bytes: int = 1024, max_cache: int = 500_000
    ) -> None:
        self.routes = routes
        self.max_topic_bytes = max_topic_bytes
        #: a route found, None (unmapped) or the topic it would write (reserved)
        self._cache: dict[str, tuple[Route, str] | str | None] = {}
        self._max_cache = max_cache

    def route(self, mqtt_topic: str) -> tuple[Route, str]:
        try:
            found = self._cache[mqtt_topic]
        except KeyError:
            found = self._resolve(mqtt_topic)
            if len(self._cache) >= self._max_cache:
                self._cache.clear()
            self._cache[mqtt_topic] = found
        if found is None:
            raise IngestError("unmapped", "no route maps this MQTT topic")
        if type(found) is str:
            raise IngestError(
                "reserved_topic",
                f"its gateway topic {found[:200]!r} begins with '$': those are the "
                "gateway's own topics ($alarms/...), which devices may not write",
            )
        return found  # type: ignore[return-value]

    def _resolve(self, mqtt_topic: str) -> tuple[Route, str] | str | None:
        for route in self.routes:
            if matches(route.filter, mqtt_topic):
                topic = _render(route, mqtt_topic)
                try:
                    validate_topic(topic, self.max_topic_bytes)
                except TopicError:
                    return None
                if topic[:1] == "$":
                    return topic
                return route, topic
        return None


def _render(route: Route, mqtt_topic: str) -> str:
    template = route.topic
    if template == "{topic}":
        return mqtt_topic
    f_levels = route.filter.split("/")
    t_levels = mqtt_topic.split("/")
    out = template.replace("{topic}", mqtt_topic)
    plus = 0
    for i, level in enumerate(f_levels):
        if level == "+":
            plus += 1
            out = out.replace(f"{{{plus}}}", t_levels[i])
        elif level == "#":
            out = out.replace("{#}", "/".join(t_levels[i:]))
    return out


def decode_fields(
    payload: bytes, route: Route, max_bytes: int
) -> tuple[dict[str, Any], float | None, UpdateMode]:
    """A data payload as (fields, device_ts, mode); a refusal raises IngestError."""
    if len(payload) > max_bytes:
        raise IngestError("too_large", f"payload of {len(payload)} bytes exceeds {max_bytes}")
    if not payload:
        return {}, None, UpdateMode.REPLACE
    try:
        obj = orjson.loads(payload)
    except orjson.JSONDecodeError:
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError:
            raise IngestError("not_utf8", "payload is not UTF-8") from None
        raise IngestError("bad_json", "payload is not JSON") from None
    if type(obj) is dict:
        ts = obj.pop(route.timestamp_field, None) if route.timestamp_field else None
        if ts is None:
            return obj, None, route.mode
        t = type(ts)  # bool is not a number here (type(), not isinstance)
        if t is not float and t is not int:
            raise IngestError("bad_timestamp", "the timestamp field is not a number")
        value = float(ts)
        if not _isfinite(value) or value < 0:
            raise IngestError("bad_timestamp", "the timestamp field is not a non-negative number")
        return obj, value / 1000.0 if value > 1e11 else value, route.mode
    if type(obj) is list:
        raise IngestError("unsupported_json", "a JSON array is neither an object nor a value")
    return {route.value_field: obj}, None, UpdateMode.MERGE


_isfinite = math.isfinite


_ONLINE = {
    b"online": True,
    b"offline": False,
    b"1": True,
    b"0": False,
    b"true": True,
    b"false": False,
}


def decode_status(payload: bytes) -> bool | None:
    """True/False for online/offline; None for an empty payload (retained cleared)."""
    text = payload.strip().lower()
    if not text:
        return None
    if text in _ONLINE:
        return _ONLINE[text]
    if len(payload) <= 1024:
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = None
        if type(obj) is dict:
            value = obj.get("online", obj.get("status"))
            if type(value) is bool:
                return value
            if type(value) is str and value.lower().encode() in _ONLINE:
                return _ONLINE[value.lower().encode()]
        if type(obj) is str and obj.lower().encode() in _ONLINE:
            return _ONLINE[obj.lower().encode()]
    raise IngestError("bad_status", "status payload is not online/offline")
