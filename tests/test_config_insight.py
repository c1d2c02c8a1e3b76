"""The [meta], [[alarms.rules]] and [history] sections: examples load, errors name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, load_names

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_documented_examples_load(tmp_path: Path) -> None:
    blocks = re.findall(r"```toml\n(.*?)```", (DOCS / "alarms.md").read_text(), re.S)
    loaded = 0
    for i, block in enumerate(blocks):
        path = tmp_path / f"{i}.toml"
        path.write_text(block)
        if "not valid" in block:
            with pytest.raises(ConfigError, match=r"alarms\.rules\[0\]\.filter"):
                load_config(path)
            continue
        assert load_config(path).alarms.rules
        loaded += 1
    assert loaded >= 2


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[[alarms.rules]]\nname = "x"\nfilter = "#"\n',
            r"alarms\.rules\[0\]\.condition: required",
        ),
        (
            '[[alarms.rules]]\nname = "x"\nfilter = "#"\ncondition = "high"\nfield = "t"\n',
            r"alarms\.rules\[0\]\.threshold",
        ),
        (
            '[[alarms.rules]]\nname = "x"\nfilter = "#"\ncondition = "stale"\n'
            '[[alarms.rules]]\nname = "x"\nfilter = "a"\ncondition = "stale"\n',
            r"alarms\.rules\[1\]\.name: 'x' is used",
        ),
        (
            '[[meta.fields]]\nfilter = "#"\nfield = "t"\ndecimals = "2"\n',
            r"meta\.fields\[0\]\.decimals",
        ),
        ("[meta.groups]\nsite = -1\n", r"meta\.groups\.site"),
        ("[history]\nresolution_s = 0\n", r"history\.resolution_s"),
        ("[history]\nwindow_s = 1e9\n", r"history\.window_s"),
        ('[meta]\nnames_file = "/nonexistent/names.toml"\n', r"meta\.names_file"),
        ("[state]\nstale_multiple = 0.5\n", r"state\.stale_multiple"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_names_file_and_inline_names(tmp_path: Path) -> None:
    registry = tmp_path / "names.json"
    registry.write_text('{"plant/a/1": "Oven 1", "plant/a/2": "Oven 2"}')
    path = tmp_path / "gw.toml"
    path.write_text(f'[meta]\nnames_file = "{registry}"\n[meta.names]\n"plant/a/2" = "Press"\n')
    assert load_names(load_config(path).meta) == {"plant/a/1": "Oven 1", "plant/a/2": "Press"}
