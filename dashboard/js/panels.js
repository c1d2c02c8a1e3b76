// The small panels: KPI row, worst devices, alarm list. Each renders from plain data
// once a second (or when the honesty state changes); none keeps history.

import { fmtAge } from "./health.js";

const RANK = { alarm: 0, warning: 1, offline: 2, stale: 3, normal: 4, unknown: 5 };

export class KpiRow {
  constructor(el, { alarms = false } = {}) {
    this.el = el;
    el.classList.add("kpis");
    const items = [["total", "devices", ""], ["online", "online", "ok"], ["offline", "offline", "bad"],
                   ["stale", "stale", "warn"], ...(alarms ? [["alarms", "alarms", "bad"]] : []),
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

  // stats: {total, online, offline, stale, alarms, rate}; age in s or null; unknown:
  // the wall cannot vouch for the counts (shown as "?", not as the last numbers)
  render(stats, age, unknown) {
    const set = (k, v) => { if (this.spans[k] && this.spans[k].textContent !== v) this.spans[k].textContent = v; };
    for (const k of ["total", "online", "offline", "stale", "alarms"]) {
      set(k, unknown ? "?" : String(stats[k] ?? 0));
    }
    set("age", age === null ? "?" : fmtAge(age));
    set("rate", unknown ? "?" : String(stats.rate ?? 0));
    this.el.classList.toggle("unknown", unknown);
  }
}

export class WorstTable {
  constructor(el, { rows = 8 } = {}) {
    this.rows = rows;
    el.classList.add("worst");
    const h = document.createElement("h2");
    this.h = h;
    this.table = document.createElement("table");
    el.append(h, this.table);
  }

  // rows: [topic, st, state]; the worst `rows` by state, then by the highest value of
  // `field`, chosen in one pass (no sort of the fleet); `describe(topic)` gives
  // {name, group, text, unit} for the few shown.
  render(rows, field, describe) {
    this.h.textContent = field ? `Worst devices (state, then highest ${field})` : "Worst devices";
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
  }
}

export class AlarmList {
  constructor(el, { meta }) {
    this.meta = meta;
    el.classList.add("alarms");
    const h = document.createElement("h2");
    h.textContent = "Alarms";
    this.list = document.createElement("ol");
    el.append(h, this.list);
  }

  render() {
    const alarms = this.meta.served?.alarms;
    if (!alarms) {
      if (!this.list.dataset.empty) {
        this.list.dataset.empty = "1";
        this.list.innerHTML = "<li class=\"note\">This gateway evaluates no alarm rules yet: " +
          "device states (offline, stale) are on the grid.</li>";
      }
      return;
    }
    delete this.list.dataset.empty;
    const items = Object.entries(alarms).sort((a, b) => (a[1].active === b[1].active ? 0 : a[1].active ? -1 : 1));
    this.list.replaceChildren(...items.map(([topic, a]) => {
      const li = document.createElement("li");
      li.className = a.severity || "";
      li.textContent = `${a.severity || ""} ${this.meta.displayName(topic)} ${a.message || ""}`;
      return li;
    }));
  }
}
