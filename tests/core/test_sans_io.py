"""The core must stay sans-io: no I/O library, no event loop, no clock."""

import ast
import pathlib

import gateway.core

FORBIDDEN = {
    "trio",
    "trio_websocket",
    "wsproto",
    "h11",
    "paho",
    "socket",
    "ssl",
    "asyncio",
    "time",
    "datetime",
    "os",
    "selectors",
    "threading",
    "subprocess",
    "random",
    "secrets",
    "prometheus_client",
    "logging",
}


def imported_modules(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_core_imports_no_io_or_clock_module() -> None:
    core = pathlib.Path(gateway.core.__file__).parent
    files = sorted(core.glob("*.py"))
    assert len(files) >= 6, files
    offenders = {
        f.name: sorted(imported_modules(f) & FORBIDDEN)
        for f in files
        if imported_modules(f) & FORBIDDEN
    }
    assert offenders == {}


def test_the_guard_itself_detects_a_forbidden_import(tmp_path: pathlib.Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import time\nfrom trio import sleep\n")
    assert imported_modules(bad) & FORBIDDEN == {"time", "trio"}
