// /datasets/{id}: summary, per-class histogram per split, mean image, skipped files, jobs on
// it, and the Explore gallery (split and class filters, lazy paged images, lightbox).
import { html, useEffect, useRef, useState } from "../lib.js";
import { api } from "../api.js";
import { navigate, useQueryState } from "../router.js";
import { Empty, Problem, Progress, Status, confirmDialog, toast, usePoll } from "../components.js";
import { palette } from "../charts.js";
import { fmtAgo, fmtBytes, fmtDuration, fmtNum, fmtPct, networkName } from "../util/format.js";

const SPLITS = ["train", "val", "test"];

function Histogram({ ds }) {
  const splits = SPLITS.filter((s) => ds.splits && ds.splits[s] && ds.splits[s].images);
  const classes = ds.classes || [];
  const totals = classes.map((c) => splits.reduce((n, s) => n + (ds.splits[s].per_class[c] || 0), 0));
  const max = Math.max(1, ...totals);
  return html`<div class="stack">
    <div class="legend-inline">${splits.map((s, i) => html`<span><span class="sw" style=${{ background: palette(i) }}></span>${s} · ${fmtNum(ds.splits[s].images)}</span>`)}</div>
    <div class="hist" data-testid="histogram">
      ${classes.map((c, k) => html`<div class="hrow" title=${splits.map((s) => `${s}: ${ds.splits[s].per_class[c] || 0}`).join(", ")}>
        <span class="lab">${c}</span>
        <div class="hbars" style=${{ width: `${(totals[k] / max) * 100}%` }}>
          ${splits.map((s, i) => html`<div style=${{ width: `${((ds.splits[s].per_class[c] || 0) / (totals[k] || 1)) * 100}%`, background: palette(i) }}></div>`)}
        </div>
        <span class="mono small right">${fmtNum(totals[k])}</span>
      </div>`)}
    </div>
  </div>`;
}

// a classification sample is named by its class; a detection one by its boxes
const caption = (it) => it.class_name || (it.boxes ? `${it.boxes.length} box${it.boxes.length === 1 ? "" : "es"}` : "mask");
const UNITS = { images: "Images", boxes: "Boxes", pixels: "Pixels" };

function Lightbox({ items, index, setIndex }) {
  const item = items[index];
  useEffect(() => {
    const key = (e) => {
      if (e.key === "Escape") setIndex(null);
      if (e.key === "ArrowRight") setIndex(Math.min(items.length - 1, index + 1));
      if (e.key === "ArrowLeft") setIndex(Math.max(0, index - 1));
    };
    window.addEventListener("keydown", key);
    return () => window.removeEventListener("keydown", key);
  }, [index, items]);
  if (!item) return null;
  return html`<div class="overlay" onClick=${(e) => { if (e.target === e.currentTarget) setIndex(null); }} data-testid="lightbox">
    <div class="lightbox">
      <img src=${item.annotated_url ? `${item.annotated_url}?scale=4` : item.image_url} alt=${caption(item)} />
      <div><b>${caption(item)}</b> · #${item.index}</div>
      <div class="row">
        <button onClick=${() => setIndex(Math.max(0, index - 1))} disabled=${index === 0}>← Previous</button>
        <button onClick=${() => setIndex(null)}>Close</button>
        <button onClick=${() => setIndex(Math.min(items.length - 1, index + 1))} disabled=${index >= items.length - 1}>Next →</button>
      </div>
    </div>
  </div>`;
}

function Explore({ ds }) {
  const splits = SPLITS.filter((s) => ds.splits && ds.splits[s] && ds.splits[s].images);
  const [split, setSplit] = useQueryState("split", splits[0] || "train");
  const [label, setLabel] = useQueryState("label", "");
  const [page, setPage] = useQueryState("page", "1");
  const [perPage, setPerPage] = useQueryState("per_page", "50");
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [open, setOpen] = useState(null);
  useEffect(() => {
    const q = new URLSearchParams({ split, page, per_page: perPage });
    if (label !== "") q.set("label", label);
    api(`/datasets/${ds.id}/samples?${q}`).then((d) => { setData(d); setError(null); }, setError);
  }, [split, label, page, perPage]);
  const pages = data ? Math.max(1, Math.ceil(data.total / data.per_page)) : 1;
  return html`<div class="card" data-testid="explore">
    <div class="toolbar">
      <div class="seg">${splits.map((s) => html`<button class=${s === split ? "on" : ""} onClick=${() => { setSplit(s); setPage("1"); }}>${s}</button>`)}</div>
      <div class="chips" data-testid="class-chips">
        <button class=${`chip${label === "" ? " on" : ""}`} onClick=${() => { setLabel(""); setPage("1"); }}>all classes</button>
        ${(ds.classes || []).map((c, i) => html`<button class=${`chip${label === String(i) ? " on" : ""}`} onClick=${() => { setLabel(String(i)); setPage("1"); }}>${c}</button>`)}
      </div>
    </div>
    <div class="card-body">
      <${Problem} error=${error} />
      ${data && html`<div class="gallery" data-testid="gallery">
        ${data.items.map((it, i) => html`<button class="thumb" key=${`${split}-${it.index}`} onClick=${() => setOpen(i)} data-class=${it.class_name}>
          <img loading="lazy" decoding="async" src=${it.annotated_url || it.image_url} alt=${caption(it)} width="96" height="96" />
          <span class="cap">${caption(it)} · #${it.index}</span>
        </button>`)}
      </div>`}
      ${data && data.items.length === 0 && html`<${Empty} title="No images here" />`}
    </div>
    ${data && html`<div class="table-foot">
      <span>${fmtNum(data.total)} images</span><span class="grow"></span>
      <select value=${perPage} onChange=${(e) => { setPerPage(e.target.value); setPage("1"); }} aria-label="Per page">${["25", "50", "100", "200"].map((n) => html`<option value=${n}>${n} per page</option>`)}</select>
      <button class="small" disabled=${Number(page) <= 1} onClick=${() => setPage(String(Number(page) - 1))}>Previous</button>
      <span>Page ${page} of ${pages}</span>
      <button class="small" disabled=${Number(page) >= pages} onClick=${() => setPage(String(Number(page) + 1))}>Next</button>
    </div>`}
    ${open !== null && data && html`<${Lightbox} items=${data.items} index=${open} setIndex=${setOpen} />`}
  </div>`;
}

export function DatasetPage({ id }) {
  const [ds, setDs] = useState(null);
  const [jobs, setJobs] = useState([]);
  const [error, setError] = useState(null);
  const [tab, setTab] = useQueryState("tab", "summary");
  const final = useRef(false);
  usePoll(async () => {
    if (final.current) return;
    try {
      const d = await api(`/datasets/${id}`);
      setDs(d);
      setError(null);
      final.current = ["done", "error", "aborted"].includes(d.status);
      if (d.status === "done") setJobs((await api(`/jobs?dataset_id=${id}&per_page=200`)).items);
    } catch (err) {
      setError(err);
    }
  }, 1000, [id]);

  if (error && !ds) return html`<main class="page"><${Problem} error=${error} /></main>`;
  if (!ds) return html`<main class="page"><span class="faint">Loading…</span></main>`;
  const done = ds.status === "done";
  const remove = async () => {
    if (!(await confirmDialog(`Delete dataset ${ds.name}?`, "Its stored images go; jobs trained on it keep their models."))) return;
    try { await api(`/datasets/${id}`, { method: "DELETE" }); toast("Dataset deleted"); navigate("/"); } catch (err) { toast(err.message, { error: true }); }
  };
  return html`<main class="page" data-testid="dataset-page" data-status=${ds.status}>
    <div class="crumbs"><a href="/">Jobs</a> / Datasets</div>
    <div class="page-head">
      <div class="title">
        <h1>${ds.name}</h1>
        <div class="sub"><${Status} status=${ds.status} /> <span class="mono">${ds.id}</span> ${ds.group && html`<span class="tag">${ds.group}</span>`} ${ds.task !== "classification" && html`<span class="tag" data-testid="task">${ds.task}${ds.annotation_format ? ` · ${ds.annotation_format}` : ""}</span>`} <span>created ${fmtAgo(ds.created_at)}</span></div>
      </div>
      <div class="actions">
        ${done && ds.task === "classification" && html`<a class="btn primary" href=${`/jobs/new?dataset=${ds.id}`}>Train a model on it</a>`}
        <button class="danger" onClick=${remove}>Delete</button>
      </div>
    </div>
    ${!done && ds.status !== "error" && html`<div class="card"><div class="card-body stack">
      <div class="row"><span class="grow">Importing… ${ds.status}</span><span class="mono">${fmtPct(ds.progress, 0)}</span></div>
      <${Progress} value=${ds.progress} />
    </div></div>`}
    ${ds.error && html`<div class="problem"><b>Import failed</b>${ds.error}</div>`}
    ${done && html`<div class="tabs">
      <button class=${tab === "summary" ? "on" : ""} onClick=${() => setTab("summary")}>Summary</button>
      <button class=${tab === "explore" ? "on" : ""} onClick=${() => setTab("explore")} data-tab="explore">Explore</button>
      <button class=${tab === "jobs" ? "on" : ""} onClick=${() => setTab("jobs")}>Jobs <span class="count">${jobs.length}</span></button>
    </div>`}
    ${(tab === "summary" || !done) && html`<div class="grid sidebar">
      <div class="stack">
        <div class="grid cols-4">
          <div class="card stat"><div class="label">Images</div><div class="value">${fmtNum(ds.num_images)}</div><div class="hint">${ds.skipped ? `${ds.skipped} skipped` : "none skipped"}</div></div>
          <div class="card stat"><div class="label">Classes</div><div class="value">${ds.classes ? ds.classes.length : "–"}</div><div class="hint">${ds.dropped_classes.length ? `${ds.dropped_classes.length} dropped` : "all kept"}</div></div>
          <div class="card stat"><div class="label">Image size</div><div class="value">${ds.image_width}×${ds.image_height}</div><div class="hint">${ds.image_channels === 1 ? "grayscale" : "RGB"} · ${ds.resize_mode}</div></div>
          <div class="card stat"><div class="label">On disk</div><div class="value">${fmtBytes(ds.size_bytes)}</div><div class="hint">${ds.encoding || ""}</div></div>
        </div>
        ${done && html`<div class="card"><div class="card-head"><h2>${UNITS[ds.count_unit] || "Images"} per class</h2></div><div class="card-body"><${Histogram} ds=${ds} /></div></div>`}
        ${ds.skipped_samples.length > 0 && html`<div class="card"><div class="card-head"><h2>Skipped files</h2><span class="faint small">${ds.skipped}</span></div>
          <div class="table-wrap" style=${{ maxHeight: "320px" }}><table class="t"><thead><tr><th>File</th><th>Why</th></tr></thead>
          <tbody>${ds.skipped_samples.map((s) => html`<tr><td class="mono">${s.path}</td><td>${s.reason}</td></tr>`)}</tbody></table></div></div>`}
      </div>
      <div class="stack">
        ${done && html`<div class="card"><div class="card-head"><h3>Mean image</h3></div><div class="card-body"><img class="mean-img" src=${`/api/v1/datasets/${ds.id}/mean.png`} alt="mean image of the training split" /></div></div>`}
        <div class="card"><div class="card-head"><h3>Details</h3></div><div class="card-body"><dl class="kv">
          <dt>Method</dt><dd>${ds.method}</dd>
          ${Object.entries(ds.splits || {}).map(([k, v]) => html`<dt>${k}</dt><dd>${fmtNum(v.images)} images</dd>`)}
          <dt>Import time</dt><dd>${fmtDuration(ds.import_seconds)}</dd>
          <dt>Speed</dt><dd>${ds.images_per_second ? `${fmtNum(Math.round(ds.images_per_second))} images/s` : "–"}</dd>
          <dt>Val %</dt><dd>${ds.options.val_pct ?? "–"}</dd>
          <dt>Test %</dt><dd>${ds.options.test_pct ?? "–"}</dd>
          <dt>Min per class</dt><dd>${ds.options.min_per_class ?? "–"}</dd>
          <dt>Seed</dt><dd>${ds.options.seed ?? "random"}</dd>
          ${ds.dropped_classes.length > 0 && html`<dt>Dropped</dt><dd>${ds.dropped_classes.join(", ")}</dd>`}
        </dl></div></div>
      </div>
    </div>`}
    ${done && tab === "explore" && html`<${Explore} ds=${ds} />`}
    ${done && tab === "jobs" && html`<div class="card"><div class="table-wrap"><table class="t">
      <thead><tr><th>Job</th><th>Status</th><th>Network</th><th class="num">Best val top-1</th><th>Created</th></tr></thead>
      <tbody>${jobs.map((j) => html`<tr><td><a class="name" href=${`/jobs/${j.id}`}>${j.name}</a></td><td><${Status} status=${j.status} /></td>
        <td>${networkName(j.request)}</td><td class="num">${fmtPct(j.best["val.accuracy"] && j.best["val.accuracy"].value, 2)}</td><td class="muted">${fmtAgo(j.created_at)}</td></tr>`)}</tbody>
    </table>${jobs.length === 0 && html`<${Empty} title="No jobs on this dataset yet"><a href=${`/jobs/new?dataset=${ds.id}`}>Train one</a><//>`}</div></div>`}
  </main>`;
}
