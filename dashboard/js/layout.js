// Where the device blocks go: a pure function, tested in the browser with 1 to 50 groups.
//
// Rules:
//   * blocks fill the panel: rows of blocks, every row as wide as the panel, the rows
//     together as tall as it (no half-empty last row);
//   * a block's area follows its device count (a site of 2,000 gets more room than a
//     site of 20), with a floor so a small group still has room for its name;
//   * every tile on the wall has the same size (a tile is a device, whatever its group),
//     the largest that lets every block hold its devices;
//   * tiles become wide text tiles (name, value) when they can be tall enough for
//     readable text, else squares coloured by value and shape.
// The number of rows is chosen by trying each and keeping the one with the largest tiles.

export function planLayout(groups, W, H, opts = {}) {
  const { gap = 6, head = 24, pad = 4, minBlockW = 120, textTileH = 60, aspect = 2.4,
          maxTileH = Infinity } = opts;
  const G = groups.length;
  if (!G || W <= 0 || H <= 0) return { blocks: [], side: 0, wide: false };
  const total = groups.reduce((a, g) => a + Math.max(1, g.count), 0);
  const mean = total / G;
  const weight = (g) => Math.max(1, g.count) + mean / 2;
  let best = null;
  for (let R = 1; R <= G; R++) {
    const rows = partition(groups, R, weight);
    if (!rows) continue;
    for (const wide of [true, false]) {
      const plan = place(rows, W, H, { gap, head, pad, minBlockW, aspect: wide ? aspect : 1, weight });
      if (!plan) continue;
      plan.side = Math.min(plan.side, maxTileH);
      if (wide && plan.side < textTileH) continue;
      plan.wide = wide;
      if (!best || plan.side * (plan.wide ? aspect : 1) > best.side * (best.wide ? aspect : 1)) best = plan;
      break; // a text layout, when possible, beats squares of the same rows
    }
  }
  return best || { blocks: [], side: 0, wide: false };
}

// Split groups (in order) into R rows of near-equal weight; null if impossible.
function partition(groups, R, weight) {
  if (R > groups.length) return null;
  const total = groups.reduce((a, g) => a + weight(g), 0);
  const rows = [];
  let row = [], acc = 0;
  for (let i = 0; i < groups.length; i++) {
    const g = groups[i];
    const left = groups.length - i; // groups not yet placed, this one included
    const rowsLeft = R - rows.length;
    if (row.length && (left < rowsLeft || (acc + weight(g) / 2 > (total * (rows.length + 1)) / R
        && rowsLeft > 1))) {
      rows.push(row);
      row = [];
    }
    row.push(g);
    acc += weight(g);
  }
  rows.push(row);
  return rows.length === R ? rows : null;
}

function place(rows, W, H, { gap, head, pad, minBlockW, aspect, weight }) {
  const total = rows.reduce((a, r) => a + r.reduce((b, g) => b + weight(g), 0), 0);
  const usableH = H - gap * (rows.length - 1);
  const blocks = [];
  let y = 0, side = Infinity;
  for (let ri = 0; ri < rows.length; ri++) {
    const row = rows[ri];
    const rw = row.reduce((b, g) => b + weight(g), 0);
    const last = ri === rows.length - 1;
    const h = last ? H - y : Math.floor((usableH * rw) / total);
    const usableW = W - gap * (row.length - 1);
    if (usableW / row.length < minBlockW) return null;
    // widths by weight, each at least minBlockW
    let widths = row.map((g) => (usableW * weight(g)) / rw);
    const short = widths.filter((w) => w < minBlockW).length;
    if (short) {
      const rest = usableW - short * minBlockW;
      const restW = row.reduce((b, g, i) => b + (widths[i] < minBlockW ? 0 : weight(g)), 0);
      widths = widths.map((w, i) => (w < minBlockW ? minBlockW : (rest * weight(row[i])) / restW));
    }
    let x = 0;
    for (let i = 0; i < row.length; i++) {
      const w = i === row.length - 1 ? W - x : Math.floor(widths[i]);
      const b = { name: row[i].name, count: row[i].count, x, y, w, h };
      const s = bestSide(w - 2 * pad, h - head - 2 * pad, Math.max(1, row[i].count), aspect);
      if (s <= 0) return null;
      side = Math.min(side, s);
      blocks.push(b);
      x += w + gap;
    }
    y += h + gap;
  }
  return { blocks, side };
}

// The largest tile height s (tile width aspect * s, 1 px gaps scaled with s) such that
// n tiles fit in w x h.
export function bestSide(w, h, n, aspect) {
  if (w <= 0 || h <= 0) return 0;
  let s = Math.floor(Math.min(h, w / aspect, Math.sqrt((w * h) / (n * aspect))));
  while (s >= 2) {
    const g = tileGap(s);
    const cols = Math.floor((w + g) / (Math.round(s * aspect) + g));
    const rowsFit = Math.floor((h + g) / (s + g));
    if (cols * rowsFit >= n) return s;
    s -= s > 40 ? Math.ceil(s / 40) : 1;
  }
  return 0;
}

export function tileGap(s) {
  return s < 6 ? 1 : s < 20 ? 2 : Math.min(8, Math.round(s / 10));
}
