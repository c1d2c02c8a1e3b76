// Chart history, fetched after the tiles, the same way on WebSocket and on SSE.
//
// Rules:
// - Nothing is asked before `open()`: the wall calls it once its first snapshot is
//   painted, so the tiles never wait behind history (a 5,000-device subscription that
//   asked `history_s` got 2 MiB of history before its first snapshot: ~6 s late).
// - One field at a time (the one a chart shows), from `/api/history?topic=T&field=F`
//   with the wall's token (the same rules as the stream), at most CONCURRENCY requests
//   in flight: a wall never floods its gateway.
// - Per group at most `perGroup` devices (all of them in smaller groups), and at most
//   MAX_REQUESTS in all: the history of one device's field over 300 s is ~8 KiB, the
//   whole of a 5,000-device fleet would be 40 MiB. In a bigger group the past is a
//   sample, and `load` says so (`sampled`: group -> [asked, devices]).
// - Each (field, level) is fetched once per page load; an answer that fails is empty
//   (the chart starts from its live samples), never retried in a loop.

const CONCURRENCY = 4;
const MAX_REQUESTS = 250;

export class HistoryLoader {
  constructor({ base = location.href, token = null, seconds = 300, perGroup = 25,
                topics, groupOf }) {
    this.base = base;
    this.token = token;
    this.seconds = seconds;
    this.perGroup = perGroup;
    this.topics = topics; // () => iterable of device topics (the wall's current copy)
    this.groupOf = groupOf; // (topic, level) -> group
    this._cache = new Map(); // "field|level" -> Promise of the result
    this._opened = new Promise((resolve) => { this.open = resolve; });
    this.stats = { requests: 0, failed: 0, bytes: 0 };
  }

  // {docs: [history documents], sampled: {group: [asked, devices]}} for `field` grouped
  // by `level`, once the gate is open.
  load(field, level) {
    const key = `${field}|${level}`;
    let p = this._cache.get(key);
    if (!p) this._cache.set(key, (p = this._opened.then(() => this._fetch(field, level))));
    return p;
  }

  _pick(level) {
    const groups = new Map(); // group -> [topics]
    for (const topic of this.topics()) {
      const g = this.groupOf(topic, level);
      let list = groups.get(g);
      if (!list) groups.set(g, (list = []));
      list.push(topic);
    }
    const each = Math.max(1, Math.min(this.perGroup, Math.floor(MAX_REQUESTS / Math.max(1, groups.size))));
    const asked = [];
    const sampled = {};
    for (const [g, list] of groups) {
      const n = Math.min(each, list.length);
      // spread over the group (every k-th device), not its first few in topic order
      const step = list.length / n;
      for (let i = 0; i < n; i++) asked.push(list[Math.floor(i * step)]);
      if (n < list.length) sampled[g] = [n, list.length];
    }
    return { asked: asked.slice(0, MAX_REQUESTS), sampled };
  }

  async _fetch(field, level) {
    const { asked, sampled } = this._pick(level);
    const docs = [];
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    let next = 0;
    const worker = async () => {
      while (next < asked.length) {
        const topic = asked[next++];
        const url = new URL("api/history", this.base);
        url.search = "";
        url.searchParams.set("topic", topic);
        url.searchParams.set("field", field);
        url.searchParams.set("seconds", String(this.seconds));
        this.stats.requests += 1;
        try {
          const res = await fetch(url, { cache: "no-store", headers });
          if (!res.ok) { if (res.status !== 404) this.stats.failed += 1; continue; }
          const text = await res.text();
          this.stats.bytes += text.length;
          docs.push(JSON.parse(text));
        } catch {
          this.stats.failed += 1;
        }
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return { docs, sampled };
  }
}
