// Smoothing and decimation for charts (pure: unit-tested with `node --test`).

/**
 * Exponential smoothing in x, not in points, started at the first value.
 *
 * TensorBoard's plain EMA starts biased towards 0 (its #610) and smooths a dense series more
 * than a sparse one (#3493, #6829). This is the continuous EMA (time constant: the x distance
 * over which the past keeps `weight` per `unit`, one 200th of the x range unless given; a chart
 * passes one unit for all its series) of the curve drawn through the points, solved exactly
 * for each straight segment, so runs logged at different densities smooth alike. It starts
 * at the first raw value (no start-up bias); `weight` 0 returns the raw values.
 */
export function ema(xs, ys, weight, unit = null) {
  const n = ys.length;
  const out = new Array(n);
  if (!(weight > 0) || n === 0) {
    for (let i = 0; i < n; i++) out[i] = ys[i];
    return out;
  }
  const w = Math.min(weight, 0.999);
  const span = n > 1 ? xs[n - 1] - xs[0] : 0;
  const u = unit > 0 ? unit : span > 0 ? span / 200 : 1;
  const tau = u / -Math.log(w);
  let s = null;
  let px = 0;
  let py = 0;
  for (let i = 0; i < n; i++) {
    const y = ys[i];
    if (y === null || y === undefined || Number.isNaN(y)) { out[i] = null; continue; }
    if (s === null) s = y;
    else {
      const d = xs[i] - px;
      if (d <= 0) s = w * s + (1 - w) * y;
      else {
        const a = Math.exp(-d / tau);
        const k = (y - py) / d; // the segment's slope: s' = (y(t) - s) / tau solved on it
        s = y - k * tau + (s - py + k * tau) * a;
      }
    }
    out[i] = s;
    px = xs[i];
    py = y;
  }
  return out;
}

/**
 * Min-max decimation to about `buckets` * 2 points, keeping the first and last point and the
 * extremes of each bucket (a spike never disappears, unlike DIGITS's #71).
 */
export function minmax(xs, ys, buckets) {
  const n = xs.length;
  if (n <= buckets * 2 + 2) return [xs, ys];
  const ox = [xs[0]];
  const oy = [ys[0]];
  const size = (n - 2) / buckets;
  for (let b = 0; b < buckets; b++) {
    const start = 1 + Math.floor(b * size);
    const end = Math.min(n - 1, 1 + Math.floor((b + 1) * size));
    let lo = start;
    let hi = start;
    for (let i = start; i < end; i++) {
      if (ys[i] < ys[lo]) lo = i;
      if (ys[i] > ys[hi]) hi = i;
    }
    const [a, c] = lo < hi ? [lo, hi] : [hi, lo];
    ox.push(xs[a]); oy.push(ys[a]);
    if (c !== a) { ox.push(xs[c]); oy.push(ys[c]); }
  }
  ox.push(xs[n - 1]); oy.push(ys[n - 1]);
  return [ox, oy];
}

/**
 * Put series with their own x values on one x column for uPlot (null where a series has no
 * point). When the union grows past `maxRows` the x range is cut into `maxRows` buckets and
 * each series keeps its last point per bucket, which bounds the table at maxRows x series.
 */
export function align(seriesList, maxRows = 4000) {
  if (seriesList.length === 0) return [[]];
  const first = seriesList[0].x;
  const same = seriesList.every((s) => s.x.length === first.length && s.x.every((v, i) => v === first[i]));
  if (same) return [Array.from(first), ...seriesList.map((s) => Array.from(s.y))];
  let total = 0;
  for (const s of seriesList) total += s.x.length;
  if (total <= maxRows) {
    const xs = Array.from(new Set(seriesList.flatMap((s) => Array.from(s.x)))).sort((a, b) => a - b);
    const at = new Map(xs.map((x, i) => [x, i]));
    const cols = seriesList.map((s) => {
      const col = new Array(xs.length).fill(null);
      for (let i = 0; i < s.x.length; i++) col[at.get(s.x[i])] = s.y[i];
      return col;
    });
    return [xs, ...cols];
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of seriesList) {
    if (s.x.length) { lo = Math.min(lo, s.x[0]); hi = Math.max(hi, s.x[s.x.length - 1]); }
  }
  const rows = maxRows;
  const width = (hi - lo) / (rows - 1) || 1;
  const xs = new Array(rows);
  for (let i = 0; i < rows; i++) xs[i] = lo + i * width;
  const cols = seriesList.map((s) => {
    const col = new Array(rows).fill(null);
    for (let i = 0; i < s.x.length; i++) col[Math.round((s.x[i] - lo) / width)] = s.y[i];
    return col;
  });
  return [xs, ...cols];
}
