// Chart history, fetched after the tiles, the same way on WebSocket and on SSE.
//
// Rules:
// - Nothing is asked before `open()`: the wall calls it once its first snapshot is
//   painted, so the tiles never wait behind history (a 5,000-device subscription that
//   asked `history_s` got 2 MiB of history before its first snapshot: seconds late).
// - One field at a time (the one a chart shows), with the wall's token (the same rules
//   as the stream), one request per group: `/api/history?filter=<group>/#&field=F&
//   limit=N`, the gateway's even sample of the group; at most CONCURRENCY requests in
//   flight: a wall never floods its gateway.
// - Per group at most `perGroup` devices (all of them in smaller groups): the history
//   of one device's field over 300 s is ~8 KiB, the whole of a 5,000-device fleet would
//   be 40 MiB. In a bigger group the past is a sample, and `load` says so (`sampled`:
//   group -> [devices in the sample, devices]).
// - Each (field, level) is fetched once per page load; an answer that fails is empty
//   (the chart starts from its live samples), never retried in a loop.

const CONCURRENCY = 4;
const MAX_REQUESTS = 250;
const SAMPLE_MAX = 100; // the gateway's largest `limit`

export class HistoryLoader {
  constructor({ base = location.href, token = null, seconds = 300, perGroup = 25,
                topics, groupOf }) {
    this.base = base;
    this.token = token;
    this.seconds = seconds;
    this.perGroup = Math.min(perGroup, SAMPLE_MAX);
    this.topics = topics; // () => iterable of device topics (the wall's current copy)
    this.groupOf = groupOf; // (topic, level) -> group
    this._cache = new Map(); // "field|level" -> Promise of the result
    this._opened = new Promise((resolve) => { this.open = resolve; });
    this.stats = { requests: 0, failed: 0, bytes: 0 };
  }

  // {docs: [history documents], sampled: {group: [devices in the sample, devices]}} for
  // `field` grouped by `level`, once the gate is open.
  load(field, level) {
    const key = `${field}|${level}`;
    let p = this._cache.get(key);
    if (!p) this._cache.set(key, (p = this._opened.then(() => this._fetch(field, level))));
    return p;
  }

  async _get(params) {
    const url = new URL("api/history", this.base);
    url.search = new URLSearchParams(params).toString();
    const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    this.stats.requests += 1;
    try {
      const res = await fetch(url, { cache: "no-store", headers });
      if (!res.ok) { if (res.status !== 404) this.stats.failed += 1; return null; }
      const text = await res.text();
      this.stats.bytes += text.length;
      return JSON.parse(text);
    } catch {
      this.stats.failed += 1;
      return null;
    }
  }

  // One group: the gateway's even sample of "<group>/#" (one request), kept to the
  // topics this wall shows (its filter may be narrower); when that leaves too few (or
  // the gateway predates the filter form), every k-th of the wall's own devices, one
  // request each.
  async _group(group, list, each, field, budget) {
    const n = Math.min(each, list.length);
    const onWall = new Set(list);
    const common = { field, seconds: String(this.seconds) };
    const got = await this._get({ filter: `${group}/#`, limit: String(n), ...common });
    let items = (got?.items || []).filter((d) => onWall.has(d.topic));
    if (items.length < Math.min(n, got?.matched ?? n) / 2) {
      items = [];
      const step = list.length / n;
      for (let i = 0; i < n && budget.left-- > 0; i++) {
        const doc = await this._get({ topic: list[Math.floor(i * step)], ...common });
        if (doc) items.push(doc);
      }
    }
    return items;
  }

  async _fetch(field, level) {
    const groups = new Map(); // group -> [topics]
    for (const topic of this.topics()) {
      const g = this.groupOf(topic, level);
      let list = groups.get(g);
      if (!list) groups.set(g, (list = []));
      list.push(topic);
    }
    const each = Math.max(1, Math.min(this.perGroup, Math.floor(MAX_REQUESTS / Math.max(1, groups.size))));
    const budget = { left: MAX_REQUESTS - groups.size };
    const docs = [];
    const sampled = {};
    const queue = [...groups];
    const worker = async () => {
      while (queue.length) {
        const [g, list] = queue.shift();
        const items = await this._group(g, list, each, field, budget);
        docs.push(...items);
        if (items.length < list.length) sampled[g] = [items.length, list.length];
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
    return { docs, sampled };
  }
}
