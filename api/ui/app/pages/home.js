// / : running jobs, the jobs table (filters, search, columns, multi-select) and the datasets.
import { html, useEffect, useMemo, useRef, useState } from "../lib.js";
import { allPages, api, prefetch } from "../api.js";
import { navigate, useQueryState } from "../router.js";
import { Empty, Problem, Progress, SearchIcon, Sparkline, Status, Th, confirmDialog, sortBy, toast, usePoll } from "../components.js";
import { follow } from "../live.js";
import { appendPoints, batchSeries } from "../metrics.js";
import { fmtAgo, fmtBytes, fmtDuration, fmtNum, fmtPct, jobDuration, networkName, shortId } from "../util/format.js";

const COLUMNS = [
  ["status", "Status"],
  ["group", "Group"],
  ["dataset", "Dataset"],
  ["network", "Network"],
  ["best_acc", "Best val top-1"],
  ["best_loss", "Best val loss"],
  ["last_loss", "Last train loss"],
  ["progress", "Progress"],
  ["duration", "Duration"],
  ["worker", "Worker"],
  ["created", "Created"],
];
const DEFAULT_COLS = ["status", "group", "dataset", "network", "best_acc", "last_loss", "duration", "created"];
const PER_PAGE = 50;

function loadCols() {
  try {
    const v = JSON.parse(localStorage.getItem("digits.home.columns"));
    if (Array.isArray(v)) return v;
  } catch { /* default */ }
  return DEFAULT_COLS;
}

function metric(job, kind, name) {
  const m = job[kind] && job[kind][name];
  return m ? m.value : null;
}

function RunningCard({ job, spark, onAbort }) {
  return html`<div class="card run-card" data-testid="running-card" data-job=${job.id}>
    <div class="top">
      <${Status} status=${job.status} />
      <a href=${`/jobs/${job.id}`} title=${job.name}>${job.name}</a>
      <button class="small ghost" onClick=${() => onAbort(job)} title="Abort">Abort</button>
    </div>
    <${Sparkline} values=${spark} label="train loss" />
    <${Progress} value=${job.progress} />
    <div class="meta">
      <span>epoch ${fmtNum(job.epoch, 3)}/${(job.request.hyperparameters || {}).epochs ?? "?"}</span>
      <span>${fmtPct(job.progress, 0)}</span>
      <span>ETA ${fmtDuration(job.eta_seconds)}</span>
      <span class="grow right">${job.worker || ""}</span>
    </div>
  </div>`;
}

/** The first screenful's request, started at boot (see main.js). */
export function prefetchFirst() {
  prefetch(`/jobs?per_page=${PER_PAGE}`);
}

export function HomePage() {
  const [jobs, setJobs] = useState(null);
  const [total, setTotal] = useState(0);
  const [datasets, setDatasets] = useState(null);
  const [error, setError] = useState(null);
  const [q, setQ] = useQueryState("q");
  const [status, setStatus] = useQueryState("status");
  const [group, setGroup] = useQueryState("group");
  const [dataset, setDataset] = useQueryState("dataset");
  const [kind, setKind] = useQueryState("kind", "train");
  const [sort, setSort] = useQueryState("sort", "created:desc");
  const [page, setPage] = useQueryState("page", "1");
  const [cols, setCols] = useState(loadCols);
  const [chooser, setChooser] = useState(false);
  const [selected, setSelected] = useState(new Set());
  const [sparks, setSparks] = useState({});
  const lastClick = useRef(null);
  const sparkData = useRef({});
  const firstShown = useRef(false);

  const reload = async () => {
    try {
      if (!firstShown.current) {
        firstShown.current = true;
        // a first screenful at once; the full list follows in pages of 200
        const first = await api(`/jobs?per_page=${PER_PAGE}`);
        setJobs((old) => old || first.items);
        setTotal(first.total);
      }
      const [js, ds] = await Promise.all([
        allPages("/jobs", { perPage: 200, onPage: (items, t) => { setJobs(items); setTotal(t); } }),
        allPages("/datasets", { perPage: 200 }),
      ]);
      setJobs(js);
      setDatasets(ds);
      setError(null);
    } catch (err) {
      setError(err);
    }
  };
  usePoll(reload, 15000);

  const running = useMemo(() => (jobs || []).filter((j) => j.status === "running"), [jobs]);
  const runningKey = running.map((j) => j.id).join(",");

  // loss sparklines of running jobs, then live points on one stream
  useEffect(() => {
    if (!running.length) return undefined;
    let stop = false;
    batchSeries(running.slice(0, 24).map((j) => j.id), { names: ["train.loss"], maxPoints: 120 }).then((all) => {
      if (stop) return;
      for (const [id, body] of Object.entries(all)) sparkData.current[id] = body.series || {};
      setSparks(Object.fromEntries(Object.entries(sparkData.current).map(([id, s]) => [id, (s["train.loss"] || {}).value || []])));
    }, () => { /* sparklines are a nicety; the next reload retries */ });
    const stream = follow({ jobs: running.map((j) => j.id) }, (kind, data) => {
      if (kind === "metrics") {
        const s = sparkData.current[data.job_id] || (sparkData.current[data.job_id] = {});
        if (appendPoints(s, data.points)) setSparks((old) => ({ ...old, [data.job_id]: (s["train.loss"] || {}).value || [] }));
      } else if (kind === "progress" || kind === "status") {
        setJobs((old) => old && old.map((j) => (j.id === data.job_id ? { ...j, ...pick(data) } : j)));
        if (kind === "status" && data.status !== "running") setTimeout(reload, 300);
      }
    });
    return () => { stop = true; stream.close(); };
  }, [runningKey]);

  const dsName = useMemo(() => Object.fromEntries((datasets || []).map((d) => [d.id, d.name])), [datasets]);
  const groups = useMemo(() => Array.from(new Set((jobs || []).map((j) => j.group).filter(Boolean))).sort(), [jobs]);

  const filtered = useMemo(() => {
    if (!jobs) return [];
    const needle = q.trim().toLowerCase();
    return jobs.filter((j) => (kind === "all" || j.kind === kind)
      && (!status || j.status === status)
      && (!group || j.group === group)
      && (!dataset || j.dataset_id === dataset)
      && (!needle || [j.name, j.id, j.group, networkName(j.request), dsName[j.dataset_id], j.worker].some((v) => v && String(v).toLowerCase().includes(needle))));
  }, [jobs, q, status, group, dataset, kind, dsName]);

  const getters = {
    name: (j) => j.name.toLowerCase(), status: (j) => j.status, group: (j) => j.group, dataset: (j) => dsName[j.dataset_id],
    network: (j) => networkName(j.request), best_acc: (j) => metric(j, "best", "val.accuracy"), best_loss: (j) => metric(j, "best", "val.loss"),
    last_loss: (j) => metric(j, "last", "train.loss"), progress: (j) => j.progress, duration: (j) => jobDuration(j),
    worker: (j) => j.worker, created: (j) => j.created_at,
  };
  const sorted = useMemo(() => sortBy(filtered, sort, getters), [filtered, sort]);
  const pages = Math.max(1, Math.ceil(sorted.length / PER_PAGE));
  const pageNo = Math.min(pages, Math.max(1, Number(page) || 1));
  const visible = sorted.slice((pageNo - 1) * PER_PAGE, pageNo * PER_PAGE);

  const toggle = (job, e) => {
    const next = new Set(selected);
    if (e && e.shiftKey && lastClick.current !== null) {
      const ids = visible.map((j) => j.id);
      const a = ids.indexOf(lastClick.current);
      const b = ids.indexOf(job.id);
      if (a >= 0 && b >= 0) for (const id of ids.slice(Math.min(a, b), Math.max(a, b) + 1)) next.add(id);
    } else if (next.has(job.id)) next.delete(job.id);
    else next.add(job.id);
    lastClick.current = job.id;
    setSelected(next);
  };
  const allOn = visible.length > 0 && visible.every((j) => selected.has(j.id));
  const chosen = (jobs || []).filter((j) => selected.has(j.id));

  const act = async (what) => {
    if (!chosen.length) return;
    if (what === "compare") { navigate(`/compare?jobs=${chosen.map((j) => j.id).join(",")}`); return; }
    if (what === "delete" && !(await confirmDialog(`Delete ${chosen.length} job${chosen.length > 1 ? "s" : ""}?`, "Their metrics, checkpoints and files are removed. Running jobs are aborted first."))) return;
    let ok = 0;
    for (const j of chosen) {
      try {
        if (what === "abort") await api(`/jobs/${j.id}/abort`, { method: "POST" });
        if (what === "clone") await api(`/jobs/${j.id}/clone`, { method: "POST", body: {} });
        if (what === "delete") await api(`/jobs/${j.id}`, { method: "DELETE" });
        ok++;
      } catch (err) {
        toast(`${j.name}: ${err.message}`, { error: true });
      }
    }
    if (ok) toast(`${what === "clone" ? "Cloned" : what === "abort" ? "Abort requested for" : "Deleted"} ${ok} job${ok > 1 ? "s" : ""}`);
    setSelected(new Set());
    reload();
  };

  const abortOne = async (job) => {
    try { await api(`/jobs/${job.id}/abort`, { method: "POST" }); toast(`Abort requested: ${job.name}`); reload(); } catch (err) { toast(err.message, { error: true }); }
  };

  const setColumns = (next) => {
    setCols(next);
    try { localStorage.setItem("digits.home.columns", JSON.stringify(next)); } catch { /* private mode */ }
  };
  const show = (c) => cols.includes(c);
  const counts = useMemo(() => {
    const c = {};
    for (const j of jobs || []) if (j.kind === "train") c[j.status] = (c[j.status] || 0) + 1;
    return c;
  }, [jobs]);

  return html`<main class="page" data-testid="home">
    <div class="page-head">
      <div class="title">
        <h1>Jobs</h1>
        <div class="sub">
          <span>${jobs ? `${total} job${total === 1 ? "" : "s"}` : "Loading…"}</span>
          ${["running", "waiting", "done", "error"].map((s) => counts[s] ? html`<a href=${`/?status=${s}`} onClick=${(e) => { e.preventDefault(); setStatus(status === s ? "" : s); }}><${Status} status=${s} /> ${counts[s]}</a>` : null)}
        </div>
      </div>
      <div class="actions">
        <a class="btn" href="/datasets/new">New dataset</a>
        <a class="btn primary" href="/jobs/new">New training job</a>
      </div>
    </div>
    <${Problem} error=${error} />

    ${running.length > 0 && html`<section class="section" data-testid="running">
      <div class="section-title"><h2>Running now</h2><span class="faint small">live</span></div>
      <div class="strip">${running.map((j) => html`<${RunningCard} key=${j.id} job=${j} spark=${sparks[j.id] || []} onAbort=${abortOne} />`)}</div>
    </section>`}

    <section class="section">
      <div class="section-title"><h2>All jobs</h2></div>
      <div class="card">
        <div class="toolbar">
          <span class="search-box">${SearchIcon}<input data-search type="search" placeholder="Search name, id, network…  ( / )" value=${q} onInput=${(e) => { setQ(e.target.value); setPage("1"); }} aria-label="Search jobs" /></span>
          <select value=${status} onChange=${(e) => { setStatus(e.target.value); setPage("1"); }} aria-label="Status">
            <option value="">Any status</option>
            ${["waiting", "running", "done", "error", "aborted"].map((s) => html`<option value=${s}>${s}</option>`)}
          </select>
          <select value=${group} onChange=${(e) => setGroup(e.target.value)} aria-label="Group">
            <option value="">Any group</option>
            ${groups.map((g) => html`<option value=${g}>${g}</option>`)}
          </select>
          <select value=${dataset} onChange=${(e) => setDataset(e.target.value)} aria-label="Dataset">
            <option value="">Any dataset</option>
            ${(datasets || []).map((d) => html`<option value=${d.id}>${d.name}</option>`)}
          </select>
          <select value=${kind} onChange=${(e) => setKind(e.target.value)} aria-label="Kind">
            <option value="train">Training</option><option value="evaluate">Evaluations</option><option value="inference">Inference</option><option value="all">All kinds</option>
          </select>
          <div class="sel">
            ${chosen.length > 0 && html`<span class="small muted">${chosen.length} selected</span>
              <button class="small" onClick=${() => act("compare")} data-action="compare">Compare</button>
              <button class="small" onClick=${() => act("clone")}>Clone</button>
              <button class="small" onClick=${() => act("abort")}>Abort</button>
              <button class="small danger" onClick=${() => act("delete")}>Delete</button>`}
            <span class="rel">
              <button class="small" onClick=${() => setChooser(!chooser)} aria-expanded=${chooser}>Columns</button>
              ${chooser && html`<div class="card popover" onMouseLeave=${() => setChooser(false)}>
                ${COLUMNS.map(([id, label]) => html`<label><input type="checkbox" checked=${show(id)} onChange=${() => setColumns(show(id) ? cols.filter((c) => c !== id) : [...cols, id])} />${label}</label>`)}
                <button class="small ghost" onClick=${() => setColumns(DEFAULT_COLS)}>Reset</button>
              </div>`}
            </span>
          </div>
        </div>
        <div class="table-wrap">
          <table class="t" data-testid="jobs-table">
            <thead><tr>
              <th class="check"><input type="checkbox" checked=${allOn} aria-label="Select all" onChange=${() => {
                const next = new Set(selected);
                for (const j of visible) { if (allOn) next.delete(j.id); else next.add(j.id); }
                setSelected(next);
              }} /></th>
              <${Th} id="name" sort=${sort} setSort=${setSort}>Name<//>
              ${COLUMNS.filter(([id]) => show(id)).map(([id, label]) => html`<${Th} id=${id} sort=${sort} setSort=${setSort} num=${["best_acc", "best_loss", "last_loss", "duration"].includes(id)}>${label}<//>`)}
            </tr></thead>
            <tbody>
              ${visible.map((j) => html`<tr key=${j.id} class=${selected.has(j.id) ? "selected" : ""} data-job=${j.id}>
                <td class="check"><input type="checkbox" checked=${selected.has(j.id)} onClick=${(e) => toggle(j, e)} aria-label=${`Select ${j.name}`} /></td>
                <td><a class="name" href=${`/jobs/${j.id}`}>${j.name}</a> <span class="mono faint">${shortId(j.id)}</span></td>
                ${show("status") && html`<td><${Status} status=${j.status} title=${j.waiting_reason || j.error || ""} /></td>`}
                ${show("group") && html`<td>${j.group ? html`<a href=${`/compare?group=${encodeURIComponent(j.group)}`} class="tag">${j.group}</a>` : html`<span class="faint">–</span>`}</td>`}
                ${show("dataset") && html`<td>${j.dataset_id ? html`<a href=${`/datasets/${j.dataset_id}`}>${dsName[j.dataset_id] || shortId(j.dataset_id)}</a>` : "–"}</td>`}
                ${show("network") && html`<td>${networkName(j.request)}</td>`}
                ${show("best_acc") && html`<td class="num">${fmtPct(metric(j, "best", "val.accuracy"), 2)}</td>`}
                ${show("best_loss") && html`<td class="num">${fmtNum(metric(j, "best", "val.loss"))}</td>`}
                ${show("last_loss") && html`<td class="num">${fmtNum(metric(j, "last", "train.loss"))}</td>`}
                ${show("progress") && html`<td><${Progress} value=${j.status === "done" ? 1 : j.progress} ok=${j.status === "done"} /></td>`}
                ${show("duration") && html`<td class="num">${fmtDuration(jobDuration(j))}</td>`}
                ${show("worker") && html`<td>${j.worker || "–"}</td>`}
                ${show("created") && html`<td class="nowrap muted" title=${j.created_at}>${fmtAgo(j.created_at)}</td>`}
              </tr>`)}
            </tbody>
          </table>
          ${jobs && filtered.length === 0 && html`<${Empty} title=${jobs.length ? "No job matches" : "No jobs yet"}>
            ${jobs.length ? "Change the filters or the search." : html`<a href="/jobs/new">Queue a training job</a> on a dataset.`}<//>`}
        </div>
        ${pages > 1 && html`<div class="table-foot">
          <span>${(pageNo - 1) * PER_PAGE + 1}–${Math.min(sorted.length, pageNo * PER_PAGE)} of ${sorted.length}</span>
          <span class="grow"></span>
          <button class="small" disabled=${pageNo <= 1} onClick=${() => setPage(String(pageNo - 1))}>Previous</button>
          <span>Page ${pageNo} of ${pages}</span>
          <button class="small" disabled=${pageNo >= pages} onClick=${() => setPage(String(pageNo + 1))}>Next</button>
        </div>`}
      </div>
    </section>

    <section class="section">
      <div class="section-title"><h2>Datasets</h2><a class="btn small" href="/datasets/new">Import a dataset</a></div>
      <${DatasetsTable} datasets=${datasets} />
    </section>
  </main>`;
}

function pick(data) {
  const out = {};
  for (const k of ["status", "epoch", "step", "total_steps", "progress", "worker"]) if (data[k] !== undefined) out[k] = data[k];
  return out;
}

function DatasetsTable({ datasets }) {
  const [sort, setSort] = useQueryState("dsort", "created:desc");
  if (!datasets) return html`<div class="card"><div class="empty">Loading…</div></div>`;
  const rows = sortBy(datasets, sort, {
    name: (d) => d.name.toLowerCase(), status: (d) => d.status, images: (d) => d.num_images,
    classes: (d) => (d.classes || []).length, size: (d) => d.size_bytes, created: (d) => d.created_at,
  });
  return html`<div class="card"><div class="table-wrap">
    <table class="t" data-testid="datasets-table">
      <thead><tr>
        <${Th} id="name" sort=${sort} setSort=${setSort}>Name<//>
        <${Th} id="status" sort=${sort} setSort=${setSort}>Status<//>
        <${Th} id="images" sort=${sort} setSort=${setSort} num>Images<//>
        <${Th} id="classes" sort=${sort} setSort=${setSort} num>Classes<//>
        <th>Image size</th>
        <th>Splits</th>
        <${Th} id="size" sort=${sort} setSort=${setSort} num>On disk<//>
        <${Th} id="created" sort=${sort} setSort=${setSort}>Created<//>
      </tr></thead>
      <tbody>${rows.map((d) => html`<tr key=${d.id}>
        <td><a class="name" href=${`/datasets/${d.id}`}>${d.name}</a> ${d.group && html`<span class="tag">${d.group}</span>`}</td>
        <td><${Status} status=${d.status} title=${d.error || ""} /></td>
        <td class="num">${fmtNum(d.num_images)}</td>
        <td class="num">${d.classes ? d.classes.length : "–"}</td>
        <td>${d.image_width}×${d.image_height}×${d.image_channels}</td>
        <td class="muted small">${d.splits ? Object.entries(d.splits).map(([k, v]) => `${k} ${v.images}`).join(" · ") : "–"}</td>
        <td class="num">${fmtBytes(d.size_bytes)}</td>
        <td class="nowrap muted">${fmtAgo(d.created_at)}</td>
      </tr>`)}</tbody>
    </table>
    ${datasets.length === 0 && html`<${Empty} title="No datasets yet"><a href="/datasets/new">Import one</a> from an archive of class folders.<//>`}
  </div></div>`;
}
