// /studies: the tuning studies; /studies/{id}: one study, live: its trials table, the
// best-so-far curve, parallel coordinates of the parameters against the objective (the
// compare page's), and every trial's objective curve overlaid (pruned ones faint).
import { html, useEffect, useMemo, useRef, useState } from "../lib.js";
import { api } from "../api.js";
import { Empty, Problem, Status, confirmDialog, toast, usePoll } from "../components.js";
import { Chart, palette } from "../charts.js";
import { batchSeries } from "../metrics.js";
import { ParallelCoords, makeAxis } from "./compare.js";
import { fmtAgo, fmtNum, fmtPct, metricLabel } from "../util/format.js";

const STATE_COLOR = { complete: "var(--ok, #2e9d5b)", pruned: "#8a94a6", failed: "var(--err, #d64545)", running: "var(--accent)", waiting: "#b0b7c3" };

function fmtValue(metric, v) {
  if (v === null || v === undefined) return "–";
  return metric === "val.loss" ? fmtNum(v) : fmtPct(v, 2);
}

function fmtParam(v) {
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : Math.abs(v) < 0.01 ? v.toExponential(2) : fmtNum(v, 3);
  return v === null || v === undefined ? "–" : String(v);
}

function StateBadge({ state }) {
  const status = { complete: "done", pruned: "aborted", failed: "error" }[state] || state;
  return html`<span class=${`badge ${status}`} data-state=${state}><span class="dot"></span>${state}</span>`;
}

export function StudiesPage() {
  const [list, setList] = useState(null);
  const [error, setError] = useState(null);
  usePoll(async () => {
    try { setList(await api("/studies?per_page=100")); setError(null); } catch (err) { setError(err); }
  }, 5000);
  return html`<main class="page" data-testid="studies">
    <div class="page-head"><div class="title"><h1>Studies</h1><div class="sub">Hyperparameter searches: Optuna asks, the queue trains, weak trials are pruned. Start one with <code>digits studies create</code> or POST /api/v1/studies.</div></div></div>
    <${Problem} error=${error} />
    <div class="card">${list && list.items.length === 0 ? html`<${Empty} title="No studies yet">See the README's Tuning section.<//>` : html`<div class="table-wrap"><table class="t">
      <thead><tr><th>Study</th><th>Status</th><th class="num">Trials</th><th>Pruned</th><th class="num">Best</th><th>Started</th></tr></thead>
      <tbody>${(list ? list.items : []).map((s) => html`<tr data-study=${s.id}>
        <td><a class="name" href=${`/studies/${s.id}`}>${s.name}</a></td><td><${Status} status=${s.status} /></td>
        <td class="num">${s.trials_asked}/${s.max_trials}</td><td>${s.counts.pruned}</td>
        <td class="num">${fmtValue(s.objective.metric, s.best_value)}</td><td class="muted">${fmtAgo(s.created_at)}</td></tr>`)}</tbody></table></div>`}</div>
  </main>`;
}

export function StudyPage({ id }) {
  const [study, setStudy] = useState(null);
  const [error, setError] = useState(null);
  const [version, setVersion] = useState(0);
  const [highlight, setHighlight] = useState(null);
  const curves = useRef({});
  const loaded = useRef({});
  usePoll(async () => {
    if (study && study.finished_at) return;
    try { setStudy(await api(`/studies/${id}`)); setError(null); } catch (err) { setError(err); }
  }, 3000, [id, study && study.finished_at]);

  const metric = study ? study.objective.metric : "val.accuracy";
  // each trial's objective curve, fetched again while it runs and once after it ended
  useEffect(() => {
    if (!study) return;
    const want = study.trials.filter((t) => t.job_id && t.state !== "waiting" && loaded.current[t.job_id] !== "final");
    if (!want.length) return;
    batchSeries(want.map((t) => t.job_id), { names: [metric], maxPoints: 200 }).then((all) => {
      for (const t of want) {
        const body = all[t.job_id];
        if (body && body.series) curves.current[t.job_id] = body.series[metric];
        loaded.current[t.job_id] = t.state === "running" ? "live" : "final";
      }
      setVersion((v) => v + 1);
    }, () => {});
  }, [study]);

  const params = useMemo(() => (study ? Object.keys(study.config.search_space) : []), [study]);
  const axes = useMemo(() => {
    if (!study) return [];
    const trials = study.trials;
    const list = params.map((k) => ({ ...makeAxis(k, trials.map((t) => t.params[k])), value: (t) => t.params[k] }));
    list.push({ ...makeAxis(metric, trials.map((t) => t.value)), value: (t) => t.value });
    return list;
  }, [study, params]);

  if (error && !study) return html`<main class="page"><${Problem} error=${error} /></main>`;
  if (!study) return html`<main class="page"><span class="faint">Loading…</span></main>`;
  const trials = study.trials;
  const colors = trials.map((t) => (t.state === "complete" ? palette(t.number) : STATE_COLOR[t.state]));
  const hidden = new Set();
  const best = study.best;
  const history = study.history.filter((h) => h.best !== null);
  const bestSeries = [
    { label: "best so far", x: history.map((_, i) => i + 1), y: history.map((h) => h.best), color: palette(0) },
    { label: "each finished trial", x: study.history.map((_, i) => i + 1), y: study.history.map((h) => h.value), color: "#8a94a6" },
  ].filter((s) => s.x.length);
  const overlay = trials.map((t, r) => {
    const c = curves.current[t.job_id];
    return { label: `#${t.number} ${t.state}`, x: c ? c.epoch : [], y: c ? c.value : [], color: colors[r], width: t.state === "pruned" ? 1 : 2 };
  }).filter((s) => s.x.length);
  const pct = metric !== "val.loss";
  const abort = async () => {
    if (!(await confirmDialog("Abort the study?", "No more trials are asked; waiting trials end now and running ones at their next step.", "Abort"))) return;
    try { setStudy(await api(`/studies/${id}/abort`, { method: "POST" })); } catch (err) { toast(err.message, { error: true }); }
  };
  const used = study.epochs_unpruned ? study.epochs_used / study.epochs_unpruned : null;

  return html`<main class="page" data-testid="study" data-status=${study.status} data-trials=${trials.length}>
    <div class="crumbs"><a href="/studies">Studies</a> / ${study.name}</div>
    <div class="page-head"><div class="title"><h1>${study.name}</h1>
      <div class="sub"><${Status} status=${study.status} /><span>${study.trials_asked}/${study.max_trials} trials, ${study.max_concurrent} at once</span>
        <span>${study.config.sampler.type} + ${study.config.pruner.type}</span>
        <span>${metricLabel(metric)}, ${study.objective.direction || (metric === "val.loss" ? "minimize" : "maximize")}</span>
        ${study.reason && html`<span class="faint">${study.reason}</span>`}</div></div>
      <div class="actions"><a class="btn" href=${`/compare?group=${encodeURIComponent(study.group)}`}>Compare the trials</a>
        ${study.status === "running" && html`<button onClick=${abort}>Abort</button>`}</div></div>
    <div class="grid cols-4" data-testid="study-stats">
      <div class="card stat"><div class="label">Best ${metricLabel(metric)}</div><div class="value" data-testid="study-best">${fmtValue(metric, study.best_value)}</div><div class="hint">${best ? `trial #${best.number}` : "no trial completed yet"}</div></div>
      <div class="card stat"><div class="label">Trials</div><div class="value">${study.counts.complete} <span class="small faint">complete</span></div><div class="hint">${study.counts.pruned} pruned · ${study.counts.running} running · ${study.counts.failed} failed</div></div>
      <div class="card stat"><div class="label">Epochs trained</div><div class="value">${fmtNum(study.epochs_used, 3)}</div><div class="hint">${used === null ? "" : `${fmtPct(used, 0)} of ${fmtNum(study.epochs_unpruned, 4)} unpruned`}</div></div>
      <div class="card stat"><div class="label">Best parameters</div><div class="small mono">${best ? Object.entries(best.params).map(([k, v]) => html`<div>${k} ${fmtParam(v)}</div>`) : "–"}</div></div>
    </div>
    <div class="charts">
      <div class="card chart-card" data-chart="best"><div class="chart-head"><h3>Best so far</h3><span class="faint small">by finished trial</span></div>
        ${bestSeries.length ? html`<${Chart} series=${bestSeries} xKind="step" format=${pct ? "pct" : "num"} points=${true} testid="study-best-chart" />` : html`<div class="empty">No trial has finished yet.</div>`}</div>
      <div class="card chart-card" data-chart="trials"><div class="chart-head"><h3>${metricLabel(metric)} of every trial</h3><span class="faint small">pruned trials stop early</span></div>
        ${overlay.length ? html`<${Chart} series=${overlay} version=${version} xKind="epoch" format=${pct ? "pct" : "num"} showLegend=${overlay.length <= 8} highlight=${highlight} onFocus=${setHighlight} testid="study-curves" points=${overlay.some((l) => l.x.length < 3)} />` : html`<div class="empty">Curves appear as trials validate.</div>`}</div>
    </div>
    <div class="card"><div class="card-head"><h2>Parameters → ${metricLabel(metric)}</h2><span class="faint small">one line per trial</span></div>
      <div class="card-body"><${ParallelCoords} jobs=${trials} axes=${axes} colors=${colors} brushes=${{}} setBrushes=${() => {}} hidden=${hidden} highlight=${highlight} setHighlight=${setHighlight} /></div></div>
    ${Object.keys(study.importances).length > 0 && html`<div class="card"><div class="card-head"><h2>Parameter importances</h2><span class="faint small">Optuna's PED-ANOVA</span></div>
      <div class="card-body" data-testid="importances">${Object.entries(study.importances).map(([k, v]) => html`<div class="row"><span class="mono" style=${{ width: "160px" }}>${k}</span>
        <div class="grow"><div style=${{ width: `${Math.round(v * 100)}%`, height: "10px", borderRadius: "3px", background: "var(--accent)" }}></div></div><span class="mono small">${fmtNum(v, 2)}</span></div>`)}</div></div>`}
    <div class="card"><div class="card-head"><h2>Trials</h2></div><div class="table-wrap"><table class="t" data-testid="trials-table">
      <thead><tr><th class="num">#</th><th>State</th><th class="num">${metricLabel(metric)}</th><th class="num">Epochs</th>${params.map((k) => html`<th>${k}</th>`)}<th>Why it stopped</th></tr></thead>
      <tbody>${trials.map((t, r) => html`<tr data-trial=${t.number} class=${highlight === r ? "selected" : ""} onMouseEnter=${() => setHighlight(r)} onMouseLeave=${() => setHighlight(null)}>
        <td class="num">${t.job_id ? html`<a href=${`/jobs/${t.job_id}`}>${t.number}</a>` : t.number}${best && best.number === t.number ? " ★" : ""}</td>
        <td><${StateBadge} state=${t.state} /></td><td class="num">${fmtValue(metric, t.value)}</td>
        <td class="num">${fmtNum(t.epochs, 3)}</td>
        ${params.map((k) => html`<td class="mono">${fmtParam(t.params[k])}</td>`)}
        <td class="small muted" style=${{ maxWidth: "360px" }}>${t.reason || ""}</td></tr>`)}</tbody></table></div></div>
  </main>`;
}
