// Honesty: what the wall can vouch for.
//
// Trouble is any of: the connection to the gateway is not open; the gateway says it is
// not ready (/readyz 503: its data source, the MQTT broker, is down); every device is
// stale. From the moment trouble starts a full-width banner says since when and how old
// the newest data is. After the grace period (`grace_s`, default 10 s; a reconnect
// within it is routine and does not blank the wall) the wall shows "unknown": tiles,
// KPIs and chart samples, never the last values as if they were live. The header's
// colour follows the newest data's age: fresh below `warn_s` (default 5 s), late below
// `bad_s` (default 30 s), old beyond, and old whenever there is trouble.

const READY_POLL_MS = 5000;
const EMPTY_MS = 5000;

export class Health extends EventTarget {
  constructor(client, { grace_s = 10, warn_s = 5, bad_s = 30, readyUrl = "readyz" } = {}) {
    super();
    this.client = client;
    this.grace = grace_s * 1000;
    this.warn = warn_s;
    this.bad = bad_s;
    this.readyUrl = new URL(readyUrl, location.href);
    this.since = Date.now(); // trouble since (the page starts not connected)
    this.reason = "connecting";
    this.ready = true;
    this.allStale = false;
    this.newestRx = 0;
    this.total = 0;
    this.openSince = 0; // when the connection last opened
    this.refused = null; // the gateway's error for the wall's subscription (a bad filter)
    this._polling = false;
    client.addEventListener("gateway-error", (e) => { this.refused = e.detail; this.update(); });
    setInterval(() => this._poll(), READY_POLL_MS);
  }

  async _poll() {
    if (this._polling || this.client.status !== "open") return;
    this._polling = true;
    try {
      const res = await fetch(this.readyUrl, { cache: "no-store" });
      this.ready = res.ok;
      if (!res.ok) {
        const body = await res.json().catch(() => ({}));
        // the public /readyz names what is not ready ("mqtt not ready") and keeps
        // the details to the admin port: a check has no "detail" here ("mqtt:
        // undefined" was shown, found by an outside check)
        const bad = Array.isArray(body.reasons) ? body.reasons.filter((r) => typeof r === "string")
          : Object.entries(body.checks || {}).filter(([, c]) => !c.ok)
            .map(([n, c]) => (c.detail ? `${n}: ${c.detail}` : `${n} not ready`));
        this.readyDetail = bad.join("; ") || "not ready";
      }
    } catch {
      // the socket's own status reports a gateway that went away
    } finally {
      this._polling = false;
    }
    this.update();
  }

  // Recompute from the client's copy (called once a second and on status changes).
  update(stats = null) {
    if (stats) {
      this.allStale = stats.total > 0 && stats.stale === stats.total;
      this.newestRx = stats.newestRx;
      this.total = stats.total;
    }
    if (this.client.status !== "open") this.openSince = 0;
    else if (!this.openSince) { this.openSince = Date.now(); this.refused = null; }
    let reason = null;
    if (this.client.status !== "open") {
      // once the wall had data, every state but open is a lost connection
      reason = this.client.status === "closed" || this.newestRx ? "disconnected" : "connecting";
    }
    else if (!this.ready) reason = "source down";
    else if (this.allStale) reason = "all stale";
    if (reason && !this.reason) this.since = Date.now();
    const changed = reason !== this.reason;
    this.reason = reason;
    if (changed) this.dispatchEvent(new Event("change"));
  }

  // Data age in seconds (null before any data).
  age() {
    return this.newestRx ? Math.max(0, Date.now() / 1000 - this.newestRx) : null;
  }

  // Past the grace period with trouble: the wall cannot vouch for its values. A page
  // still connecting for the first time has nothing to vouch for either.
  unknown() {
    return !!this.reason && (Date.now() - this.since > this.grace || this.newestRx === 0);
  }

  // ok | warn | bad: the header's colour
  level() {
    const age = this.age();
    if (this.reason) return this.reason === "connecting" ? "warn" : "bad";
    if (age === null) return "warn";
    return age < this.warn ? "ok" : age < this.bad ? "warn" : "bad";
  }

  // Not trouble with the data, but a wall showing nothing must say why: the gateway
  // refused the subscription (a bad filter), or nothing matches it after EMPTY_MS.
  notice(filter) {
    if (this.reason) return "";
    if (this.refused) return `The gateway refused this wall's subscription: ${this.refused.message || this.refused.code}`;
    if (!this.total && this.openSince && Date.now() - this.openSince > EMPTY_MS) {
      return `Connected, but no device matches the filter "${filter}" (yet)`;
    }
    return "";
  }

  bannerText() {
    if (!this.reason || (this.reason === "connecting" && this.newestRx === 0)) return "";
    const since = fmtClock(this.since);
    const age = this.age();
    const ageText = age === null ? "no data received yet" : `last data ${fmtAge(age)} old`;
    const what = {
      disconnected: "Connection to the gateway lost",
      connecting: "Reconnecting to the gateway",
      "source down": `The gateway's data source is down (${this.readyDetail || "not ready"})`,
      "all stale": "No device is reporting (all stale)",
    }[this.reason];
    const shown = this.unknown() ? "values are shown as unknown" :
      `values shown as unknown after ${Math.round(this.grace / 1000)} s`;
    return `${what} since ${since} · ${ageText} · ${shown}`;
  }
}

// A control room's clock: 24 hours, whatever the browser's locale says (the alarm list
// and the banner read "10:12:42 AM" while the event list said "10:12:42").
export function fmtClock(ms) {
  return new Date(ms).toLocaleTimeString([], { hourCycle: "h23" });
}

export function fmtAge(s) {
  if (s < 60) return `${s.toFixed(1)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}
