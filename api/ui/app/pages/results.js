// Results of evaluation and inference jobs: accuracy, a clickable confusion matrix whose cells
// open the images of that (true, predicted) pair, per-class precision/recall, top images.
import { html, useEffect, useState } from "../lib.js";
import { API, ApiError, api } from "../api.js";
import { useQueryState } from "../router.js";
import { Empty, Problem, Progress, Status } from "../components.js";
import { follow } from "../live.js";
import { Chart, palette } from "../charts.js";
import { fmtNum, fmtPct, fmtTime, shortId } from "../util/format.js";

/** Follow a model job until it is final; returns the job (re-read at the end). */
function useFinalJob(initial) {
  const [job, setJob] = useState(initial);
  useEffect(() => {
    if (["done", "error", "aborted"].includes(initial.status)) return undefined;
    const s = follow({ jobs: [initial.id] }, (kind, data) => {
      if (kind === "progress") setJob((j) => ({ ...j, progress: data.progress }));
      if (kind === "status") api(`/jobs/${initial.id}`).then(setJob, () => {});
    });
    const poll = setInterval(() => api(`/jobs/${initial.id}`).then((j) => { setJob(j); if (["done", "error", "aborted"].includes(j.status)) clearInterval(poll); }, () => {}), 3000);
    return () => { s.close(); clearInterval(poll); };
  }, [initial.id]);
  return job;
}

function Head({ job, title }) {
  const src = job.request.source_job_id;
  return html`<div>
    <div class="crumbs"><a href="/">Jobs</a>${src && html` / <a href=${`/jobs/${src}`}>${shortId(src)}</a>`}</div>
    <div class="page-head"><div class="title"><h1>${title}</h1>
      <div class="sub"><${Status} status=${job.status} /><span class="mono">${shortId(job.id)}</span><span>checkpoint ${job.request.checkpoint}</span><span>${fmtTime(job.created_at)}</span></div></div>
      ${src && html`<div class="actions"><a class="btn" href=${`/jobs/${src}?tab=evaluate`}>Back to the model</a></div>`}
    </div>
    ${job.status !== "done" && job.status !== "error" && html`<div class="card"><div class="card-body stack"><span>${job.status}… ${job.waiting_reason || ""}</span><${Progress} value=${job.progress} /></div></div>`}
    ${job.error && html`<div class="problem"><b>Failed</b>${job.error}</div>`}
  </div>`;
}

function heat(t) {
  // mix of two theme colours through CSS: color-mix keeps dark and light readable
  return `color-mix(in srgb, var(--heat-1) ${Math.round(Math.pow(t, 0.6) * 100)}%, var(--heat-0))`;
}

function Matrix({ res, norm, selected, onPick }) {
  const n = res.classes.length;
  const rows = res.confusion_matrix;
  const sums = rows.map((r) => r.reduce((a, b) => a + b, 0));
  const max = Math.max(1, ...rows.flatMap((r, i) => r.map((v) => (norm ? v / (sums[i] || 1) : v))));
  const size = n <= 12 ? 44 : n <= 30 ? 28 : 16;
  const showNums = size >= 28;
  return html`<div class="matrix-wrap">
    <div style=${{ display: "grid", gridTemplateColumns: `auto repeat(${n}, ${size}px)`, gap: "2px", alignItems: "center", fontSize: "11.5px" }} data-testid="confusion-matrix" data-classes=${n}>
      <div class="faint small" style=${{ paddingRight: "8px", textAlign: "right" }}>true ↓ · predicted →</div>
      ${res.classes.map((c) => html`<div class="muted" style=${{ textAlign: "center", overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }} title=${c}>${c}</div>`)}
      ${rows.map((r, i) => html`
        <div class="muted" style=${{ textAlign: "right", paddingRight: "8px", whiteSpace: "nowrap" }} title=${res.classes[i]}>${res.classes[i]}</div>
        ${r.map((v, j) => {
          const value = norm ? v / (sums[i] || 1) : v;
          const t = value / max;
          const on = selected && selected[0] === i && selected[1] === j;
          return html`<button title=${`true ${res.classes[i]}, predicted ${res.classes[j]}: ${v}${sums[i] ? ` (${fmtPct(v / sums[i], 1)} of the row)` : ""}`}
            data-cell=${`${i}-${j}`} data-count=${v} onClick=${() => onPick([i, j])}
            style=${{ width: `${size}px`, height: `${size}px`, padding: 0, border: on ? "2px solid var(--fg)" : i === j ? "1px solid var(--ok)" : "1px solid transparent", borderRadius: "4px", boxShadow: "none", background: heat(t), color: t > 0.55 ? "var(--panel)" : "var(--fg-2)", fontSize: "11px", fontWeight: i === j ? 600 : 400 }}>
            ${showNums && v ? (norm ? Math.round(value * 100) : v) : ""}
          </button>`;
        })}`)}
    </div>
  </div>`;
}

function CellImages({ job, res, cell }) {
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  const [page, setPage] = useState(1);
  const [i, j] = cell;
  useEffect(() => {
    setData(null);
    api(`/jobs/${job.id}/results/cell?true=${i}&pred=${j}&page=${page}&per_page=48`).then(setData, (err) => {
      // without the drill-down endpoint: the most confident images predicted as j, of class i
      if (err instanceof ApiError && (err.status === 404 || err.status === 405 || err.status === 422)) {
        const items = (res.top_images[res.classes[j]] || []).filter((t) => t.true_label === res.classes[i]).map((t) => ({ ...t, predicted_label: res.classes[j] }));
        setData({ items, total: items.length, page: 1, per_page: 48, partial: true });
      } else setError(err);
    });
  }, [i, j, page]);
  const count = res.confusion_matrix[i][j];
  return html`<div class="card" data-testid="cell-images" data-cell=${`${i}-${j}`}>
    <div class="card-head"><h3>True <b>${res.classes[i]}</b>, predicted <b>${res.classes[j]}</b></h3><span class="faint small">${count} image${count === 1 ? "" : "s"}</span></div>
    <div class="card-body">
      <${Problem} error=${error} />
      ${data && data.partial && html`<div class="small faint" style=${{ marginBottom: "8px" }}>Showing the most confident images kept by the evaluation.</div>`}
      ${data && (data.items.length ? html`<div class="gallery">${data.items.map((it) => html`<div class="thumb">
          ${it.image_url ? html`<img loading="lazy" src=${it.image_url} alt=${it.true_label} />` : html`<div class="faint small">#${it.index}</div>`}
          <span class="cap">${fmtPct(it.probability, 1)} · #${it.index}</span></div>`)}</div>`
        : html`<${Empty} title="No images to show" />`)}
      ${data && data.total > data.per_page && html`<div class="row" style=${{ marginTop: "10px" }}><button class="small" disabled=${page <= 1} onClick=${() => setPage(page - 1)}>Previous</button><span class="small">Page ${page} of ${Math.ceil(data.total / data.per_page)}</span><button class="small" disabled=${page * data.per_page >= data.total} onClick=${() => setPage(page + 1)}>Next</button></div>`}
    </div>
  </div>`;
}

export function EvaluationView({ initial }) {
  const job = useFinalJob(initial);
  const [res, setRes] = useState(null);
  const [error, setError] = useState(null);
  const [norm, setNorm] = useQueryState("norm", "");
  const [cell, setCell] = useState(null);
  useEffect(() => { if (job.status === "done") api(`/jobs/${job.id}/results`).then(setRes, setError); }, [job.status]);
  const title = `Evaluation on ${job.request.dataset_id ? `${job.request.split} split` : "an uploaded archive"}`;
  if (res && res.task) return html`<${DenseEvaluation} job=${job} res=${res} title=${title} />`;
  return html`<main class="page" data-testid="evaluation" data-status=${job.status}>
    <${Head} job=${job} title=${title} />
    <${Problem} error=${error} />
    ${res && html`<div class="stack">
      <div class="grid cols-4">
        <div class="card stat"><div class="label">Top-1 accuracy</div><div class="value" data-testid="top1">${fmtPct(res.top1, 2)}</div></div>
        <div class="card stat"><div class="label">Top-5 accuracy</div><div class="value">${fmtPct(res.top5, 2)}</div></div>
        <div class="card stat"><div class="label">Images</div><div class="value">${fmtNum(res.images)}</div></div>
        <div class="card stat"><div class="label">Classes</div><div class="value">${res.classes.length}</div><div class="hint">checkpoint ${res.checkpoint}</div></div>
      </div>
      <div class="grid cols-2">
        <div class="card"><div class="card-head"><h2>Confusion matrix</h2>
          <div class="seg"><button class=${norm ? "" : "on"} onClick=${() => setNorm("")}>counts</button><button class=${norm ? "on" : ""} onClick=${() => setNorm("1")}>row %</button></div></div>
          <div class="card-body"><${Matrix} res=${res} norm=${!!norm} selected=${cell} onPick=${setCell} /><div class="small faint" style=${{ marginTop: "10px" }}>Click a cell for its images.</div></div></div>
        <div class="card"><div class="card-head"><h2>Per class</h2></div><div class="table-wrap" style=${{ maxHeight: "520px" }}><table class="t" data-testid="per-class">
          <thead><tr><th>Class</th><th class="num">Precision</th><th class="num">Recall</th><th class="num">Support</th></tr></thead>
          <tbody>${res.per_class.map((c) => html`<tr><td>${c.label}</td><td class="num">${fmtPct(c.precision, 1)}</td><td class="num">${fmtPct(c.recall, 1)}</td><td class="num">${c.support}</td></tr>`)}</tbody>
        </table></div></div>
      </div>
      ${cell && html`<${CellImages} job=${job} res=${res} cell=${cell} />`}
      <div class="card"><div class="card-head"><h2>Most confident per class</h2></div><div class="card-body stack">
        ${res.classes.map((c) => (res.top_images[c] || []).length > 0 && html`<div><h3 style=${{ marginBottom: "6px" }}>${c}</h3><div class="gallery">
          ${res.top_images[c].map((t) => html`<div class="thumb" title=${`true ${t.true_label}`}>${t.image_url ? html`<img loading="lazy" src=${t.image_url} alt=${t.true_label} />` : ""}
            <span class="cap">${fmtPct(t.probability, 1)}${t.true_label !== c ? html` · <span style=${{ color: "var(--err)" }}>${t.true_label}</span>` : ""}</span></div>`)}
        </div></div>`)}
      </div></div>
    </div>`}
  </main>`;
}

/** Detection (mAP, per-class AP and precision-recall at IoU 0.5) or segmentation (IoU). */
function DenseEvaluation({ job, res, title }) {
  const m = res.metrics;
  const detection = res.task === "detection";
  const stats = detection
    ? [["mAP (0.5:0.95)", m.map], ["mAP@0.5", m.map_50], ["mAP@0.75", m.map_75]]
    : [["mIoU", m.miou], ["Pixel accuracy", m.pixel_accuracy]];
  const curves = detection
    ? res.per_class.filter((c) => c.pr_curve).map((c, i) => ({ label: c.label, x: c.pr_curve.recall, y: c.pr_curve.precision, color: palette(i) }))
    : [];
  return html`<main class="page" data-testid="evaluation" data-status=${job.status} data-task=${res.task}>
    <${Head} job=${job} title=${title} />
    <div class="stack">
      <div class="grid cols-4">
        ${stats.map(([label, value]) => html`<div class="card stat"><div class="label">${label}</div><div class="value" data-testid=${label}>${fmtPct(value, 1)}</div></div>`)}
        <div class="card stat"><div class="label">Images</div><div class="value">${fmtNum(res.images)}</div><div class="hint">checkpoint ${res.checkpoint}${res.skipped ? html` · <span title=${(res.skipped_samples || []).map((x) => `${x.path}: ${x.reason}`).join("\n")}>${fmtNum(res.skipped)} skipped</span>` : ""}</div></div>
      </div>
      <div class="grid cols-2">
        <div class="card"><div class="card-head"><h2>Per class</h2></div><div class="table-wrap" style=${{ maxHeight: "520px" }}><table class="t" data-testid="per-class">
          ${detection
            ? html`<thead><tr><th>Class</th><th class="num">AP</th><th class="num">AP@0.5</th><th class="num">Recall@0.5</th><th class="num">Boxes</th></tr></thead>
              <tbody>${res.per_class.map((c) => html`<tr><td>${c.label}</td><td class="num">${c.ap == null ? "–" : fmtPct(c.ap, 1)}</td><td class="num">${c.ap_50 == null ? "–" : fmtPct(c.ap_50, 1)}</td><td class="num">${c.recall_50 == null ? "–" : fmtPct(c.recall_50, 1)}</td><td class="num">${fmtNum(c.objects)}</td></tr>`)}</tbody>`
            : html`<thead><tr><th>Class</th><th class="num">IoU</th><th class="num">Pixels</th></tr></thead>
              <tbody>${res.per_class.map((c) => html`<tr><td>${c.label}</td><td class="num">${fmtPct(c.iou, 1)}</td><td class="num">${fmtNum(c.pixels)}</td></tr>`)}</tbody>`}
        </table></div></div>
        ${detection && html`<div class="card chart-card" data-chart="pr"><div class="chart-head"><h3>Precision against recall, IoU 0.5</h3></div>
          <${Chart} series=${curves} xKind="step" format="pct" testid="chart-pr" yRange=${[0, 1]} /></div>`}
      </div>
    </div>
  </main>`;
}

// a prediction job's rows: boxes per image (above its threshold), or the classes' areas
function DensePredictionRows({ data }) {
  const detection = data.task === "detection";
  const summary = (r) => {
    if (r.error) return html`<span class="err">${r.error}</span>`;
    if (detection) {
      const counts = {};
      for (const b of r.boxes || []) counts[b.label] = (counts[b.label] || 0) + 1;
      return Object.entries(counts).map(([label, n]) => `${n} ${label}`).join(" · ") || html`<span class="muted">nothing above ${data.threshold}</span>`;
    }
    return (r.areas || []).map((a) => `${a.label} ${fmtPct(a.fraction, 0)}`).join(" · ");
  };
  return html`<div class="table-wrap"><table class="t" data-testid="dense-rows" data-task=${data.task}><thead><tr><th>File</th><th class="num">${detection ? "Boxes" : "Classes"}</th><th>${detection ? `Objects (score ≥ ${data.threshold})` : "Area"}</th><th class="num">Best score</th></tr></thead>
    <tbody>${data.items.map((r) => html`<tr><td class="mono">${r.filename}</td><td class="num">${detection ? (r.boxes || []).length : (r.areas || []).length}</td><td class="small">${summary(r)}</td>
      <td class="num">${detection && r.boxes && r.boxes.length ? fmtPct(r.boxes[0].score, 1) : ""}</td></tr>`)}</tbody></table></div>`;
}

export function InferenceView({ initial }) {
  const job = useFinalJob(initial);
  const [page, setPage] = useQueryState("page", "1");
  const [data, setData] = useState(null);
  const [error, setError] = useState(null);
  useEffect(() => { if (job.status === "done") api(`/jobs/${job.id}/results?page=${page}&per_page=100`).then(setData, setError); }, [job.status, page]);
  const pages = data ? Math.max(1, Math.ceil(data.total / data.per_page)) : 1;
  return html`<main class="page" data-testid="inference">
    <${Head} job=${job} title=${job.request.task && job.request.task !== "classification" ? "Prediction results" : "Inference results"} />
    <${Problem} error=${error} />
    ${data && html`<div class="card">
      <div class="toolbar"><b>${fmtNum(data.total)} images</b><span class="grow"></span><a class="btn small" href=${`${API}/jobs/${job.id}/results?format=csv`} download>Download CSV</a></div>
      ${data.task ? html`<${DensePredictionRows} data=${data} />` : html`<div class="table-wrap"><table class="t"><thead><tr><th>File</th><th>Top prediction</th><th class="num">Probability</th><th>Others</th></tr></thead>
        <tbody>${data.items.map((r) => html`<tr><td class="mono">${r.filename}</td><td><b>${r.top[0] && r.top[0].label}</b></td><td class="num">${r.top[0] && fmtPct(r.top[0].probability, 1)}</td>
          <td class="small muted">${r.top.slice(1).map((p) => `${p.label} ${fmtPct(p.probability, 0)}`).join(" · ")}</td></tr>`)}</tbody></table></div>`}
      <div class="table-foot"><span class="grow"></span><button class="small" disabled=${Number(page) <= 1} onClick=${() => setPage(String(Number(page) - 1))}>Previous</button>
        <span>Page ${page} of ${pages}</span><button class="small" disabled=${Number(page) >= pages} onClick=${() => setPage(String(Number(page) + 1))}>Next</button></div>
    </div>`}
  </main>`;
}
