// What the values mean: the one place the wall asks for display names, units, decimals,
// ranges, thresholds, alarms and history.
//
// Today the gateway serves none of these, so everything is derived from the data:
//   display name: the topic's last level ("plant/line1/pump-3" -> "pump-3");
//   unit: unknown (shown as nothing, never guessed from the field's name);
//   decimals: from the value's magnitude;
//   fields: the numeric fields seen in the data, most common first;
//   state: offline / stale / normal from the gateway's flags, never from field names.
// When the gateway serves /api/meta (device and field metadata, alarm states, history),
// `load()` fetches it and the same functions answer from it; nothing else in the wall
// changes. Alarm states arrive as topics in a reserved namespace: `isAlarmTopic` keeps
// them off the device grid and `alarmOf` is where the grid asks for a device's alarm.

export class Meta {
  constructor() {
    this.served = null; // the /api/meta document, once the gateway has one
    this.fieldCounts = new Map(); // numeric field -> devices that reported it
    this._seen = new Map(); // topic -> Set of numeric fields counted for it
    this._fieldsCache = null;
    this._fractional = new Set(); // fields seen with a non-integer value
    this._groups = new Map(); // level -> Map topic -> group
  }

  // Fetch the gateway's metadata when it serves any; a 404 (today) keeps the derived
  // answers. Never throws: the wall works without it.
  async load(base = location.href) {
    try {
      const res = await fetch(new URL("api/meta", base), { cache: "no-store" });
      if (res.ok) this.served = await res.json();
    } catch {
      this.served = null;
    }
    return this.served;
  }

  isAlarmTopic(topic) {
    return topic.startsWith("$");
  }

  // Learn the numeric fields of a device from its current state (called on change).
  observe(topic, st) {
    let seen = this._seen.get(topic);
    if (!seen) this._seen.set(topic, (seen = new Set()));
    if (!st) { // gone: forget its fields
      for (const f of seen) this._count(f, -1);
      this._seen.delete(topic);
      for (const cache of this._groups.values()) cache.delete(topic);
      return;
    }
    const fields = st.fields;
    for (const f in fields) { // no allocation: this runs for every update
      const v = fields[f];
      if (typeof v !== "number") continue;
      if (!seen.has(f)) { seen.add(f); this._count(f, 1); }
      if (!Number.isInteger(v)) this._fractional.add(f);
    }
  }

  _count(field, d) {
    const n = (this.fieldCounts.get(field) || 0) + d;
    if (n > 0) this.fieldCounts.set(field, n); else this.fieldCounts.delete(field);
    this._fieldsCache = null;
  }

  // Numeric fields, the most widely reported first (then by name): the selector's list.
  fields() {
    if (!this._fieldsCache) {
      this._fieldsCache = [...this.fieldCounts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))
        .map(([f]) => f);
    }
    return this._fieldsCache;
  }

  displayName(topic, st) {
    const dev = this.served?.devices?.[topic];
    if (dev?.name) return dev.name;
    const from = this.served?.name_field;
    if (from && st && typeof st.fields[from] === "string") return st.fields[from];
    const i = topic.lastIndexOf("/");
    return i < 0 ? topic : topic.slice(i + 1);
  }

  fieldLabel(field) {
    return this.served?.fields?.[field]?.name || field;
  }

  unit(field) {
    return this.served?.fields?.[field]?.unit || "";
  }

  range(field) {
    const r = this.served?.fields?.[field]?.range;
    return Array.isArray(r) && r.length === 2 ? r : null;
  }

  format(field, v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return v == null ? "" : String(v);
    const d = this.served?.fields?.[field]?.decimals;
    if (Number.isInteger(d)) return v.toFixed(d);
    // derived: integers stay integers unless the field has had fractions (then 4 -> 4.00,
    // so a column of values lines up); fewer decimals as the magnitude grows
    const a = Math.abs(v);
    if (a >= 1000 || !this._fractional.has(field)) return String(Math.round(v));
    return a >= 10 ? v.toFixed(1) : v.toFixed(2);
  }

  // The group of a topic: its first `level` levels (1: "plant"); cached, as charts ask
  // for every device every second (entries go with the device, see observe)
  group(topic, level = 1) {
    let cache = this._groups.get(level);
    if (!cache) this._groups.set(level, (cache = new Map()));
    let g = cache.get(topic);
    if (g === undefined) {
      const parts = topic.split("/");
      g = parts.slice(0, Math.min(level, Math.max(1, parts.length - 1))).join("/");
      cache.set(topic, g);
    }
    return g;
  }

  // normal | warning | alarm | offline | stale: the device's state from the gateway's
  // flags and, once served, its alarms. No thresholds are invented here.
  state(topic, st) {
    if (!st) return "unknown";
    if (st.online === false) return "offline";
    if (st.stale) return "stale";
    const alarm = this.alarmOf(topic);
    if (alarm) return alarm.severity === "warning" ? "warning" : "alarm";
    return "normal";
  }

  // The most severe active alarm of a device: {severity, message} or null. Filled from
  // the gateway's alarm topics once it has them (issue 17's `$alarms/...`).
  alarmOf(topic) {
    return this.served?.alarms?.[topic] || null;
  }

  // An alarm topic changed (issue 17's `$alarms/<rule>/<device topic>`): keep the
  // device's alarm for alarmOf() and return the transition for the event list
  // ({state: raised|acknowledged|cleared, topic, severity, message, by}) or null. The
  // gateway has no alarm topics yet, so this returns null until their format exists.
  alarmTopic(_topic, _st) {
    return null;
  }

  // History for a trend chart of `field` grouped by `level` topic levels, to fill it on
  // load: {times: [...], groups: {name: {avg: [...], min: [...], max: [...]}}}, or null
  // while the gateway serves none (issue 17's /api/history).
  async history(_field, _level) {
    return null;
  }
}
