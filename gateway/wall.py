"""The wall's description: a TOML or JSON file named by ``server.wall_file``, checked at
start-up and served as JSON at ``/api/wall`` for the dashboard (dashboard/README.md).

The gateway only checks the shape (known keys, types, panel kinds) so a typo fails at
start with the key's path instead of a blank wall; what the panels mean is the
dashboard's business.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from .errors import ConfigError

PANEL_TYPES = ("kpis", "grid", "trend", "worst", "alarms", "events")
_TOP: dict[str, type] = {
    "title": str,
    "filter": str,
    "rotate_s": float,
    "grace_s": float,
    "warn_s": float,
    "bad_s": float,
    "pages": list,
}
_PAGE: dict[str, type] = {"name": str, "filter": str, "panels": list}
_PANEL: dict[str, type] = {
    "type": str,
    "title": str,
    "field": str,
    "level": int,
    "groups": list,
    "max": int,
    "rows": int,
    "filter": str,
}
NOT_CONFIGURED = b'{"configured":false}'


def load_wall(path: str) -> bytes:
    """The wall file as JSON bytes for /api/wall; NOT_CONFIGURED when ``path`` is empty.
    Raises ConfigError naming the file and key on any problem."""
    if not path:
        return NOT_CONFIGURED
    where = f"server.wall_file {path}"
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ConfigError(f"{where}: cannot read: {err.strerror}") from None
    try:
        doc = json.loads(text) if path.endswith(".json") else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(
            f"{where}: not valid {'JSON' if path.endswith('.json') else 'TOML'}: {err}"
        ) from None
    _check(doc, _TOP, where)
    pages = doc.get("pages")
    if not isinstance(pages, list) or not pages:
        raise ConfigError(f"{where}: pages: at least one page ([[pages]]) is required")
    for i, page in enumerate(pages):
        _check(page, _PAGE, f"{where}: pages[{i}]")
        panels = page.get("panels")
        if not isinstance(panels, list) or not panels:
            raise ConfigError(f"{where}: pages[{i}].panels: at least one panel is required")
        for j, panel in enumerate(panels):
            at = f"{where}: pages[{i}].panels[{j}]"
            _check(panel, _PANEL, at)
            if panel.get("type") not in PANEL_TYPES:
                raise ConfigError(f"{at}.type: one of {', '.join(PANEL_TYPES)}")
            if not 1 <= panel.get("level", 1) <= 16:
                raise ConfigError(f"{at}.level: a topic level from 1 to 16")
    doc["configured"] = True
    return json.dumps(doc).encode()


def _check(obj: Any, schema: dict[str, type], at: str) -> None:
    if not isinstance(obj, dict):
        raise ConfigError(f"{at}: expected a table")
    for key, value in obj.items():
        want = schema.get(key)
        if want is None:
            raise ConfigError(f"{at}.{key}: unknown key; allowed: {', '.join(schema)}")
        ok = (
            isinstance(value, int | float) and not isinstance(value, bool)
            if want is float
            else (isinstance(value, want) and not (want is int and isinstance(value, bool)))
        )
        if not ok:
            raise ConfigError(f"{at}.{key}: expected {want.__name__}, got {value!r}")
        if want is float and value < 0:
            raise ConfigError(f"{at}.{key}: must be >= 0")
