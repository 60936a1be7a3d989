// /jobs/{id}: a training job (live charts, logs, checkpoints, classify, evaluate), or the
// results of an evaluation / inference job.
import { html, useEffect, useMemo, useRef, useState } from "../lib.js";
import { api } from "../api.js";
import { navigate, useQueryState } from "../router.js";
import { Dialog, Problem, Progress, Status, confirmDialog, toast } from "../components.js";
import { Chart, palette } from "../charts.js";
import { follow } from "../live.js";
import { appendAfterHistory, jobSeries } from "../metrics.js";
import { fmtAgo, fmtDuration, fmtNum, fmtPct, fmtTime, isAccuracy, jobDuration, metricLabel, networkName, shortId } from "../util/format.js";
import { CheckpointsTab, ClassifyTab, EvaluateTab, LogsTab, PredictTab } from "./job-tabs.js";
import { EvaluationView, InferenceView } from "./results.js";

// chart cards: the series each shows; series nobody claims get a card of their own
const CHARTS = [
  { id: "loss", title: "Loss", names: ["train.loss", "val.loss"], smooth: true },
  { id: "acc", title: "Accuracy", names: ["val.accuracy", "val.top5"], format: "pct", smooth: true },
  { id: "map", title: "Detection mAP", names: ["val.map", "val.map_50", "val.map_75"], format: "pct" },
  { id: "iou", title: "Segmentation IoU", names: ["val.miou", "val.pixel_accuracy"], format: "pct" },
  { id: "lr", title: "Learning rate", names: ["train.lr"], format: "lr", planned: true },
  { id: "ips", title: "Throughput (images/s)", names: ["train.images_per_second"], smooth: true },
  { id: "gpu", title: "GPU utilisation (%)", names: ["gpu.utilization", "gpu.memory_utilization"] },
  { id: "gpumem", title: "GPU memory", names: ["gpu.memory_used_bytes"], format: "bytes" },
  { id: "gputemp", title: "GPU temperature (°C) and power (W)", names: ["gpu.temperature_c", "gpu.power_w"] },
  { id: "cpu", title: "Process CPU (%)", names: ["process.cpu_percent"] },
  { id: "rss", title: "Process memory (RSS)", names: ["process.rss_bytes"], format: "bytes" },
];
// epoch is the x axis already; thread counts and memory totals are constants, not curves
const CLAIMED = new Set(CHARTS.flatMap((c) => c.names).concat(["gpu.memory_total_bytes", "epoch", "process.threads", "lr_find.lr", "lr_find.loss", "lr_find.suggestion", "trial.pruned"]));

/** The LR range test: smoothed loss against log10(rate), with the suggestion marked. */
function lrFindCard(series) {
  const lr = series["lr_find.lr"];
  const loss = series["lr_find.loss"];
  if (!lr || !loss || !lr.value.length) return null;
  const byStep = new Map(lr.step.map((st, i) => [st, lr.value[i]]));
  const xs = [];
  const ys = [];
  loss.step.forEach((st, i) => { if (byStep.has(st) && byStep.get(st) > 0) { xs.push(Math.log10(byStep.get(st))); ys.push(loss.value[i]); } });
  const sug = series["lr_find.suggestion"];
  const s = sug && sug.value.length ? sug.value[sug.value.length - 1] : null;
  return {
    list: [{ label: "smoothed loss", x: xs, y: ys, color: palette(3) }],
    markers: s ? [{ x: Math.log10(s), kind: "best", label: `suggested ${s.toExponential(2)}` }] : [],
    suggestion: s,
  };
}

export function JobPage({ id }) {
  const [job, setJob] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { api(`/jobs/${id}`).then(setJob, setError); }, [id]);
  if (error) return html`<main class="page"><${Problem} error=${error} /></main>`;
  if (!job) return html`<main class="page"><span class="faint">Loading…</span></main>`;
  if (job.kind === "evaluate") return html`<${EvaluationView} initial=${job} />`;
  if (job.kind === "inference") return html`<${InferenceView} initial=${job} />`;
  return html`<${TrainingJob} initial=${job} />`;
}

/** The job, its series and checkpoints, kept live from one event stream. */
function useLiveJob(initial) {
  const [job, setJob] = useState(initial);
  const [checkpoints, setCheckpoints] = useState([]);
  const [version, setVersion] = useState(0);
  const [live, setLive] = useState("connecting");
  const series = useRef({});
  const logSubs = useRef(new Set());
  const id = initial.id;

  useEffect(() => {
    let stop = false;
    let loaded = false;
    const buffered = [];
    let pending = null;
    const bump = () => {
      if (pending) return;
      pending = setTimeout(() => { pending = null; if (!stop) setVersion((v) => v + 1); }, 200);
    };
    const refresh = async () => {
      try {
        const [j, c] = await Promise.all([api(`/jobs/${id}`), api(`/jobs/${id}/checkpoints`)]);
        if (!stop) { setJob(j); setCheckpoints(c); }
      } catch { /* the stream retries; the next event refreshes again */ }
    };
    const started = () => (initial.started_at ? Date.parse(initial.started_at) : null);
    // the stream opens before the history loads, so no point falls between the two
    const final = ["done", "error", "aborted"].includes(initial.status);
    const seen = {};
    let histCount = {};
    let decimated = false;
    const take = (points) => appendAfterHistory(series.current, points, seen, histCount, decimated, started());
    const stream = final ? null : follow({ jobs: [id] }, (kind, data) => {
      if (data.job_id && data.job_id !== id) return;
      if (kind === "metrics") {
        if (!loaded) buffered.push(data.points);
        else if (take(data.points)) bump();
      } else if (kind === "progress") {
        setJob((j) => ({ ...j, epoch: data.epoch, step: data.step, total_steps: data.total_steps, progress: data.progress }));
      } else if (kind === "status") {
        setJob((j) => ({ ...j, status: data.status, status_history: [...(j.status_history || []), data].filter((x, i, a) => a.findIndex((y) => y.at === x.at && y.status === x.status) === i) }));
        refresh();
      } else if (kind === "checkpoint") {
        refresh();
      } else if (kind === "log") {
        for (const fn of logSubs.current) fn(data);
      }
    }, (state) => { if (!stop) setLive(state); });
    (async () => {
      try {
        const body = await jobSeries(id, { maxPoints: 4000 });
        if (stop) return;
        series.current = body.series || {};
        decimated = !!body.decimated;
        histCount = Object.fromEntries(Object.entries(series.current).map(([k, c]) => [k, c.value.length]));
        loaded = true;
        for (const points of buffered) take(points);
        buffered.length = 0;
        setVersion((v) => v + 1);
        await refresh();
      } catch (err) {
        toast(`metrics: ${err.message}`, { error: true });
      }
    })();
    return () => { stop = true; clearTimeout(pending); if (stream) stream.close(); };
  }, [id]);

  return { job, setJob, checkpoints, series: series.current, version, live: ["done", "error", "aborted"].includes(job.status) ? "ended" : live, logSubs: logSubs.current };
}

function TrainingJob({ initial }) {
  const { job, setJob, checkpoints, series, version, live, logSubs } = useLiveJob(initial);
  const [tab, setTab] = useQueryState("tab", "charts");
  const [dialog, setDialog] = useState(null);
  const [dataset, setDataset] = useState(null);
  useEffect(() => { if (job.dataset_id) api(`/datasets/${job.dataset_id}`).then(setDataset, () => {}); }, [job.dataset_id]);
  const hp = job.request.hyperparameters || {};
  const running = job.status === "running";
  const active = running || job.status === "waiting" || job.status === "initialized";

  const patch = async (body) => {
    try { setJob(await api(`/jobs/${job.id}`, { method: "PATCH", body })); toast("Saved"); } catch (err) { toast(err.message, { error: true }); }
  };
  const abort = async () => {
    try { setJob(await api(`/jobs/${job.id}/abort`, { method: "POST" })); toast("Abort requested: the job stops at its next step"); } catch (err) { toast(err.message, { error: true }); }
  };
  const remove = async () => {
    if (!(await confirmDialog(`Delete ${job.name}?`, "Its metrics, checkpoints and files are removed; a running job is aborted first."))) return;
    try { await api(`/jobs/${job.id}`, { method: "DELETE" }); toast("Job deleted"); navigate("/"); } catch (err) { toast(err.message, { error: true }); }
  };

  const task = job.request.task || "classification";
  const tabs = task === "classification"
    ? [["charts", "Charts"], ["logs", "Logs"], ["checkpoints", `Checkpoints`], ["classify", "Classify"], ["evaluate", "Evaluate"], ["details", "Details"]]
    : [["charts", "Charts"], ["logs", "Logs"], ["checkpoints", `Checkpoints`], ["predict", "Predict"], ["evaluate", "Evaluate"], ["details", "Details"]];
  return html`<main class="page" data-testid="job-page" data-job=${job.id} data-status=${job.status}>
    <div class="crumbs"><a href="/">Jobs</a>${job.group && html` / <a href=${`/compare?group=${encodeURIComponent(job.group)}`}>${job.group}</a>`}</div>
    <div class="page-head">
      <div class="title">
        <${EditableTitle} value=${job.name} onSave=${(name) => patch({ name })} />
        <div class="sub">
          <${Status} status=${job.status} title=${job.waiting_reason || job.error || ""} />
          <span class="mono">${shortId(job.id)}</span>
          <span>${networkName(job.request)}</span>
          ${dataset && html`<span>on <a href=${`/datasets/${dataset.id}`}>${dataset.name}</a></span>`}
          ${job.worker && html`<span>worker <b>${job.worker}</b></span>`}
          ${job.attempts > 1 && html`<span>attempt ${job.attempts}</span>`}
          <span>${job.started_at ? `ran ${fmtDuration(jobDuration(job))}` : `created ${fmtAgo(job.created_at)}`}</span>
        </div>
      </div>
      <div class="actions">
        ${active && html`<button class="danger" onClick=${abort} disabled=${job.abort_requested} data-action="abort">${job.abort_requested ? "Aborting…" : "Abort"}</button>`}
        <button onClick=${() => setDialog("clone")} data-action="clone">Clone…</button>
        <button onClick=${() => setDialog("download")} disabled=${!checkpoints.length}>Download…</button>
        <button onClick=${() => setDialog("pretrained")} disabled=${!checkpoints.length}>Make pretrained…</button>
        <button class="ghost danger" onClick=${remove} aria-label="Delete">Delete</button>
      </div>
    </div>

    ${job.status === "waiting" && html`<div class="notice warn" data-testid="waiting-reason"><b>Waiting${job.queue_position ? ` (#${job.queue_position} in the queue)` : ""}:</b> ${job.waiting_reason || "for a free worker"}. <a href="/queue">Queue</a></div>`}
    ${job.error && html`<div class="problem"><b>${job.status === "error" ? "Failed" : "Note"}</b>${job.error}</div>`}
    ${(running || job.status === "done") && html`<div class="card" style=${{ marginBottom: "16px" }}><div class="card-body row" style=${{ gap: "18px" }}>
      <div class="grow"><${Progress} value=${job.status === "done" ? 1 : job.progress} ok=${job.status === "done"} /></div>
      <span class="mono small">epoch ${fmtNum(job.epoch, 3)} / ${hp.epochs ?? "?"}</span>
      <span class="mono small">step ${fmtNum(job.step)} / ${fmtNum(job.total_steps)}</span>
      ${running && html`<span class="mono small">ETA ${fmtDuration(job.eta_seconds)}</span>`}
      ${live !== "ended" && html`<span class=${`badge ${live === "live" || live === "fallback" ? "running" : ""}`} data-testid="live-state" data-state=${live}>${live === "live" ? "live" : live === "reconnecting" ? "reconnecting…" : live === "fallback" ? "live" : live}</span>`}
    </div></div>`}

    <div class="tabs" role="tablist">${tabs.map(([k, label]) => html`<button role="tab" class=${tab === k ? "on" : ""} aria-selected=${tab === k} onClick=${() => setTab(k)} data-tab=${k}>
      ${label}${k === "checkpoints" && checkpoints.length ? html`<span class="count">${checkpoints.length}</span>` : ""}</button>`)}</div>

    ${tab === "charts" && html`<div class="grid sidebar">
      <${ChartsPanel} job=${job} series=${series} version=${version} checkpoints=${checkpoints} />
      <${SidePanel} job=${job} onSave=${patch} />
    </div>`}
    ${tab === "logs" && html`<${LogsTab} job=${job} logSubs=${logSubs} />`}
    ${tab === "checkpoints" && html`<${CheckpointsTab} job=${job} checkpoints=${checkpoints} onDownload=${() => setDialog("download")} onPretrained=${() => setDialog("pretrained")} onClassify=${() => setTab(task === "classification" ? "classify" : "predict")} />`}
    ${tab === "classify" && html`<${ClassifyTab} job=${job} checkpoints=${checkpoints} />`}
    ${tab === "predict" && html`<${PredictTab} job=${job} checkpoints=${checkpoints} />`}
    ${tab === "evaluate" && html`<${EvaluateTab} job=${job} checkpoints=${checkpoints} />`}
    ${tab === "details" && html`<${Details} job=${job} />`}

    ${dialog === "clone" && html`<${CloneDialog} job=${job} onClose=${() => setDialog(null)} />`}
    ${dialog === "download" && html`<${DownloadDialog} job=${job} checkpoints=${checkpoints} onClose=${() => setDialog(null)} />`}
    ${dialog === "pretrained" && html`<${PretrainedDialog} job=${job} checkpoints=${checkpoints} onClose=${() => setDialog(null)} />`}
  </main>`;
}

function EditableTitle({ value, onSave }) {
  const [editing, setEditing] = useState(false);
  const [text, setText] = useState(value);
  if (!editing) return html`<h1 title="Click to rename" style=${{ cursor: "text" }} onClick=${() => { setText(value); setEditing(true); }} data-testid="job-title">${value}</h1>`;
  const save = () => { setEditing(false); if (text.trim() && text !== value) onSave(text.trim()); };
  return html`<input class="h1" style=${{ fontSize: "20px", fontWeight: 600, width: "min(520px, 100%)" }} value=${text} autofocus aria-label="Job name"
    onInput=${(e) => setText(e.target.value)} onBlur=${save} onKeyDown=${(e) => { if (e.key === "Enter") save(); if (e.key === "Escape") setEditing(false); }} />`;
}

function ChartsPanel({ job, series, version, checkpoints }) {
  const [x, setX] = useQueryState("x", "epoch");
  const [log, setLog] = useQueryState("log", "");
  const [smooth, setSmooth] = useQueryState("smooth", "0.6");
  const [planned, setPlanned] = useState(null);
  const hp = job.request.hyperparameters || {};
  const s = Number(smooth) || 0;
  const hasTime = Object.values(series).some((c) => c.time && c.time.some((t) => t !== null));

  useEffect(() => {
    const q = new URLSearchParams({ policy: hp.lr_policy || "step", learning_rate: String(hp.learning_rate ?? 0.01) });
    for (const [k, val] of Object.entries(hp.lr_params || {})) if (val !== null && val !== undefined) q.set(k, Array.isArray(val) ? val.join(",") : String(val));
    api(`/lr-policies/preview?${q}`).then(setPlanned, () => {});
  }, [job.id]);

  const best = job.best && job.best[hp.best_metric || "val.accuracy"];
  const markers = useMemo(() => {
    const pos = (m) => (x === "step" ? m.step : m.epoch);
    const out = checkpoints.filter((c) => c.name !== "best" && c.name !== "last").map((c) => ({ x: pos(c), kind: "ckpt" }));
    if (best && x !== "time") out.push({ x: pos(best), kind: "best", label: `best ${metricLabel(hp.best_metric || "val.accuracy")}` });
    return out;
  }, [checkpoints, best && best.step, x]);

  const pick = (name, i) => {
    const c = series[name];
    if (!c || !c.value.length) return null;
    const xs = x === "step" ? c.step : x === "time" && hasTime ? c.time : c.epoch;
    return { label: metricLabel(name), x: xs, y: c.value, color: palette(i) };
  };
  const extra = Object.keys(series).filter((n) => !CLAIMED.has(n)).sort();
  // per-class AP and IoU: one card each, a line per class
  const perClass = [["val.ap.", "ap-class", "AP per class"], ["val.iou.", "iou-class", "IoU per class"]];
  const grouped = perClass.map(([prefix, id, title]) => ({ id, title, names: extra.filter((n) => n.startsWith(prefix)), format: "pct" }));
  const single = extra.filter((n) => !perClass.some(([prefix]) => n.startsWith(prefix)));
  const cards = CHARTS.concat(grouped, single.map((n) => ({ id: n, title: metricLabel(n), names: [n] })));
  const shown = cards.map((card) => {
    const list = card.names.map(pick).filter(Boolean);
    if (card.planned && planned && x === "epoch" && list.length) {
      const epochs = hp.epochs || 1;
      list.push({ label: "planned", x: planned.percent.map((p) => (p * epochs) / 100), y: planned.values, color: "#8a94a6", dash: [5, 4], width: 1.25 });
    }
    return { card, list };
  }).filter((c) => c.list.length);

  // what the charts hold, per series: the browser tests compare it with GET /metrics
  const counts = Object.fromEntries(Object.entries(series).map(([k, c]) => [k, [c.value.length, c.value.reduce((a, v) => a + v, 0)]]));
  const lrFind = lrFindCard(series);
  return html`<div data-testid="charts" data-version=${version} data-counts=${JSON.stringify(counts)}>
    <div class="chart-toolbar">
      <span>x axis</span>
      <div class="seg">${["epoch", "step", "time"].map((k) => html`<button class=${x === k ? "on" : ""} disabled=${k === "time" && !hasTime} onClick=${() => setX(k)}>${k}</button>`)}</div>
      <label><input type="checkbox" checked=${log === "1"} onChange=${(e) => setLog(e.target.checked ? "1" : "")} /> log scale</label>
      <label title="Debiased exponential moving average; the raw curve stays faint behind it">smoothing
        <input type="range" min="0" max="0.99" step="0.01" value=${s} onInput=${(e) => setSmooth(e.target.value)} aria-label="Smoothing" data-testid="smoothing" />
        <span class="mono" style=${{ width: "32px" }}>${s ? s.toFixed(2) : "off"}</span></label>
      ${s > 0 && html`<button class="small ghost" onClick=${() => setSmooth("0")}>off</button>`}
      <span class="grow"></span>
      <span class="faint small">drag to zoom · double-click to reset</span>
    </div>
    ${shown.length === 0 ? html`<div class="card"><div class="empty"><h3>No metrics yet</h3>${job.status === "waiting" ? "The job waits for a worker." : "Points appear here as the job trains."}</div></div>`
      : html`<div class="charts">${shown.map(({ card, list }) => html`<div class="card chart-card" key=${card.id} data-chart=${card.id}>
        <div class="chart-head"><h3>${card.title}</h3></div>
        <${Chart} series=${list} xKind=${x === "time" && !hasTime ? "epoch" : x} log=${log === "1" && card.format !== "pct"} smooth=${card.smooth ? s : 0}
          markers=${["loss", "acc", "map", "iou"].includes(card.id) ? markers : []} syncKey=${`job-${job.id}`} format=${card.format || "num"}
          testid=${`chart-${card.id}`} points=${list.some((l) => l.x.length < 3)} />
      </div>`)}</div>`}
    ${lrFind && html`<div class="card chart-card" data-chart="lr-find" data-suggestion=${lrFind.suggestion}>
      <div class="chart-head"><h3>LR range test</h3><span class="faint small">loss against log10(learning rate)${lrFind.suggestion ? ` · suggests ${lrFind.suggestion.toExponential(2)}` : ""}</span></div>
      <${Chart} series=${lrFind.list} xKind="step" markers=${lrFind.markers} testid="chart-lr-find" />
    </div>`}
  </div>`;
}

function SidePanel({ job, onSave }) {
  const [notes, setNotes] = useState(job.notes || "");
  const [group, setGroup] = useState(job.group || "");
  const best = Object.entries(job.best || {});
  return html`<div class="stack">
    ${best.length > 0 && html`<div class="card"><div class="card-head"><h3>Best</h3></div><div class="card-body"><dl class="kv">
      ${best.map(([k, m]) => html`<dt>${metricLabel(k)}</dt><dd><b>${isAccuracy(k) ? fmtPct(m.value, 2) : fmtNum(m.value)}</b> <span class="faint">epoch ${fmtNum(m.epoch, 3)}</span></dd>`)}
    </dl></div></div>`}
    <div class="card"><div class="card-head"><h3>Status</h3></div><div class="card-body">
      <ol class="timeline" data-testid="timeline">${(job.status_history || []).map((h) => html`<li>
        <span class=${`dot ${h.status === "done" ? "ok" : h.status === "error" ? "err" : h.status === "waiting" ? "warn" : ""}`}></span>
        <b>${h.status}</b> <span class="when">${fmtTime(h.at)}</span>${h.worker ? html` <span class="faint small">on ${h.worker}</span>` : ""}
        ${h.reason && html`<div class="why">${h.reason}</div>`}
      </li>`)}</ol>
    </div></div>
    <div class="card"><div class="card-head"><h3>Notes</h3></div><div class="card-body stack">
      <textarea rows="4" style=${{ fontFamily: "var(--font)", fontSize: "13px" }} value=${notes} onInput=${(e) => setNotes(e.target.value)} placeholder="What this run tries" aria-label="Notes"></textarea>
      <div class="row"><input style=${{ flex: 1 }} value=${group} onInput=${(e) => setGroup(e.target.value)} placeholder="Group" aria-label="Group" />
        <button class="small" onClick=${() => onSave({ notes, group: group || null })} disabled=${notes === (job.notes || "") && group === (job.group || "")}>Save</button></div>
    </div></div>
  </div>`;
}

function flatten(obj, prefix = "") {
  const out = [];
  for (const [k, v] of Object.entries(obj || {})) {
    if (v && typeof v === "object" && !Array.isArray(v)) out.push(...flatten(v, `${prefix}${k}.`));
    else out.push([`${prefix}${k}`, Array.isArray(v) ? v.join(", ") : v === null ? "–" : String(v)]);
  }
  return out;
}

function Details({ job }) {
  const hp = flatten(job.request.hyperparameters);
  return html`<div class="grid cols-2">
    <div class="card"><div class="card-head"><h3>Hyperparameters</h3></div><div class="card-body"><dl class="kv">${hp.map(([k, v]) => html`<dt>${k}</dt><dd class="mono">${v}</dd>`)}</dl></div></div>
    <div class="stack">
      <div class="card"><div class="card-head"><h3>Job</h3></div><div class="card-body"><dl class="kv">
        <dt>ID</dt><dd class="mono">${job.id}</dd><dt>Created</dt><dd>${fmtTime(job.created_at)}</dd>
        <dt>Started</dt><dd>${fmtTime(job.started_at)}</dd><dt>Finished</dt><dd>${fmtTime(job.finished_at)}</dd>
        <dt>Attempts</dt><dd>${job.attempts}</dd><dt>Worker</dt><dd>${job.worker || "–"}</dd>
      </dl></div></div>
      <div class="card"><div class="card-head"><h3>Request</h3></div><div class="card-body"><pre class="log" style=${{ height: "auto", maxHeight: "360px" }}>${JSON.stringify(job.request, null, 2)}</pre></div></div>
    </div>
  </div>`;
}

function CloneDialog({ job, onClose }) {
  const hp = job.request.hyperparameters || {};
  const [v, setV] = useState({ name: `${job.name} (clone)`, learning_rate: String(hp.learning_rate ?? ""), epochs: String(hp.epochs ?? ""), batch_size: hp.batch_size ? String(hp.batch_size) : "", extra: "" });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const set = (k) => (e) => setV({ ...v, [k]: e.target.value });
  const submit = async () => {
    setError(null);
    const over = {};
    try {
      if (v.learning_rate !== String(hp.learning_rate ?? "")) over.learning_rate = v.learning_rate.includes(",") ? v.learning_rate.split(",").map(Number) : Number(v.learning_rate);
      if (v.epochs !== String(hp.epochs ?? "")) over.epochs = Number(v.epochs);
      if (v.batch_size !== (hp.batch_size ? String(hp.batch_size) : "") && v.batch_size) over.batch_size = Number(v.batch_size);
      if (v.extra.trim()) Object.assign(over, JSON.parse(v.extra));
    } catch (err) {
      setError({ problem: { title: "Overrides are not valid JSON", detail: err.message } });
      return;
    }
    setBusy(true);
    try {
      const created = await api(`/jobs/${job.id}/clone`, { method: "POST", body: { name: v.name, hyperparameters: over } });
      onClose();
      toast(`Queued ${created.jobs.length} job${created.jobs.length > 1 ? "s" : ""}`);
      navigate(created.jobs.length > 1 ? `/compare?group=${encodeURIComponent(created.group)}` : `/jobs/${created.jobs[0].id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<${Dialog} title="Clone with changes" onClose=${onClose} foot=${html`
    <a class="btn" href=${`/jobs/new?from=${job.id}`} onClick=${onClose}>Open the full form</a><span class="grow"></span>
    <button onClick=${onClose}>Cancel</button><button class="primary" onClick=${submit} disabled=${busy} data-action="clone-submit">Queue the clone</button>`}>
    <div class="form">
      <div class="field"><label for="c-name">Name</label><input id="c-name" value=${v.name} onInput=${set("name")} /></div>
      <div class="fields">
        <div class="field"><label for="c-lr">Learning rate</label><input id="c-lr" value=${v.learning_rate} onInput=${set("learning_rate")} /><span class="help">A list sweeps</span></div>
        <div class="field"><label for="c-epochs">Epochs</label><input id="c-epochs" type="number" value=${v.epochs} onInput=${set("epochs")} /></div>
        <div class="field"><label for="c-bs">Batch size</label><input id="c-bs" value=${v.batch_size} onInput=${set("batch_size")} placeholder="network default" /></div>
      </div>
      <div class="field"><label for="c-extra">More overrides (JSON, merged into the hyperparameters)</label><textarea id="c-extra" rows="3" placeholder='{"solver": "adam", "seed": 3}' value=${v.extra} onInput=${set("extra")}></textarea></div>
      <${Problem} error=${error} />
    </div>
  <//>`;
}

function ckptOptions(checkpoints) {
  return checkpoints.map((c) => html`<option value=${c.name}>${c.name}${c.name === "best" || c.name === "last" ? ` (epoch ${fmtNum(c.epoch, 3)})` : ""}</option>`);
}

function DownloadDialog({ job, checkpoints, onClose }) {
  const [ckpt, setCkpt] = useState(checkpoints.some((c) => c.name === "best") ? "best" : (checkpoints[0] || {}).name);
  const [format, setFormat] = useState("tar.gz");
  const [exports, setExports] = useState({ onnx: false, torchscript: false });
  const task = job.request.task || "classification";
  // what this network exports (GET /networks says; Faster R-CNN and SSDlite only their weights)
  const [allowed, setAllowed] = useState(task === "detection" ? ["onnx"] : ["onnx", "torchscript"]);
  useEffect(() => {
    const net = job.request.network || {};
    if (task === "classification" || net.kind !== "standard") return;
    api("/networks").then((rows) => {
      const row = rows.find((r) => r.name === net.name);
      if (row) setAllowed(row.exports.filter((e) => e === "onnx" || e === "torchscript"));
    }).catch(() => {});
  }, [job.id]);
  const ex = Object.keys(exports).filter((k) => exports[k] && allowed.includes(k));
  const href = `/api/v1/jobs/${job.id}/download?${new URLSearchParams({ checkpoint: ckpt, format, ...(ex.length ? { export: ex.join(",") } : {}) })}`;
  return html`<${Dialog} title="Download the model" onClose=${onClose} foot=${html`<button onClick=${onClose}>Cancel</button><a class="btn primary" href=${href} download onClick=${() => setTimeout(onClose, 100)}>Download</a>`}>
    <div class="form">
      <div class="fields">
        <div class="field"><label for="d-ck">Checkpoint</label><select id="d-ck" value=${ckpt} onChange=${(e) => setCkpt(e.target.value)}>${ckptOptions(checkpoints)}</select></div>
        <div class="field"><label for="d-fmt">Archive</label><select id="d-fmt" value=${format} onChange=${(e) => setFormat(e.target.value)}><option value="tar.gz">tar.gz</option><option value="zip">zip</option></select></div>
      </div>
      <div class="row wrap">${allowed.length === 0 && html`<span class="small muted">This network exports no ONNX or TorchScript that reproduces its predictions: the archive holds its weights.</span>`}${allowed.map((k) => html`<div class="field check"><input id=${`d-${k}`} type="checkbox" checked=${exports[k]} onChange=${(e) => setExports({ ...exports, [k]: e.target.checked })} /><label for=${`d-${k}`}>${k === "onnx" ? "ONNX" : "TorchScript"} export</label></div>`)}</div>
      <div class="small muted">${task === "classification"
        ? "The archive holds info.json, labels.txt, weights.safetensors and mean.npy, as DIGITS's did; exports take raw uint8 NHWC images."
        : task === "detection"
          ? "The archive holds info.json, labels.txt and weights.safetensors; the ONNX export takes one uint8 HWC image and gives boxes, scores and labels, NMS included."
          : "The archive holds info.json, labels.txt and weights.safetensors; exports take uint8 NHWC images and give the class mask and probabilities."} The first export of a checkpoint takes a few seconds.</div>
    </div>
  <//>`;
}

function PretrainedDialog({ job, checkpoints, onClose }) {
  const [ckpt, setCkpt] = useState(checkpoints.some((c) => c.name === "best") ? "best" : (checkpoints[0] || {}).name);
  const [name, setName] = useState(job.name);
  const [error, setError] = useState(null);
  const submit = async () => {
    try {
      await api(`/jobs/${job.id}/pretrained`, { method: "POST", body: { checkpoint: ckpt, name } });
      toast("Pretrained model created");
      onClose();
      navigate("/models");
    } catch (err) { setError(err); }
  };
  return html`<${Dialog} title="Make a pretrained model" onClose=${onClose} foot=${html`<button onClick=${onClose}>Cancel</button><button class="primary" onClick=${submit}>Create</button>`}>
    <div class="form">
      <div class="field"><label for="p-name">Name</label><input id="p-name" value=${name} onInput=${(e) => setName(e.target.value)} /></div>
      <div class="field"><label for="p-ck">Checkpoint</label><select id="p-ck" value=${ckpt} onChange=${(e) => setCkpt(e.target.value)}>${ckptOptions(checkpoints)}</select></div>
      <div class="small muted">New jobs can then start from it (Network → Pretrained).</div>
      <${Problem} error=${error} />
    </div>
  <//>`;
}
