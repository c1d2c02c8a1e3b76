// What the values mean: the one place the wall asks for display names, units, decimals,
// ranges, alarms and history.
//
// The gateway's /api/meta (docs/protocol.md) gives display names, units, decimals and
// ranges; it is fetched once, and again when `welcome.meta.version` changes. Without it
// (or for what it does not say) everything is derived from the data:
//   display name: the topic's last level ("plant/line1/pump-3" -> "pump-3");
//   unit: unknown (shown as nothing, never guessed from the field's name);
//   decimals: from the value's magnitude;
//   fields: the numeric fields seen in the data, most common first;
//   state: offline / stale / normal from the gateway's flags, never from field names.
// Alarm states arrive as topics `$alarms/<rule>/<device topic>`: `isAlarmTopic` keeps
// them off the device grid, `alarmTopic` keeps them, `alarmOf` gives a device's worst
// active alarm (critical/major -> alarm, minor/warning -> warning). Chart history comes
// from `historySource` when one is set (the wall's: history.js, /api/history after the
// tiles), else as the subscription's `history` messages (`addHistory`, `historyDone`).

// severity rank: the worst alarm of a device decides its colour
export const SEVERITY = { critical: 4, major: 3, minor: 2, warning: 1 };
const FRESH_RAISE_S = 5; // an alarm first seen raised this recently is an event, not old news

export class Meta {
  constructor() {
    this.served = null; // the /api/meta document, once the gateway has one
    this.fieldCounts = new Map(); // numeric field -> devices that reported it
    this._seen = new Map(); // topic -> Set of numeric fields counted for it
    this._fieldsCache = null;
    this._fractional = new Set(); // fields seen with a non-integer value
    this._groups = new Map(); // level -> Map topic -> group
    this.version = null; // of the served metadata
    this._fieldInfo = new Map(); // field -> its first [[meta.fields]] rule
    this.alarms = new Map(); // alarm topic -> its fields (every alarm seen, normal included)
    this._byDevice = new Map(); // device topic -> Set of its alarm topics
    this.alarmsSeen = false; // an alarm topic has arrived: the gateway evaluates rules
    this._hist = new Map(); // topic -> {start, step, fields} from `history` messages
    this._histDone = null; // resolves at history_end
    this._histResolve = null;
    this.historySource = null; // (field, level) -> Promise {docs, sampled}
    this.historyReset();
  }

  // Fetch the gateway's metadata when it serves any; a 404 (today) keeps the derived
  // answers. Never throws: the wall works without it.
  async load(base = location.href, { token = null, url = "api/meta" } = {}) {
    try {
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      const res = await fetch(new URL(url.replace(/^\//, ""), base), { cache: "no-store", headers });
      if (res.ok) {
        const doc = await res.json();
        this.served = doc;
        this.version = doc.version ?? null;
        this._fieldInfo = new Map();
        for (const r of Array.isArray(doc.fields) ? doc.fields : []) {
          if (r && r.field && !this._fieldInfo.has(r.field)) this._fieldInfo.set(r.field, r);
        }
      }
    } catch {
      // keep what we had: the wall works without metadata
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
    // the gateway names an unnamed device by its topic: the last level reads better on a tile
    if (dev?.name && dev.name !== topic) return dev.name;
    const from = this.served?.name_field;
    if (from && st && typeof st.fields[from] === "string") return st.fields[from];
    const i = topic.lastIndexOf("/");
    return i < 0 ? topic : topic.slice(i + 1);
  }

  fieldLabel(field) {
    return this._fieldInfo.get(field)?.name || field;
  }

  unit(field) {
    return this._fieldInfo.get(field)?.unit || "";
  }

  // the configured range [min, max] of a field (both given), for its colour scale
  range(field) {
    const r = this._fieldInfo.get(field);
    return r && typeof r.min === "number" && typeof r.max === "number" && r.max > r.min ? [r.min, r.max] : null;
  }

  format(field, v) {
    if (typeof v !== "number" || !Number.isFinite(v)) return v == null ? "" : String(v);
    const d = this._fieldInfo.get(field)?.decimals;
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
  // A critical or major alarm comes first, offline and stale included (an "offline"
  // rule's alarm showed the offline look, not the alarm's: found by an outside check);
  // minor and warning come after offline and stale.
  state(topic, st) {
    if (!st) return "unknown";
    const alarm = this.alarmOf(topic);
    const major = alarm && (alarm.severity === "critical" || alarm.severity === "major");
    if (major) return "alarm";
    if (st.online === false) return "offline";
    if (st.stale) return "stale";
    if (alarm) return "warning";
    return "normal";
  }

  // The most severe active alarm of a device (its fields), or null.
  alarmOf(topic) {
    const mine = this._byDevice.get(topic);
    if (!mine) return null;
    let worst = null;
    for (const at of mine) {
      const a = this.alarms.get(at);
      if (a?.active && (!worst || (SEVERITY[a.severity] || 0) > (SEVERITY[worst.severity] || 0))) worst = a;
    }
    return worst;
  }

  // An alarm topic changed: keep it for alarmOf() and the alarm list, and return the
  // transition for the event list ({state: raised|acknowledged|cleared, topic, severity,
  // message, by}) or null. An alarm seen for the first time (a snapshot after load or
  // reconnect) is old news unless it was raised a moment ago.
  alarmTopic(topic, st) {
    const before = this.alarms.get(topic);
    const a = st ? { ...st.fields, alarm: topic } : null;
    if (!a) { this.alarms.delete(topic); return null; }
    this.alarms.set(topic, a);
    this.alarmsSeen = true;
    const device = a.topic || topic.split("/").slice(2).join("/");
    let mine = this._byDevice.get(device);
    if (!mine) this._byDevice.set(device, (mine = new Set()));
    mine.add(topic);
    const ev = (state, by = "") => ({ state, topic: a.device || device, severity: a.severity || "",
                                      message: a.message || "", by });
    if (!before) {
      return a.active && Date.now() / 1000 - (a.raised_at || 0) < FRESH_RAISE_S ? ev("raised") : null;
    }
    if (a.active && (!before.active || before.raised_at !== a.raised_at)) return ev("raised");
    if (a.acked_by && a.acked_at !== before.acked_at) return ev("acknowledged", a.acked_by);
    if (before.active && !a.active) return ev("cleared");
    return null;
  }

  // The alarms to list: not normal, then the cleared that were acknowledged (most
  // recent first, at most `cleared`); active first, then by severity and newest raise.
  alarmList(cleared = 10) {
    const open = [];
    const done = [];
    for (const a of this.alarms.values()) (a.state === "normal" ? done : open).push(a);
    const bySev = (a, b) => (b.active - a.active) || ((SEVERITY[b.severity] || 0) - (SEVERITY[a.severity] || 0)) ||
      ((b.raised_at || 0) - (a.raised_at || 0));
    open.sort(bySev);
    done.sort((a, b) => (b.cleared_at || 0) - (a.cleared_at || 0));
    return open.concat(done.slice(0, cleared));
  }

  // -- history -------------------------------------------------------------------------
  historyReset() {
    this._hist.clear();
    this._histDone = new Promise((resolve) => { this._histResolve = resolve; });
  }

  addHistory(m) {
    this._hist.set(m.topic, m);
  }

  historyDone() {
    this._histResolve?.(true);
  }

  // History for a trend chart of `field` grouped by `level` topic levels, to fill it on
  // load: {times: [...], groups: {name: {avg, min, max}}, sampled: {group: [asked,
  // devices]}}, or null when none arrives (within `waitMs` for pushed history). Per
  // device, a bucket without a change (null) holds the last value before it (the device
  // kept it); avg is the mean of the devices' last values.
  async history(field, level, waitMs = 5000) {
    let docs;
    let sampled = {};
    if (this.historySource) {
      ({ docs, sampled } = await this.historySource(field, level));
    } else {
      let timer;
      const done = await Promise.race([this._histDone,
        new Promise((resolve) => { timer = setTimeout(() => resolve(false), waitMs); })]);
      clearTimeout(timer);
      if (!done) return null;
      docs = this._hist.values();
    }
    const buckets = new Map(); // time -> Map group -> [sum, n, min, max]
    for (const h of docs) {
      const topic = h.topic;
      const f = h.fields?.[field];
      if (!f) continue;
      const g = this.group(topic, level);
      let held = null;
      for (let i = 0; i < f.last.length; i++) {
        if (f.last[i] !== null) held = f.last[i];
        if (held === null) continue;
        const t = Math.round((h.start + i * h.step) * 1000) / 1000;
        let row = buckets.get(t);
        if (!row) buckets.set(t, (row = new Map()));
        let acc = row.get(g);
        if (!acc) row.set(g, (acc = [0, 0, Infinity, -Infinity]));
        acc[0] += held; acc[1] += 1;
        acc[2] = Math.min(acc[2], f.min[i] ?? held);
        acc[3] = Math.max(acc[3], f.max[i] ?? held);
      }
    }
    if (!buckets.size) return null;
    const times = [...buckets.keys()].sort((a, b) => a - b);
    const names = new Set();
    for (const row of buckets.values()) for (const g of row.keys()) names.add(g);
    const groups = {};
    for (const g of names) {
      const s = { avg: [], min: [], max: [] };
      for (const t of times) {
        const acc = buckets.get(t).get(g);
        s.avg.push(acc ? acc[0] / acc[1] : null);
        s.min.push(acc ? acc[2] : null);
        s.max.push(acc ? acc[3] : null);
      }
      groups[g] = s;
    }
    return { times, groups, sampled };
  }
}
