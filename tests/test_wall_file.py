"""The wall file (server.wall_file): checked at start with the key's path in the error,
served as JSON at /api/wall."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from gateway.config import ConfigError, load_config
from gateway.wall import load_wall
from tests.serve.httpget import http_get

PLANT = Path(__file__).resolve().parent.parent / "dashboard" / "walls" / "plant.toml"


def test_the_example_plant_wall_loads_and_round_trips_as_json() -> None:
    doc = json.loads(load_wall(str(PLANT)))
    assert doc["configured"] is True
    assert doc["pages"][0]["panels"][0]["type"] == "kpis"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('title = "x"\n', "pages: at least one page"),
        ('[[pages]]\nname = "p"\n', "pages[0].panels: at least one panel"),
        ('[[pages]]\n[[pages.panels]]\ntype = "pie"\n', "pages[0].panels[0].type: one of kpis"),
        ('[[pages]]\n[[pages.panels]]\ntype = "grid"\nlevl = 2\n', "panels[0].levl: unknown key"),
        ('[[pages]]\n[[pages.panels]]\ntype = "grid"\nlevel = "2"\n', "level: expected int"),
        ('rotate_s = -1\n[[pages]]\n[[pages.panels]]\ntype = "kpis"\n', "rotate_s: must be >= 0"),
        ("title = [", "not valid TOML"),
    ],
)
def test_a_bad_wall_file_fails_at_start_naming_the_key(
    tmp_path: Path, text: str, error: str
) -> None:
    path = tmp_path / "wall.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=error.replace("[", r"\[").replace("]", r"\]")):
        load_config(overrides={"server": {"wall_file": str(path)}})


def test_a_missing_wall_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(overrides={"server": {"wall_file": str(tmp_path / "none.json")}})


async def test_api_wall_serves_the_file_or_says_not_configured(
    gateway_factory: Callable[..., Any], tmp_path: Path
) -> None:
    path = tmp_path / "wall.json"
    path.write_text(json.dumps({"title": "T", "pages": [{"panels": [{"type": "grid"}]}]}))
    plain = await gateway_factory()
    configured = await gateway_factory(server={"wall_file": str(path)})
    status, _, body = await http_get(plain.port, "/api/wall")
    assert (status, orjson.loads(body)) == (200, {"configured": False})
    status, _, body = await http_get(configured.port, "/api/wall")
    assert status == 200
    assert orjson.loads(body) == {
        "title": "T",
        "pages": [{"panels": [{"type": "grid"}]}],
        "configured": True,
    }
