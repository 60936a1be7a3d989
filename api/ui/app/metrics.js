// Metric series for charts, as columns: {name: {step, epoch, time, value}}.
// Uses the columnar, decimated endpoints when the server has them, else pages through the
// plain rows (GET /jobs/{id}/metrics) and builds the same columns here.
import { api, ApiError } from "./api.js";

let columnar = null;
let batch = null;

function emptySeries() {
  return { step: [], epoch: [], time: [], value: [] };
}

/** A series fetched with some `columns`: the others as nulls of the same length, in place. */
export function withAllColumns(s) {
  const n = (s.value || s.step || s.epoch || s.time || []).length;
  for (const k of ["step", "epoch", "time", "value"]) if (!s[k]) s[k] = new Array(n).fill(null);
  return s;
}

function fromRows(items, into = {}) {
  for (const p of items) {
    const s = into[p.name] || (into[p.name] = emptySeries());
    s.step.push(p.step);
    s.epoch.push(p.epoch);
    s.time.push(null);
    s.value.push(p.value);
  }
  return into;
}

async function plainSeries(jobId, names) {
  const out = {};
  let since = 0;
  const q = names ? `&names=${encodeURIComponent(names.join(","))}` : "";
  for (;;) {
    const body = await api(`/jobs/${jobId}/metrics?since=${since}&limit=100000${q}`);
    fromRows(body.items, out);
    if (body.items.length < 100000) return { series: out, next_since: body.next_since, decimated: false };
    since = body.next_since;
  }
}

/** One job's series; `maxPoints` asks the server to decimate (min-max) when it can. */
export async function jobSeries(jobId, { names = null, maxPoints = null } = {}) {
  if (columnar !== false) {
    const q = new URLSearchParams({ format: "columnar" });
    if (names) q.set("names", names.join(","));
    if (maxPoints) q.set("max_points", String(maxPoints));
    let body = null;
    try {
      body = await api(`/jobs/${jobId}/metrics?${q}`);
    } catch (err) {
      if (!(err instanceof ApiError) || err.status === 404 || err.status === 401) throw err;
      body = null; // a server whose columnar form fails: the plain rows still work
    }
    if (body && body.series) {
      columnar = true;
      return body;
    }
    columnar = false;
    if (body && Array.isArray(body.items) && body.items.length < 10000 && !names) {
      return { series: fromRows(body.items), next_since: body.next_since, decimated: false };
    }
  }
  return plainSeries(jobId, names);
}

/**
 * Many jobs' series: {id: {series, next_since}}; one request with the batch endpoint.
 * `columns` (of step, epoch, value, time) asks for only those: a compare page's first chart
 * needs its x axis and the values, half the bytes of all four.
 */
export async function batchSeries(ids, { names = null, maxPoints = null, columns = null } = {}) {
  if (ids.length === 0) return {};
  if (batch !== false) {
    try {
      const out = {};
      for (let i = 0; i < ids.length; i += 200) {
        const q = new URLSearchParams({ jobs: ids.slice(i, i + 200).join(",") });
        if (names) q.set("names", names.join(","));
        if (maxPoints) q.set("max_points", String(maxPoints));
        if (columns) q.set("columns", columns.join(","));
        const body = await api(`/metrics?${q}`);
        Object.assign(out, body.jobs);
      }
      batch = true;
      return out;
    } catch (err) {
      if (!(err instanceof ApiError) || (err.status !== 404 && err.status !== 405)) throw err;
      batch = false;
    }
  }
  const out = {};
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      try { out[id] = await jobSeries(id, { names, maxPoints }); } catch { out[id] = { series: {} }; }
    }
  };
  await Promise.all(Array.from({ length: Math.min(6, ids.length) }, worker));
  return out;
}

/**
 * Append streamed points ({step, epoch, values}) to columns, in place. A point whose step is
 * not past the series' last step is one the history already holds (the stream may replay
 * from its start), so it is skipped: the chart then has each point exactly once.
 */
export function appendPoints(series, points, startedAt = null) {
  let changed = false;
  for (const p of points) {
    for (const [name, value] of Object.entries(p.values || {})) {
      const s = withAllColumns(series[name] || (series[name] = emptySeries()));
      const n = s.step.length;
      if (n && p.step <= s.step[n - 1]) continue;
      s.step.push(p.step);
      s.epoch.push(p.epoch);
      s.time.push(p.time ?? (startedAt ? (Date.now() - startedAt) / 1000 : null));
      s.value.push(value);
      changed = true;
    }
  }
  return changed;
}

export function hasColumnar() {
  return columnar;
}
export function hasBatch() {
  return batch;
}

/**
 * Streamed points after a history snapshot, exactly once. A stream opened without a cursor
 * replays every point of the job in the order the history holds them, so the first
 * `histCount[name]` points of each series are the history's own and are skipped by count;
 * a decimated history has no such count, and falls back to the step test of appendPoints.
 */
export function appendAfterHistory(series, points, seen, histCount, decimated, startedAt = null) {
  let changed = false;
  for (const p of points) {
    for (const [name, value] of Object.entries(p.values || {})) {
      seen[name] = (seen[name] || 0) + 1;
      if (decimated) {
        changed = appendPoints(series, [{ ...p, values: { [name]: value } }], startedAt) || changed;
        continue;
      }
      if (seen[name] <= (histCount[name] || 0)) continue;
      const s = series[name] || (series[name] = emptySeries());
      s.step.push(p.step);
      s.epoch.push(p.epoch);
      s.time.push(p.time ?? (startedAt ? (Date.now() - startedAt) / 1000 : null));
      s.value.push(value);
      changed = true;
    }
  }
  return changed;
}
