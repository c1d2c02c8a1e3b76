"""The admin port's ``/walls`` page: every wall, the worst first, with its actions.

Three static files (no inline script or style: ``PAGE_CSP`` allows only these); the
page reads ``/api/walls`` every 2 s and posts actions to ``/api/walls/action`` with
the operator's token from the URL fragment (``/walls#token=...``), which never
reaches a server log. Every value is written as text, never as markup."""

# ruff: noqa: E501  (the page's own files, kept as they are served)
from __future__ import annotations

from typing import Final

__all__ = ["PAGE_CSP", "WALLS_CSS", "WALLS_HTML", "WALLS_JS"]

PAGE_CSP: Final = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

WALLS_HTML: Final = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Walls</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/walls.css">
<script type="module" src="/walls.js"></script>
</head>
<body>
<h1>Walls</h1>
<p id="summary" role="status">loading</p>
<table>
<thead><tr><th>state</th><th>wall</th><th>why</th><th>transport</th><th>page</th>
<th>behind</th><th>data age</th><th>fps</th><th>slowest frame</th><th>heap</th>
<th>visible</th><th>reconnects</th><th>trouble</th><th>last heard</th><th>last action</th>
<th>actions</th></tr></thead>
<tbody id="walls"></tbody>
</table>
<p id="result" role="status"></p>
</body>
</html>
"""

WALLS_CSS: Final = b"""body { font: 14px system-ui, sans-serif; margin: 1em; background: #111; color: #ddd; }
table { border-collapse: collapse; width: 100%; }
th, td { padding: 4px 6px; border-bottom: 1px solid #333; text-align: left; }
tr[data-state="gone"] td:first-child { background: #6b1d1d; }
tr[data-state="stale"] td:first-child { background: #7a4b00; }
tr[data-state="lagging"] td:first-child { background: #806b00; }
tr[data-state="hidden"] td:first-child { background: #3a4350; }
tr[data-state="healthy"] td:first-child { background: #1d5b2a; }
button { margin-right: 4px; }
"""

WALLS_JS: Final = b"""// The wall registry, listed every 2 s; actions posted with the token of #token=.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const $ = (id) => document.getElementById(id);
const fmt = (v, unit = "", digits = 1) =>
  v === null || v === undefined ? "" : `${Number(v).toFixed(digits)}${unit}`;

async function act(wall, action, extra = {}) {
  const q = new URLSearchParams({ wall, action, ...extra });
  const headers = token ? { Authorization: `Bearer ${token}` } : {};
  const res = await fetch(`/api/walls/action?${q}`, { method: "POST", headers });
  const body = await res.json().catch(() => ({}));
  $("result").textContent = res.ok ? `${action} sent to ${wall} (${body.id})`
    : `${action} on ${wall} refused: ${body.message || res.status}`;
  refresh();
}

function button(label, onclick) {
  const b = document.createElement("button");
  b.textContent = label;
  b.dataset.action = label;
  b.onclick = onclick;
  return b;
}

function row(w) {
  const tr = document.createElement("tr");
  tr.dataset.state = w.state;
  tr.dataset.wall = w.name;
  const last = w.actions.length ? w.actions[w.actions.length - 1] : null;
  const cells = [w.state, w.name, w.why, w.transport || "", w.page || "",
    w.behind_seq ? `${w.behind_s.toFixed(1)} s (${w.behind_seq} changes)` : "0",
    fmt(w.data_age_s, " s"), fmt(w.fps), fmt(w.slowest_frame_ms, " ms", 0),
    w.heap_bytes ? `${(w.heap_bytes / 1048576).toFixed(1)} MiB` : "",
    w.visible === false ? "no" : "yes", String(w.reconnects ?? ""), w.trouble || "",
    `${w.heard_s_ago.toFixed(0)} s ago`,
    last ? `${last.action} ${last.id}: ${last.status}${last.detail ? ` (${last.detail})` : ""}` : ""];
  for (const text of cells) {
    const td = document.createElement("td");
    td.textContent = text;
    tr.append(td);
  }
  const td = document.createElement("td");
  if (w.connected) {
    td.append(
      button("reload", () => act(w.name, "reload")),
      button("page", () => { const p = prompt("page name or number"); if (p) act(w.name, "page", { page: p }); }),
      button("banner", () => {
        const t = prompt("banner text (empty: remove)");
        if (t !== null) act(w.name, "banner", { text: t, ttl_s: "600" });
      }));
  }
  tr.append(td);
  return tr;
}

async function refresh() {
  try {
    const res = await fetch("/api/walls", { cache: "no-store" });
    const doc = await res.json();
    $("walls").replaceChildren(...doc.walls.map(row));
    $("summary").textContent = Object.entries(doc.counts).map(([s, n]) => `${s} ${n}`).join(" \\u00b7 ");
  } catch (err) {
    $("summary").textContent = `cannot read /api/walls: ${err}`;
  }
}
refresh();
setInterval(refresh, 2000);
"""
