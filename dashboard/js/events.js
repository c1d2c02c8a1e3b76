// Events a person can read: device transitions are collected for a moment and written
// as one line per kind ("500 devices came online: berlin 250, paris 250"), never one
// line per device in a burst. Connection changes are single lines. Alarm transitions
// (raised, acknowledged, cleared) come through `alarm()` once the gateway has alarms.
// The list keeps the last MAX entries: memory does not grow with time.

import { fmtClock } from "./health.js";

const MAX = 40;
const FLUSH_MS = 1000;
const VERB = { online: "came online", offline: "went offline", stale: "went stale",
               fresh: "are reporting again", appeared: "appeared", gone: "were removed" };
const VERB_ONE = { online: "is online", offline: "is offline", stale: "is stale",
                   fresh: "is reporting again", appeared: "appeared", gone: "was removed" };
const CLS = { online: "ok", fresh: "ok", appeared: "", offline: "bad", stale: "warn", gone: "" };

export class EventLog {
  constructor(el, { groupOf }) {
    this.el = el;
    this.groupOf = groupOf;
    this.pending = new Map(); // kind -> [topics]
    this.timer = null;
  }

  // A device changed from `before` to `now` (online|offline|stale|gone, or undefined
  // for a device seen the first time).
  transition(topic, before, now) {
    let kind;
    if (before === undefined) kind = "appeared";
    else if (now === "gone") kind = "gone";
    else if (now === "online" && before === "stale") kind = "fresh";
    else kind = now;
    let list = this.pending.get(kind);
    if (!list) this.pending.set(kind, (list = []));
    list.push(topic);
    this.timer ??= setTimeout(() => this.flush(), FLUSH_MS);
  }

  flush() {
    this.timer = null;
    for (const [kind, topics] of this.pending) {
      if (topics.length === 1) {
        this.add(`${topics[0]} ${VERB_ONE[kind]}`, CLS[kind]);
        continue;
      }
      const by = new Map();
      for (const t of topics) { const g = this.groupOf(t); by.set(g, (by.get(g) || 0) + 1); }
      const parts = [...by].sort((a, b) => b[1] - a[1]);
      const shown = parts.slice(0, 4).map(([g, n]) => `${g} ${n}`).join(", ");
      const more = parts.length > 4 ? `, ${parts.length - 4} more groups` : "";
      this.add(`${topics.length} devices ${VERB[kind]}: ${shown}${more}`, CLS[kind]);
    }
    this.pending.clear();
  }

  // Alarm transitions (issue 17): {state: raised|acknowledged|cleared, topic, severity,
  // message, by}
  alarm({ state, topic, severity = "", message = "", by = "" }) {
    const who = by ? ` by ${by}` : "";
    // a rule's message names its device already ("{device}: ..."): once is enough
    const what = message && message.includes(topic) ? message : `${topic} ${message}`;
    this.add(`${severity} alarm ${state}${who}: ${what}`.trim(),
             state === "raised" ? "bad" : state === "cleared" ? "ok" : "warn");
  }

  add(text, cls = "") {
    const li = document.createElement("li");
    li.className = cls;
    const time = document.createElement("time");
    time.textContent = fmtClock(Date.now());
    li.append(time, document.createTextNode(` ${text}`));
    this.el.insertBefore(li, this.el.firstChild);
    while (this.el.children.length > MAX) this.el.lastChild.remove();
  }
}
