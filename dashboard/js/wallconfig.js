// The wall's description: from the gateway's /api/wall (a file named by the gateway's
// configuration, docs in dashboard/README.md), else the automatic wall below. URL
// parameters override a few keys for kiosk use (title, filter, grace).

export const PANEL_TYPES = ["kpis", "grid", "trend", "worst", "alarms", "events"];

export const AUTOMATIC = {
  title: "Telemetry wall",
  filter: "#",
  pages: [{
    name: "All devices",
    panels: [
      { type: "kpis" },
      { type: "grid", level: 1, field: "auto" },
      { type: "trend", level: 1, field: "auto", max: 6 },
      { type: "worst", field: "auto", rows: 6 },
      { type: "alarms" },
      { type: "events" },
    ],
  }],
};

export async function loadWall(params) {
  let wall = null;
  if (params.get("wall") !== "auto") {
    try {
      const res = await fetch(new URL("api/wall", location.href), { cache: "no-store" });
      if (res.ok) {
        const doc = await res.json();
        if (doc && Array.isArray(doc.pages) && doc.pages.length) wall = doc;
      }
    } catch {
      wall = null;
    }
  }
  const configured = !!wall;
  wall = structuredClone(wall || AUTOMATIC);
  wall.configured = configured;
  for (const key of ["title", "filter"]) if (params.get(key)) wall[key] = params.get(key);
  for (const key of ["grace_s", "warn_s", "bad_s", "rotate_s"]) {
    const v = params.get(key.replace(/_s$/, ""));
    if (v !== null && Number.isFinite(Number(v))) wall[key] = Number(v);
  }
  wall.filter ||= "#";
  for (const page of wall.pages) {
    page.name ||= wall.title;
    page.panels = (page.panels || []).filter((p) => PANEL_TYPES.includes(p.type));
  }
  return wall;
}

// MQTT-style topic filter match (`+` one level, `#` the rest).
export function matches(filter, topic) {
  if (!filter || filter === "#") return true;
  const f = filter.split("/"), t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return true;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
