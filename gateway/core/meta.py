"""Device and field metadata from configuration: what the values mean.

Rules:

* A field rule ``(filter, field)`` gives a field's display name, unit, decimals
  and expected range. For one field name the first rule whose filter matches the
  topic wins (the configuration's order), as for deadbands.
* A device's display name is, in order: the registry's name for its topic, the
  value of the configured ``name_field`` if the device sends one (a string), the
  topic itself.
* ``groups`` names topic levels (``{"site": 0, "line": 1}``): a device's group
  values are those levels of its topic (absent when the topic is shorter).
* The document served at ``/api/meta`` has a ``version`` (a hash of the
  configuration part), so a client that holds that version need not fetch again;
  device names are per topic and filtered by the caller's grants.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .state import TopicState
from .topics import RuleTable, TopicError, validate_filter, validate_topic

__all__ = ["FieldMeta", "Meta"]


@dataclass(frozen=True, slots=True)
class FieldMeta:
    filter: str
    field: str
    name: str = ""  # display name; empty: the field name
    unit: str = ""
    decimals: int | None = None
    min: float | None = None  # expected range (scales, colour keys)
    max: float | None = None

    def __post_init__(self) -> None:
        try:
            validate_filter(self.filter)
        except TopicError as err:
            raise ValueError(f"filter: {err}") from None
        if not isinstance(self.field, str) or not self.field:
            raise ValueError("field: expected a field name")
        if self.decimals is not None and (
            type(self.decimals) is not int or not 0 <= self.decimals <= 12
        ):
            raise ValueError("decimals: expected an integer from 0 to 12")
        for key in ("min", "max"):
            v = getattr(self, key)
            if v is not None and (type(v) not in (int, float) or not math.isfinite(v)):
                raise ValueError(f"{key}: expected a number")
        if self.min is not None and self.max is not None and not self.min < self.max:
            raise ValueError("min: must be below max")

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"filter": self.filter, "field": self.field}
        out["name"] = self.name or self.field
        for key in ("unit", "decimals", "min", "max"):
            v = getattr(self, key)
            if v not in (None, ""):
                out[key] = v
        return out


class Meta:
    def __init__(
        self,
        fields: Sequence[FieldMeta] = (),
        *,
        name_field: str = "",
        names: Mapping[str, str] | None = None,
        groups: Mapping[str, int] | None = None,
    ) -> None:
        for topic, label in (names or {}).items():
            try:
                validate_topic(topic)
            except TopicError as err:
                raise ValueError(f"names: {err}") from None
            if not isinstance(label, str) or not label:
                raise ValueError(f"names: the name of {topic!r} must be a non-empty string")
        for level_name, level in (groups or {}).items():
            if type(level) is not int or not 0 <= level < 32:
                raise ValueError(f"groups.{level_name}: expected a topic level from 0 to 31")
        self.fields = tuple(fields)
        self.name_field = name_field
        self.names = dict(names or {})
        self.groups = dict(groups or {})
        per_field: dict[str, list[tuple[str, FieldMeta]]] = {}
        for fm in self.fields:
            per_field.setdefault(fm.field, []).append((fm.filter, fm))
        self._tables = {name: RuleTable(rules) for name, rules in per_field.items()}
        conf = {
            "fields": [fm.as_json() for fm in self.fields],
            "name_field": name_field or None,
            "groups": self.groups,
        }
        self.version = hashlib.sha256(
            orjson.dumps(conf, option=orjson.OPT_SORT_KEYS) + orjson.dumps(self.names)
        ).hexdigest()[:16]
        self._conf = conf

    def field(self, topic: str, name: str) -> FieldMeta | None:
        table = self._tables.get(name)
        return table.lookup(topic) if table is not None else None

    def unit(self, topic: str, name: str) -> str:
        fm = self.field(topic, name)
        return fm.unit if fm is not None else ""

    def device_name(self, st: TopicState) -> str:
        name = self.names.get(st.topic)
        if name:
            return name
        if self.name_field:
            value = st.fields.get(self.name_field)
            if type(value) is str and value:
                return value
        return st.topic

    def group_values(self, topic: str) -> dict[str, str]:
        levels = topic.split("/")
        return {g: levels[i] for g, i in self.groups.items() if i < len(levels)}

    def document(
        self, states: Iterable[TopicState], visible: Callable[[str], bool] | None = None
    ) -> dict[str, Any]:
        """The ``/api/meta`` body: the configuration plus a name and groups per
        device topic the caller may see."""
        devices: dict[str, Any] = {}
        for st in states:
            if st.topic.startswith("$") or not st.seq:
                continue
            if visible is not None and not visible(st.topic):
                continue
            entry: dict[str, Any] = {"name": self.device_name(st)}
            groups = self.group_values(st.topic)
            if groups:
                entry["groups"] = groups
            devices[st.topic] = entry
        return {"version": self.version, **self._conf, "devices": devices}
