"""The wall's static files: an allowlist by rule, and the headers a wall page needs.

Rules:
* Served: ``index.html`` and ``*.css`` at the dashboard root, ``js/*.js``, and the
  chart library's built files (``node_modules/uplot/dist/*.js|css``); nothing else
  (no README, package.json, other ``node_modules``, dotfiles), and only regular
  files that resolve inside the root (no traversal, no symlink escapes).
* Every answer carries a Content-Security-Policy without inline script,
  ``frame-ancestors`` from ``server.frame_ancestors``, ``Referrer-Policy:
  no-referrer`` and ``nosniff`` (http.py).
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

__all__ = ["security_headers", "static_file"]

mimetypes.add_type("text/javascript", ".js")
mimetypes.add_type("text/javascript", ".mjs")

ALLOWED = re.compile(
    r"index\.html|[A-Za-z0-9_-]+\.css|js/[A-Za-z0-9_-]+\.js"
    r"|node_modules/uplot/dist/[A-Za-z0-9_.-]+\.(?:js|css)"
)


def security_headers(frame_ancestors: str) -> list[tuple[bytes, bytes]]:
    csp = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        f"frame-ancestors {frame_ancestors}"
    )
    headers = [
        (b"content-security-policy", csp.encode()),
        (b"referrer-policy", b"no-referrer"),
    ]
    if frame_ancestors.strip() == "'none'":
        headers.append((b"x-frame-options", b"DENY"))  # for browsers without CSP 2
    return headers


def static_file(root: Path, path: str) -> tuple[bytes, bytes] | None:
    """(body, content type) of an allowed file below ``root``, or None."""
    rel = path.lstrip("/") or "index.html"
    if "\x00" in rel or ".." in rel.split("/") or not ALLOWED.fullmatch(rel):
        return None
    try:
        root_real = root.resolve(strict=True)
        target = (root_real / rel).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root_real) or not target.is_file():
        return None
    ctype = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if ctype.startswith("text/"):
        ctype += "; charset=utf-8"
    try:
        return target.read_bytes(), ctype.encode()
    except OSError:
        return None
