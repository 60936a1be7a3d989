// /compare?jobs=a,b,c or ?group=g: runs overlaid per metric, colour by run or hyperparameter,
// hover highlight, legend search, the hyperparameters that differ, and parallel coordinates
// whose brushing filters the curves.
import { html, useEffect, useLayoutEffect, useMemo, useRef, useState } from "../lib.js";
import { ApiError, allPages, api, prefetch } from "../api.js";
import { useQueryState } from "../router.js";
import { Empty, Problem, SearchIcon, Status } from "../components.js";
import { Chart, palette, ramp } from "../charts.js";
import { follow } from "../live.js";
import { appendPoints, batchSeries, hasBatch, withAllColumns } from "../metrics.js";
import { fmtNum, fmtPct, metricLabel, networkName } from "../util/format.js";

const METRICS = ["train.loss", "val.loss", "val.accuracy", "val.top5", "train.lr"];
// about one point per pixel pair of a chart: more is not visible and costs the server and the wire
const MAX_POINTS = 400;

function flatHp(job) {
  const out = { network: networkName(job.request) };
  const walk = (obj, prefix) => {
    for (const [k, v] of Object.entries(obj || {})) {
      if (v && typeof v === "object" && !Array.isArray(v)) walk(v, `${prefix}${k}.`);
      else out[`${prefix}${k}`] = Array.isArray(v) ? v.join(",") : v;
    }
  };
  walk(job.request.hyperparameters, "");
  return out;
}

function bestValue(job, name) {
  const m = job.best && job.best[name];
  return m ? m.value : null;
}

/** Hyperparameters whose values differ between the runs (the only ones worth a column). */
function differing(jobs) {
  const flats = jobs.map(flatHp);
  const keys = Array.from(new Set(flats.flatMap(Object.keys)));
  return keys.filter((k) => new Set(flats.map((f) => JSON.stringify(f[k] ?? null))).size > 1).sort();
}

function parseBrushes(text) {
  const out = {};
  for (const part of (text || "").split(";")) {
    const [k, lo, hi] = part.split(":");
    if (k && lo !== undefined && hi !== undefined && Number.isFinite(Number(lo)) && Number.isFinite(Number(hi))) out[k] = [Number(lo), Number(hi)];
  }
  return out;
}
function formatBrushes(b) {
  return Object.entries(b).map(([k, [lo, hi]]) => `${k}:${Number(lo.toPrecision(4))}:${Number(hi.toPrecision(4))}`).join(";");
}

/** An axis of the parallel coordinates: value -> [0, 1] (0 at the bottom). */
export function makeAxis(key, values) {
  const present = values.filter((v) => v !== null && v !== undefined && v !== "");
  const numeric = present.length > 0 && present.every((v) => typeof v === "number" || (typeof v === "string" && v !== "" && Number.isFinite(Number(v))));
  if (numeric) {
    const nums = present.map(Number);
    let lo = Math.min(...nums);
    let hi = Math.max(...nums);
    const log = lo > 0 && hi / lo >= 20;
    const f = log ? Math.log10 : (x) => x;
    if (lo === hi) { lo -= 1; hi += 1; }
    const a = f(lo);
    const b = f(hi);
    return {
      key, numeric: true, log, lo, hi,
      pos: (v) => (v === null || v === undefined || v === "" ? null : (f(Number(v)) - a) / (b - a || 1)),
      val: (t) => (log ? 10 ** (a + t * (b - a)) : a + t * (b - a)),
      ticks: [lo, hi],
    };
  }
  const cats = Array.from(new Set(present.map(String))).sort();
  return {
    key, numeric: false, cats,
    pos: (v) => (v === null || v === undefined ? null : cats.length === 1 ? 0.5 : cats.indexOf(String(v)) / (cats.length - 1)),
    val: (t) => t, ticks: cats,
  };
}

export function ParallelCoords({ jobs, axes, colors, brushes, setBrushes, hidden, highlight, setHighlight }) {
  const H = 260;
  const pad = { top: 28, bottom: 34, left: 50, right: 60 };
  const ref = useRef(null);
  const [width, setWidth] = useState(900);
  const [drag, setDrag] = useState(null);
  useEffect(() => {
    const ro = new ResizeObserver(() => ref.current && setWidth(ref.current.clientWidth || 900));
    if (ref.current) ro.observe(ref.current);
    return () => ro.disconnect();
  }, []);
  if (axes.length < 2) return html`<div class="empty">Parallel coordinates need at least one hyperparameter that differs.</div>`;
  const innerH = H - pad.top - pad.bottom;
  const step = (width - pad.left - pad.right) / (axes.length - 1);
  const ax = (i) => pad.left + i * step;
  const ypos = (t) => pad.top + (1 - t) * innerH;
  const toT = (clientY) => {
    const r = ref.current.getBoundingClientRect();
    return Math.max(0, Math.min(1, 1 - (clientY - r.top - pad.top) / innerH));
  };
  const lines = jobs.map((job, r) => {
    const pts = axes.map((a, i) => {
      const t = a.pos(a.value(job));
      return t === null ? null : [ax(i), ypos(t)];
    });
    let d = "";
    let pen = false;
    for (const p of pts) {
      if (!p) { pen = false; continue; }
      d += `${pen ? "L" : "M"}${p[0].toFixed(1)},${p[1].toFixed(1)}`;
      pen = true;
    }
    return { d, r };
  });
  const onDown = (i, e) => {
    e.preventDefault();
    const t = toT(e.clientY);
    setDrag({ i, t0: t, t1: t });
    e.currentTarget.setPointerCapture && e.currentTarget.setPointerCapture(e.pointerId);
  };
  const onMove = (e) => { if (drag) setDrag({ ...drag, t1: toT(e.clientY) }); };
  const onUp = () => {
    if (!drag) return;
    const a = axes[drag.i];
    const next = { ...brushes };
    if (Math.abs(drag.t1 - drag.t0) < 0.02) delete next[a.key];
    else {
      const lo = Math.min(drag.t0, drag.t1);
      const hi = Math.max(drag.t0, drag.t1);
      next[a.key] = a.numeric ? [a.val(lo), a.val(hi)] : [lo, hi];
    }
    setDrag(null);
    setBrushes(next);
  };
  const brushT = (a) => {
    const b = brushes[a.key];
    if (!b) return null;
    return a.numeric ? [a.pos(b[0]), a.pos(b[1])] : b;
  };
  return html`<div ref=${ref} onPointerMove=${onMove} onPointerUp=${onUp} data-testid="pcoords">
    <svg class="pcoords" width=${width} height=${H} viewBox=${`0 0 ${width} ${H}`}>
      ${lines.map(({ d, r }) => html`<path class=${`line${hidden.has(r) ? " dim" : ""}${highlight === r ? " hot" : ""}`} d=${d} stroke=${colors[r]} data-run=${r}
        onMouseEnter=${() => setHighlight(r)} onMouseLeave=${() => setHighlight(null)} />`)}
      ${axes.map((a, i) => {
        const bt = drag && drag.i === i ? [Math.min(drag.t0, drag.t1), Math.max(drag.t0, drag.t1)] : brushT(a);
        return html`<g class="axis" data-axis=${a.key}>
          <line x1=${ax(i)} x2=${ax(i)} y1=${pad.top} y2=${pad.top + innerH} />
          <text class="axis-name" x=${ax(i)} y=${pad.top - 12} text-anchor="middle">${metricLabel(a.key)}</text>
          ${a.numeric ? html`<text x=${ax(i) - 6} y=${pad.top + innerH + 14} text-anchor="end">${fmtNum(a.lo, 3)}</text><text x=${ax(i) - 6} y=${pad.top + 4} text-anchor="end">${fmtNum(a.hi, 3)}</text>`
            : a.cats.map((c) => html`<text x=${ax(i) - 6} y=${ypos(a.pos(c)) + 4} text-anchor="end">${c}</text>`)}
          ${bt && html`<rect class="brush" x=${ax(i) - 7} width="14" y=${ypos(bt[1])} height=${Math.max(2, ypos(bt[0]) - ypos(bt[1]))} rx="3" />`}
          <rect class="hit" x=${ax(i) - 14} width="28" y=${pad.top - 4} height=${innerH + 8} onPointerDown=${(e) => onDown(i, e)} data-brush=${a.key} />
        </g>`;
      })}
    </svg>
  </div>`;
}

/** A group's runs and its first chart's series, requested at boot as the page will ask for
 * them (boot.js asks for the same paths before any module runs). */
export function prefetchFirst(search) {
  const params = new URLSearchParams(search);
  const group = params.get("group");
  if (!group) return;
  prefetch(`/jobs?group=${encodeURIComponent(group)}&page=1&per_page=200`);
  prefetch(groupSeriesPath(group, METRICS[0], params.get("x") || "epoch"));
}

function groupSeriesPath(group, name, col) {
  const q = new URLSearchParams({ group, names: name, max_points: String(MAX_POINTS), columns: `${col},value` });
  return `/metrics?${q}`;
}

/** One metric of every run: by group in one request that needs no list of ids (so it can
 * leave before the runs are listed), else by the runs' ids. */
async function seriesOf(group, list, name, col) {
  if (group && list.length <= 200 && hasBatch() !== false) {
    try {
      return (await api(groupSeriesPath(group, name, col))).jobs;
    } catch (err) {
      // a server without `group` on its batch read (or none): by ids, as before
      if (!(err instanceof ApiError) || ![400, 404, 405, 422].includes(err.status)) throw err;
    }
  }
  return batchSeries(list.map((j) => j.id), { names: [name], maxPoints: MAX_POINTS, columns: [col, "value"] });
}

export function ComparePage() {
  const params = new URLSearchParams(location.search);
  const idsParam = params.get("jobs");
  const group = params.get("group");
  const [jobs, setJobs] = useState(null);
  const [error, setError] = useState(null);
  const [version, setVersion] = useState(0);
  const data = useRef({});
  const [x, setX] = useQueryState("x", "epoch");
  const [log, setLog] = useQueryState("log", "");
  const [smooth, setSmooth] = useQueryState("smooth", "0");
  const [colorBy, setColorBy] = useQueryState("color", "run");
  const [q, setQ] = useQueryState("q", "");
  const [brushText, setBrushText] = useQueryState("brush", "");
  const [offText, setOffText] = useQueryState("off", "");
  const [highlight, setHighlight] = useState(null);
  // the parallel coordinates and the table of differences come a frame after the first
  // chart: 100 runs of them were a third of the work before it could paint
  const [full, setFull] = useState(false);
  useEffect(() => { if (jobs && !full) setFull(true); }, [jobs]);
  // the x column the series hold (only it and the values are fetched: see loadSeries)
  const xRef = useRef(x);
  xRef.current = x;
  const loadedX = useRef(null);

  /** Every metric's series with the columns of x axis `col`, one metric per request, the
   * first chart's first: it paints while the rest load. */
  const keep = (all) => {
    for (const [id, body] of Object.entries(all)) {
      const into = data.current[id] || (data.current[id] = {});
      for (const [metric, s] of Object.entries(body.series || {})) into[metric] = withAllColumns(s);
    }
  };
  const loadSeries = async (list, col, stopped, from = 0) => {
    loadedX.current = col;
    for (const name of METRICS.slice(from)) {
      const all = await seriesOf(group, list, name, col);
      if (stopped() || loadedX.current !== col) return;
      keep(all);
      setVersion((v) => v + 1);
    }
  };

  // another x axis: its column, fetched (the values again, as they were decimated with it)
  useEffect(() => {
    if (!jobs || loadedX.current === null || loadedX.current === x) return undefined;
    let stop = false;
    loadSeries(jobs, x, () => stop).catch(setError);
    return () => { stop = true; };
  }, [x, jobs]);

  // a layout effect: its requests were asked for at boot, and their answers are taken before
  // the browser paints "Loading…", not a frame after
  useLayoutEffect(() => {
    let stop = false;
    let stream = null;
    (async () => {
      try {
        let list;
        let first = null;
        const col = xRef.current;
        if (group) {
          // the first chart's series by group, while the runs are listed (one render has both)
          first = api(groupSeriesPath(group, METRICS[0], col)).then((b) => b.jobs, () => null);
          list = (await allPages(`/jobs?group=${encodeURIComponent(group)}`)).filter((j) => j.kind === "train");
        } else {
          const ids = (idsParam || "").split(",").map((s) => s.trim()).filter(Boolean);
          list = await Promise.all(ids.map((id) => api(`/jobs/${id}`)));
        }
        list.sort((a, b) => (a.created_at < b.created_at ? -1 : 1));
        first = first && list.length <= 200 ? await first : null;
        if (stop) return;
        if (first) keep(first);
        setJobs(list);
        await loadSeries(list, col, () => stop, first ? 1 : 0);
        if (stop) return;
        const running = list.filter((j) => ["running", "waiting", "initialized"].includes(j.status)).map((j) => j.id);
        if (running.length) {
          let pending = null;
          stream = follow({ jobs: running }, (kind, ev) => {
            if (kind === "metrics") {
              const s = data.current[ev.job_id] || (data.current[ev.job_id] = {});
              if (appendPoints(s, ev.points) && !pending) pending = setTimeout(() => { pending = null; setVersion((v) => v + 1); }, 500);
            } else if (kind === "status") {
              setJobs((old) => old && old.map((j) => (j.id === ev.job_id ? { ...j, status: ev.status } : j)));
              if (["done", "error", "aborted"].includes(ev.status)) api(`/jobs/${ev.job_id}`).then((fresh) => setJobs((old) => old && old.map((j) => (j.id === fresh.id ? fresh : j))), () => {});
            }
          });
        }
      } catch (err) {
        setError(err);
      }
    })();
    return () => { stop = true; if (stream) stream.close(); };
  }, [idsParam, group]);

  const diff = useMemo(() => (jobs ? differing(jobs) : []), [jobs]);
  const flats = useMemo(() => (jobs || []).map(flatHp), [jobs]);
  const target = jobs && jobs.some((j) => bestValue(j, "val.accuracy") !== null) ? "val.accuracy" : "val.loss";
  const axes = useMemo(() => {
    if (!jobs) return [];
    const keys = diff.filter((k) => new Set(flats.map((f) => f[k])).size <= 24 || flats.every((f) => typeof f[k] === "number"));
    const list = keys.map((k) => ({ ...makeAxis(k, flats.map((f) => f[k])), value: (job) => flats[jobs.indexOf(job)][k] }));
    const tgt = makeAxis(`best ${target}`, jobs.map((j) => bestValue(j, target)));
    list.push({ ...tgt, value: (job) => bestValue(job, target) });
    return list;
  }, [jobs, diff, target]);

  const colors = useMemo(() => {
    if (!jobs) return [];
    if (colorBy === "run" || !diff.includes(colorBy)) return jobs.map((_, i) => palette(i));
    const axis = makeAxis(colorBy, flats.map((f) => f[colorBy]));
    return flats.map((f) => (axis.numeric ? ramp(axis.pos(f[colorBy]) ?? 0) : palette(axis.cats.indexOf(String(f[colorBy])))));
  }, [jobs, colorBy, diff, document.documentElement.dataset.theme]);

  const brushes = parseBrushes(brushText);
  const off = new Set(offText.split(",").filter(Boolean));
  const hidden = useMemo(() => {
    const h = new Set();
    if (!jobs) return h;
    const needle = q.trim().toLowerCase();
    jobs.forEach((job, r) => {
      if (off.has(job.id)) h.add(r);
      if (needle && !`${job.name} ${job.id}`.toLowerCase().includes(needle)) h.add(r);
      for (const a of axes) {
        const b = brushes[a.key];
        if (!b) continue;
        const v = a.value(job);
        // a brush edge at an axis end must keep the run on it (float and URL rounding)
        const eps = a.numeric ? (a.hi - a.lo) * 1e-3 : 0;
        if (a.numeric) { if (v === null || v === undefined || Number(v) < b[0] - eps || Number(v) > b[1] + eps) h.add(r); } else {
          const t = a.pos(v);
          if (t === null || t < b[0] - 1e-9 || t > b[1] + 1e-9) h.add(r);
        }
      }
    });
    return h;
  }, [jobs, q, brushText, offText, axes]);

  if (error) return html`<main class="page"><${Problem} error=${error} /></main>`;
  if (!jobs) return html`<main class="page"><span class="faint">Loading…</span></main>`;
  if (!jobs.length) return html`<main class="page"><div class="card"><${Empty} title="Nothing to compare">Select jobs on the <a href="/">jobs page</a> and press Compare.<//></div></main>`;

  const s = Number(smooth) || 0;
  const charts = METRICS.map((name) => {
    const list = jobs.map((job, r) => {
      const c = (data.current[job.id] || {})[name];
      const xs = c ? (x === "step" ? c.step : x === "time" ? c.time : c.epoch) : [];
      return { label: job.name, x: xs || [], y: c ? c.value : [], color: colors[r] };
    });
    return { name, list, any: list.some((l) => l.x.length) };
  }).filter((c) => c.any);
  // the batch endpoint has a time column for every series (it is fetched when chosen)
  const hasTime = hasBatch() === true || jobs.some((j) => Object.values(data.current[j.id] || {}).some((c) => c.time && c.time.some((t) => t !== null)));
  const toggleOff = (id) => {
    const next = new Set(off);
    if (next.has(id)) next.delete(id); else next.add(id);
    setOffText(Array.from(next).join(","));
  };
  const shownCount = jobs.length - hidden.size;

  return html`<main class="page" data-testid="compare" data-runs=${jobs.length} data-visible=${shownCount}>
    <div class="crumbs"><a href="/">Jobs</a> / Compare</div>
    <div class="page-head"><div class="title"><h1>${group ? `Group ${group}` : `Comparing ${jobs.length} runs`}</h1>
      <div class="sub"><span>${jobs.length} runs · ${shownCount} shown</span>${diff.length > 0 && html`<span>differ in ${diff.slice(0, 6).join(", ")}${diff.length > 6 ? "…" : ""}</span>`}</div></div></div>
    <div class="compare">
      <div class="card runs">
        <div class="toolbar"><span class="search-box">${SearchIcon}<input data-search type="search" placeholder="Filter runs  ( / )" value=${q} onInput=${(e) => setQ(e.target.value)} style=${{ width: "100%" }} aria-label="Filter runs" /></span></div>
        <div class="toolbar"><label class="small muted row grow">Colour by
          <select class="grow" value=${colorBy} onChange=${(e) => setColorBy(e.target.value)} aria-label="Colour by"><option value="run">run</option>${diff.map((k) => html`<option value=${k}>${k}</option>`)}</select></label></div>
        <div class="list" data-testid="run-list">${jobs.map((job, r) => html`<div class=${`run${hidden.has(r) ? " off" : ""}${highlight === r ? " hot" : ""}`} data-run=${job.id}
            onMouseEnter=${() => setHighlight(r)} onMouseLeave=${() => setHighlight(null)}>
          <input type="checkbox" checked=${!off.has(job.id)} onChange=${() => toggleOff(job.id)} aria-label=${`Show ${job.name}`} />
          <span class="sw" style=${{ background: colors[r] }}></span>
          <a class="nm" href=${`/jobs/${job.id}`} title=${job.name}>${job.name}</a>
          <span class="mono small faint">${target === "val.accuracy" ? fmtPct(bestValue(job, target), 1) : fmtNum(bestValue(job, target))}</span>
        </div>`)}</div>
      </div>
      <div class="stack">
        <div class="chart-toolbar">
          <span>x axis</span>
          <div class="seg">${["epoch", "step", "time"].map((k) => html`<button class=${x === k ? "on" : ""} disabled=${k === "time" && !hasTime} onClick=${() => setX(k)}>${k}</button>`)}</div>
          <label><input type="checkbox" checked=${log === "1"} onChange=${(e) => setLog(e.target.checked ? "1" : "")} /> log scale</label>
          <label>smoothing <input type="range" min="0" max="0.99" step="0.01" value=${s} onInput=${(e) => setSmooth(e.target.value)} aria-label="Smoothing" />
            <span class="mono" style=${{ width: "32px" }}>${s ? s.toFixed(2) : "off"}</span></label>
          ${Object.keys(brushes).length > 0 && html`<button class="small" onClick=${() => setBrushText("")}>Clear brushes</button>`}
        </div>
        <div class="charts">${charts.map((c) => html`<div class="card chart-card" key=${c.name} data-chart=${c.name}>
          <div class="chart-head"><h3>${metricLabel(c.name)}</h3></div>
          <${Chart} series=${c.list} version=${version + (c.name === "train.lr" ? 0 : 0)} xKind=${x} log=${log === "1" && !c.name.includes("accuracy") && c.name !== "val.top5"}
            smooth=${c.name === "train.lr" ? 0 : s} format=${c.name.includes("accuracy") || c.name === "val.top5" ? "pct" : c.name === "train.lr" ? "lr" : "num"}
            syncKey="compare" hidden=${hidden} highlight=${highlight} onFocus=${setHighlight} testid=${`compare-${c.name}`} showLegend=${jobs.length <= 8}
            points=${c.list.every((l) => l.x.length < 3)} />
        </div>`)}</div>
        ${full && html`<div class="card"><div class="card-head"><h2>Hyperparameters → best ${metricLabel(target)}</h2><span class="faint small">drag along an axis to filter; click it to clear</span></div>
          <div class="card-body"><${ParallelCoords} jobs=${jobs} axes=${axes} colors=${colors} brushes=${brushes} setBrushes=${(b) => setBrushText(formatBrushes(b))} hidden=${hidden} highlight=${highlight} setHighlight=${setHighlight} /></div></div>
        <div class="card"><div class="card-head"><h2>What differs</h2></div><div class="table-wrap"><table class="t" data-testid="hp-diff">
          <thead><tr><th>Run</th><th>Status</th>${diff.map((k) => html`<th>${k}</th>`)}<th class="num">best val top-1</th><th class="num">best val loss</th></tr></thead>
          <tbody>${jobs.map((job, r) => html`<tr class=${highlight === r ? "selected" : ""} onMouseEnter=${() => setHighlight(r)} onMouseLeave=${() => setHighlight(null)} style=${hidden.has(r) ? { opacity: 0.45 } : undefined}>
            <td><span class="sw" style=${{ display: "inline-block", width: "10px", height: "10px", borderRadius: "3px", background: colors[r], marginRight: "8px" }}></span><a class="name" href=${`/jobs/${job.id}`}>${job.name}</a></td>
            <td><${Status} status=${job.status} /></td>
            ${diff.map((k) => html`<td class="mono">${flats[r][k] === null || flats[r][k] === undefined ? "–" : String(flats[r][k])}</td>`)}
            <td class="num">${fmtPct(bestValue(job, "val.accuracy"), 2)}</td><td class="num">${fmtNum(bestValue(job, "val.loss"))}</td>
          </tr>`)}</tbody>
        </table></div></div>`}
      </div>
    </div>
  </main>`;
}
