// The small panels: KPI row, worst devices, alarm list. Each renders from plain data
// once a second (or when the honesty state changes); none keeps history.

import { fmtAge, fmtClock } from "./health.js";

const SEVERITIES = ["critical", "major", "minor", "warning"]; // active alarms, per KPI
const RANK = { alarm: 0, warning: 1, offline: 2, stale: 3, normal: 4, unknown: 5 };

export class KpiRow {
  constructor(el, { alarms = false } = {}) {
    this.el = el;
    el.classList.add("kpis");
    const items = [["total", "devices", ""], ["online", "online", "ok"], ["offline", "offline", "bad"],
                   ["nopresence", "no presence", ""], ["stale", "stale", "warn"],
                   ...(alarms ? SEVERITIES.map((k) => [k, k, `sev-${k}`]) : []),
                   ["age", "data age", ""], ["rate", "updates/s", ""]];
    this.spans = {};
    for (const [key, label, cls] of items) {
      const d = document.createElement("div");
      d.className = `kpi ${cls}`;
      d.dataset.kpi = key;
      const v = document.createElement("span");
      v.textContent = "?";
      const l = document.createElement("label");
      l.textContent = label;
      d.append(v, l);
      el.append(d);
      this.spans[key] = v;
    }
  }

  // stats: {total, online, offline, nopresence, stale, critical, major, minor, warning,
  // rate}; age in s
  // or null; unknown:
  // the wall cannot vouch for the counts (shown as "?", not as the last numbers)
  render(stats, age, unknown) {
    const set = (k, v) => { if (this.spans[k] && this.spans[k].textContent !== v) this.spans[k].textContent = v; };
    for (const k of ["total", "online", "offline", "nopresence", "stale", ...SEVERITIES]) {
      set(k, unknown ? "?" : String(stats[k] ?? 0));
    }
    // devices that report no presence (no online/offline messages) are counted apart,
    // as the gateway counts them; the count is shown only when there are some
    const none = this.spans.nopresence?.parentElement;
    if (none) none.hidden = !unknown && !stats.nopresence;
    set("age", age === null ? "?" : fmtAge(age));
    set("rate", unknown ? "?" : String(stats.rate ?? 0));
    this.el.classList.toggle("unknown", unknown);
  }
}

// What of `items` (elements in `box`, in order) fits in `box`: the elements that would
// be cut at its bottom edge are removed (a half-shown row reads as something else),
// and the count removed is returned for the panel's title to say. One layout read per
// render; renders follow data (alarms, the once-a-second tick), not frames.
function keepWhatFits(box, items) {
  const bottom = box.getBoundingClientRect().bottom + 0.5;
  let cut = items.findIndex((el) => el.getBoundingClientRect().bottom > bottom);
  if (cut < 0) return 0;
  const gone = items.length - cut;
  for (; cut < items.length; cut++) items[cut].remove();
  return gone;
}

export class WorstTable {
  constructor(el, { rows = 8 } = {}) {
    this.rows = rows;
    el.classList.add("worst");
    const h = document.createElement("h2");
    this.h = h;
    this.table = document.createElement("table");
    this.box = el; // the panel: its bottom edge is where rows stop fitting
    el.append(h, this.table);
    this._last = null; // the last render's arguments: a resized panel renders them again
    if (typeof ResizeObserver !== "undefined") {
      new ResizeObserver(() => { if (this._last) this.render(...this._last); }).observe(el);
    }
  }

  // rows: [topic, st, state]; the worst `rows` by state, then by the highest value of
  // `field`, chosen in one pass (no sort of the fleet); `describe(topic)` gives
  // {name, group, text, unit} for the few shown.
  render(rows, field, describe) {
    this._last = [rows, field, describe];
    const title = field ? `Worst devices (state, then highest ${field})` : "Worst devices";
    const top = []; // [rank, value, topic, state], best first, at most this.rows
    const worse = (a, b) => a[0] < b[0] || (a[0] === b[0] && a[1] > b[1]);
    for (const [topic, st, state] of rows) {
      const v = field ? st.fields[field] : undefined;
      const cand = [RANK[state] ?? 5, typeof v === "number" ? v : -Infinity, topic, state];
      if (top.length === this.rows && !worse(cand, top[top.length - 1])) continue;
      let i = top.length;
      while (i > 0 && worse(cand, top[i - 1])) i--;
      top.splice(i, 0, cand);
      if (top.length > this.rows) top.pop();
    }
    const html = document.createDocumentFragment();
    for (const [, , topic, state] of top) {
      const it = describe(topic);
      const tr = document.createElement("tr");
      tr.className = state;
      const value = state === "unknown" ? "?" : `${it.text}${it.unit && it.text ? ` ${it.unit}` : ""}`;
      for (const text of [it.name, it.group, value, state]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      html.append(tr);
    }
    this.table.replaceChildren(html);
    const cut = keepWhatFits(this.box, [...this.table.rows]);
    this.h.textContent = cut ? `${title}: the worst ${top.length - cut} that fit` : title;
  }
}

// The alarm list: active first (then by severity and newest raise), the cleared after;
// each with its severity colour, raise time and value, message and state, and an
// "Acknowledge" button while it waits for one. The gateway decides who may acknowledge:
// a refusal (ack_not_allowed) is shown on the entry, not hidden.
const STATE_TEXT = { active_unacked: "active, unacknowledged", active_acked: "active, acknowledged",
                     cleared_unacked: "cleared, unacknowledged", normal: "cleared" };
const MAX_SHOWN = 30;

export class AlarmList {
  constructor(el, { meta, ack = null }) {
    this.meta = meta;
    this.ack = ack;
    this.refused = new Map(); // alarm topic -> the gateway's refusal text
    this.pending = new Set(); // alarm topics with an acknowledgement under way
    el.classList.add("alarms");
    const h = document.createElement("h2");
    h.textContent = "Alarms";
    this.h = h;
    this.list = document.createElement("ol");
    this.box = el;
    el.append(h, this.list);
    // a resized panel shows more or fewer: count them again
    if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => this.render()).observe(el);
  }

  render() {
    if (!this.meta.alarmsSeen) {
      if (!this.list.dataset.empty) {
        this.list.dataset.empty = "1";
        this.list.innerHTML = "<li class=\"note\">No alarms (the gateway's alarm rules have raised none).</li>";
      }
      return;
    }
    delete this.list.dataset.empty;
    const all = this.meta.alarmList();
    const items = all.slice(0, MAX_SHOWN).map((a) => this._item(a));
    this.list.replaceChildren(...items);
    // never hide an alarm silently: what does not fit is counted in the title
    const hidden = all.length - items.length + keepWhatFits(this.box, items);
    const active = all.filter((a) => a.active).length;
    const unacked = all.filter((a) => !a.acked).length;
    // one line (style.css): what is not shown first, where an ellipsis cannot take it
    let title = `Alarms: ${active} active, ${unacked} unacknowledged`;
    if (hidden) {
      const shown = new Set(items.filter((li) => li.isConnected).map((li) => li.dataset.alarm));
      const moreActive = all.filter((a) => !shown.has(a.alarm) && a.active).length;
      title = `Alarms: +${hidden} not shown (${moreActive} active); ${active} active, ${unacked} unacknowledged`;
    }
    this.h.textContent = title;
    this.h.dataset.hidden = String(hidden);
  }

  _item(a) {
    const li = document.createElement("li");
    li.className = `alarm sev-${a.severity || "warning"} ${a.state}`;
    li.dataset.alarm = a.alarm;
    li.dataset.state = a.state;
    const time = a.raised_at ? fmtClock(a.raised_at * 1000) : "";
    const value = typeof a.raised_value === "number" ? ` at ${this.meta.format(a.field, a.raised_value)}` +
      `${this.meta.unit(a.field) ? ` ${this.meta.unit(a.field)}` : ""}` : "";
    const who = a.acked_by ? ` by ${a.acked_by}` : "";
    const head = document.createElement("div");
    const who2 = a.device || a.topic; // the message names the device already when it says so
    const what = a.message && a.message.includes(who2) ? a.message : `${who2}: ${a.message || a.rule}`;
    head.textContent = `${(a.severity || "").toUpperCase()} ${what}`;
    const sub = document.createElement("small");
    sub.textContent = `raised ${time}${value} · ${STATE_TEXT[a.state] || a.state}${who}`;
    li.append(head, sub);
    if (this.ack && !a.acked) {
      const b = document.createElement("button");
      b.textContent = this.pending.has(a.alarm) ? "Acknowledging…" : "Acknowledge";
      b.disabled = this.pending.has(a.alarm);
      b.onclick = () => this._ack(a.alarm);
      li.append(b);
    }
    const refusal = this.refused.get(a.alarm);
    if (refusal) {
      const r = document.createElement("p");
      r.className = "refused";
      r.setAttribute("role", "alert");
      r.textContent = refusal;
      li.append(r);
    }
    return li;
  }

  async _ack(alarm) {
    this.pending.add(alarm);
    this.refused.delete(alarm);
    this.render();
    const answer = await this.ack([alarm]);
    this.pending.delete(alarm);
    if (!answer.ok) {
      const why = answer.code === "ack_not_allowed" ? "not allowed: this screen's token may not acknowledge alarms"
        : answer.code === "timeout" ? "no answer from the gateway" : `${answer.code}: ${answer.message || ""}`;
      this.refused.set(alarm, `Acknowledge refused (${why})`);
    }
    this.render();
  }
}
