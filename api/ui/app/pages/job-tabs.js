// The job page's tabs: logs (tail, follow, search), checkpoints, classify, evaluate.
import { html, useEffect, useRef, useState } from "../lib.js";
import { API, allPages, api, upload } from "../api.js";
import { navigate } from "../router.js";
import { DropZone, Empty, Problem, Status, toast } from "../components.js";
import { fmtAgo, fmtBytes, fmtNum, fmtPct, metricLabel } from "../util/format.js";

const TAIL = 2000;

export function LogsTab({ job, logSubs }) {
  const [text, setText] = useState("");
  const [needle, setNeedle] = useState("");
  const [followOn, setFollow] = useState(true);
  const [error, setError] = useState(null);
  const box = useRef(null);
  const offset = useRef(null);
  const running = job.status === "running" || job.status === "waiting";

  useEffect(() => {
    let stop = false;
    let timer = null;
    const trim = (t) => { const lines = t.split("\n"); return lines.length > TAIL * 2 ? lines.slice(-TAIL * 2).join("\n") : t; };
    const first = async () => {
      const resp = await api(`/jobs/${job.id}/logs?tail=${TAIL}`, { raw: true });
      const next = resp.headers.get("X-Log-Offset");
      offset.current = next === null ? null : Number(next);
      const body = await resp.text();
      if (!stop) setText(body);
    };
    const poll = async () => {
      if (stop) return;
      try {
        if (offset.current !== null) {
          const resp = await api(`/jobs/${job.id}/logs?offset=${offset.current}`, { raw: true });
          const next = resp.headers.get("X-Log-Offset");
          const more = await resp.text();
          if (next !== null) offset.current = Number(next);
          if (more && !stop) setText((t) => trim(t + more));
        } else {
          await first();
        }
        setError(null);
      } catch (err) {
        setError(err);
      }
      if (running && !stop) timer = setTimeout(poll, 1500);
    };
    first().then(() => { if (running) timer = setTimeout(poll, 1500); }, setError);
    // log lines pushed on the event stream, when the server sends them
    const onLog = (data) => {
      if (!Array.isArray(data.lines)) return;
      if (offset.current !== null && data.offset !== undefined && data.offset <= offset.current) return;
      if (data.offset !== undefined) offset.current = data.offset;
      setText((t) => trim(t + data.lines.join("\n") + "\n"));
    };
    logSubs.add(onLog);
    return () => { stop = true; clearTimeout(timer); logSubs.delete(onLog); };
  }, [job.id, running]);

  useEffect(() => { if (followOn && box.current) box.current.scrollTop = box.current.scrollHeight; });

  const lines = text.split("\n");
  const q = needle.trim().toLowerCase();
  const shown = q ? lines.filter((l) => l.toLowerCase().includes(q)) : lines;
  return html`<div class="card" data-testid="logs">
    <div class="toolbar">
      <input data-search type="search" placeholder="Search the log  ( / )" value=${needle} onInput=${(e) => setNeedle(e.target.value)} style=${{ width: "280px" }} aria-label="Search the log" />
      ${q && html`<span class="small muted">${shown.length} matching line${shown.length === 1 ? "" : "s"}</span>`}
      <label class="row small"><input type="checkbox" checked=${followOn} onChange=${(e) => setFollow(e.target.checked)} /> follow</label>
      <span class="grow"></span>
      <a class="btn small" href=${`${API}/jobs/${job.id}/logs`} target="_blank" rel="noopener">Raw log</a>
    </div>
    <div class="card-body">
      <${Problem} error=${error} />
      <pre class="log" ref=${box} onScroll=${(e) => { const el = e.target; if (el.scrollHeight - el.scrollTop - el.clientHeight > 40 && followOn) setFollow(false); }}>${shown.map((l) => html`<div class=${/error|traceback|exception/i.test(l) ? "ln-err" : ""}>${q ? highlight(l, q) : l || " "}</div>`)}</pre>
    </div>
  </div>`;
}

function highlight(line, q) {
  const parts = [];
  const low = line.toLowerCase();
  let i = 0;
  for (;;) {
    const j = low.indexOf(q, i);
    if (j < 0) break;
    parts.push(line.slice(i, j), html`<mark>${line.slice(j, j + q.length)}</mark>`);
    i = j + q.length;
  }
  parts.push(line.slice(i));
  return parts;
}

export function CheckpointsTab({ job, checkpoints, onDownload, onPretrained, onClassify }) {
  if (!checkpoints.length) return html`<div class="card"><${Empty} title="No checkpoints yet">Snapshots appear every ${(job.request.hyperparameters || {}).snapshot_interval ?? 1} epoch(s).<//></div>`;
  const names = Array.from(new Set(checkpoints.flatMap((c) => Object.keys(c.metrics || {})))).sort();
  return html`<div class="card"><div class="table-wrap"><table class="t" data-testid="checkpoints">
    <thead><tr><th>Checkpoint</th><th class="num">Epoch</th><th class="num">Step</th>${names.map((n) => html`<th class="num">${metricLabel(n)}</th>`)}<th class="num">Size</th><th>Saved</th><th></th></tr></thead>
    <tbody>${checkpoints.map((c) => html`<tr>
      <td><b>${c.name}</b></td><td class="num">${fmtNum(c.epoch, 3)}</td><td class="num">${fmtNum(c.step)}</td>
      ${names.map((n) => html`<td class="num">${c.metrics[n] === undefined ? "–" : n.includes("accuracy") || n.includes("top5") ? fmtPct(c.metrics[n], 2) : fmtNum(c.metrics[n])}</td>`)}
      <td class="num">${fmtBytes(c.size_bytes)}</td><td class="muted">${fmtAgo(c.created_at)}</td>
      <td class="right nowrap"><button class="small ghost" onClick=${onClassify}>Classify</button><button class="small ghost" onClick=${onDownload}>Download</button><button class="small ghost" onClick=${onPretrained}>Pretrained</button></td>
    </tr>`)}</tbody>
  </table></div></div>`;
}

function useDefaultCheckpoint(checkpoints) {
  const [ckpt, setCkpt] = useState("best");
  // the list may arrive after the tab opens: pick best when it exists, else last
  useEffect(() => {
    if (checkpoints.length && !checkpoints.some((c) => c.name === ckpt)) setCkpt(checkpoints.some((c) => c.name === "best") ? "best" : checkpoints[0].name);
  }, [checkpoints.length]);
  return [ckpt, setCkpt];
}

const EXPLAIN_METHODS = [
  ["", "no explanation"],
  ["gradcam", "Grad-CAM"],
  ["gradcampp", "Grad-CAM++"],
  ["layercam", "LayerCAM"],
  ["integrated_gradients", "Integrated Gradients"],
  ["occlusion", "Occlusion"],
];
// how many images one interactive explanation takes (more make a job)
const EXPLAIN_MAX = { integrated_gradients: 4, occlusion: 4 };

export function ClassifyTab({ job, checkpoints }) {
  const [ckpt, setCkpt] = useDefaultCheckpoint(checkpoints);
  const [topK, setTopK] = useState("5");
  const [method, setMethod] = useState("");
  const [overlay, setOverlay] = useState(true);
  const [results, setResults] = useState([]);
  const [layers, setLayers] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  useEffect(() => () => results.forEach((r) => URL.revokeObjectURL(r.url)), []);
  const explain = async (files) => {
    const form = new FormData();
    for (const f of files.slice(0, EXPLAIN_MAX[method] || 32)) form.append("images", f, f.name);
    form.append("checkpoint", ckpt);
    form.append("method", method);
    const body = await upload(`/jobs/${job.id}/explain`, form);
    return body.explanations || [];
  };
  const run = async (files) => {
    setError(null);
    setBusy(true);
    const form = new FormData();
    for (const f of files) form.append("images", f, f.name);
    form.append("checkpoint", ckpt);
    form.append("top_k", topK);
    try {
      const body = await upload(`/jobs/${job.id}/classify`, form);
      if (body.kind === "inference") { toast("Many images: queued as an inference job"); navigate(`/jobs/${body.id}`); return; }
      const maps = method ? await explain(files) : [];
      const made = body.predictions.map((p, i) => ({
        ...p,
        url: URL.createObjectURL(files[i]),
        ms: body.milliseconds,
        checkpoint: body.checkpoint,
        file: files[i],
        explanation: maps[i] || null,
      }));
      setResults((old) => [...made, ...old].slice(0, 60));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  const inspect = async (file) => {
    setError(null);
    setBusy(true);
    const form = new FormData();
    form.append("images", file, file.name);
    form.append("checkpoint", ckpt);
    form.append("visualize", "true");
    try {
      const body = await upload(`/jobs/${job.id}/classify`, form);
      setLayers({ file: file.name, layers: body.layers || [] });
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  if (!checkpoints.length) return html`<div class="card"><${Empty} title="Nothing to classify with yet">The job has saved no checkpoint.<//></div>`;
  return html`<div class="stack" data-testid="classify">
    <div class="card"><div class="card-body stack">
      <div class="row wrap">
        <div class="field"><label for="cl-ck">Checkpoint</label><select id="cl-ck" value=${ckpt} onChange=${(e) => setCkpt(e.target.value)}>${checkpoints.map((c) => html`<option value=${c.name}>${c.name} · epoch ${fmtNum(c.epoch, 3)}</option>`)}</select></div>
        <div class="field"><label for="cl-k">Top</label><select id="cl-k" value=${topK} onChange=${(e) => setTopK(e.target.value)}>${["1", "3", "5", "10"].map((k) => html`<option value=${k}>${k}</option>`)}</select></div>
        <div class="field"><label for="cl-ex">Why</label><select id="cl-ex" data-testid="explain-method" value=${method} onChange=${(e) => setMethod(e.target.value)}>${EXPLAIN_METHODS.map(([v, l]) => html`<option value=${v}>${l}</option>`)}</select></div>
        ${method && html`<label style=${{ alignSelf: "flex-end" }}><input type="checkbox" data-testid="overlay-toggle" checked=${overlay} onChange=${(e) => setOverlay(e.target.checked)} /> heatmap overlay</label>`}
        ${results[0] && html`<span class="small muted" style=${{ alignSelf: "flex-end" }}>last answer in ${fmtNum(results[0].ms, 3)} ms (${results[0].checkpoint})</span>`}
      </div>
      <${DropZone} multiple accept="image/*" onFiles=${run} testid="classify-drop">
        ${busy ? "Classifying…" : html`<b>Drop images here</b> or click to choose; the model service answers while training goes on`}
      <//>
      <${Problem} error=${error} />
    </div></div>
    ${results.length > 0 && html`<div class="preds" data-testid="predictions">${results.map((r) => {
      const shown = overlay && r.explanation ? `data:image/png;base64,${r.explanation.overlay_png}` : r.url;
      return html`<div class="card pred">
      <img src=${shown} alt=${r.filename} data-testid=${r.explanation && overlay ? "overlay" : "input"} />
      <div class="stack" style=${{ gap: "6px" }}>
        <div class="small mono faint" style=${{ overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }}>${r.filename}</div>
        ${r.top.map((p) => html`<div class="bar-row" data-label=${p.label}><span class="lab">${p.label}</span><div class="bar"><div style=${{ width: fmtPct(p.probability, 1) }}></div></div><span class="mono right">${fmtPct(p.probability, 1)}</span></div>`)}
        ${r.explanation && html`<div class="small faint">${r.explanation.method} of “${r.explanation.target?.label ?? r.explanation.target}” at layer <span class="mono">${r.explanation.layer}</span>${r.explanation.note ? ` · ${r.explanation.note}` : ""}</div>`}
        <button class="small" style=${{ justifySelf: "start" }} data-testid="layer-view" onClick=${() => inspect(r.file)}>Layer view</button>
      </div>
    </div>`;
    })}</div>`}
    ${layers && html`<${LayerView} view=${layers} onClose=${() => setLayers(null)} />`}
  </div>`;
}

function Histogram({ hist }) {
  if (!hist || !hist.counts) return null;
  const top = Math.max(1, ...hist.counts);
  return html`<div class="minihist" title=${`${hist.edges[0].toPrecision(3)} … ${hist.edges[hist.edges.length - 1].toPrecision(3)}`}>${hist.counts.map((c) => html`<div style=${{ height: `${(100 * c) / top}%` }}></div>`)}</div>`;
}

function stats(s) {
  return s ? `mean ${fmtNum(s.mean, 3)} · std ${fmtNum(s.std, 3)}` : "–";
}

// DIGITS's "classify one" layer view: each layer's output, weights and activations
function LayerView({ view, onClose }) {
  return html`<div class="card" data-testid="layers">
    <div class="card-head"><h3>Layers of the network on ${view.file}</h3><button class="small" onClick=${onClose}>Close</button></div>
    <div class="table-wrap"><table class="t">
      <thead><tr><th>Layer</th><th>Output</th><th class="num">Parameters</th><th>Weights</th><th>Activations</th><th>Maps</th></tr></thead>
      <tbody>${view.layers.map((l) => html`<tr data-testid="layer-row">
        <td><span class="mono">${l.name}</span> <span class="faint small">${l.type}</span></td>
        <td class="mono small">${(l.output_shape || []).join("×")}</td>
        <td class="num mono">${fmtNum(l.param_count, 6)}</td>
        <td><${Histogram} hist=${l.weights?.histogram} /><div class="faint small">${stats(l.weights)}</div></td>
        <td><${Histogram} hist=${l.activations?.histogram} /><div class="faint small">${stats(l.activations)}</div></td>
        <td>${l.activations_png && html`<img class="tiles" src=${`data:image/png;base64,${l.activations_png}`} alt="activations" />`}${l.filters_png && html`<img class="tiles" src=${`data:image/png;base64,${l.filters_png}`} alt="filters" />`}</td>
      </tr>`)}</tbody>
    </table></div>
  </div>`;
}

export function EvaluateTab({ job, checkpoints }) {
  const [ckpt, setCkpt] = useDefaultCheckpoint(checkpoints);
  const [source, setSource] = useState("val");
  const [topN, setTopN] = useState("9");
  const [archive, setArchive] = useState(null);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [evals, setEvals] = useState(null);
  useEffect(() => {
    allPages("/jobs?", { perPage: 200, max: 2000 }).then((all) => setEvals(all.filter((j) => j.kind === "evaluate" && j.request.source_job_id === job.id)), () => setEvals([]));
  }, [job.id]);
  const run = async (e) => {
    e.preventDefault();
    setError(null);
    const form = new FormData();
    form.append("checkpoint", ckpt);
    form.append("top_n", topN);
    if (source === "archive") {
      if (!archive) { setError({ problem: { title: "Archive needed", detail: "drop a labelled archive (class folders)" } }); return; }
      form.append("archive", archive, archive.name);
    } else form.append("split", source);
    setBusy(true);
    try {
      const ev = await upload(`/jobs/${job.id}/evaluate`, form);
      navigate(`/jobs/${ev.id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  return html`<div class="grid cols-2" data-testid="evaluate">
    <form class="card" onSubmit=${run}><div class="card-head"><h2>Evaluate</h2></div><div class="card-body form">
      <div class="fields">
        <div class="field"><label for="ev-src">Images</label><select id="ev-src" value=${source} onChange=${(e) => setSource(e.target.value)}>
          <option value="val">the dataset's val split</option><option value="test">the dataset's test split</option><option value="train">the dataset's train split</option><option value="archive">a labelled archive</option></select></div>
        <div class="field"><label for="ev-ck">Checkpoint</label><select id="ev-ck" value=${ckpt} onChange=${(e) => setCkpt(e.target.value)}>${checkpoints.map((c) => html`<option value=${c.name}>${c.name}</option>`)}</select></div>
        <div class="field"><label for="ev-n">Top images per class</label><input id="ev-n" type="number" min="0" max="100" value=${topN} onInput=${(e) => setTopN(e.target.value)} /></div>
      </div>
      ${source === "archive" && html`<${DropZone} accept=".zip,.tar,.tgz,.gz" onFiles=${(f) => setArchive(f[0])}>${archive ? html`<b>${archive.name}</b>` : html`<b>Drop an archive</b> ${(job.request.task || "classification") === "classification" ? "of class folders with the job's class names" : "with annotations in any format the dataset import reads (COCO, VOC, KITTI, YOLO, or image and mask pairs)"}`}<//>`}
      <${Problem} error=${error} />
      <div class="row"><span class="grow"></span><button class="primary" type="submit" disabled=${busy || !checkpoints.length} data-action="evaluate">${busy ? "Starting…" : "Evaluate"}</button></div>
    </div></form>
    <div class="card"><div class="card-head"><h2>Evaluations of this job</h2></div>
      ${evals && evals.length ? html`<div class="table-wrap"><table class="t"><thead><tr><th>Evaluation</th><th>Status</th><th>Split</th><th>Created</th></tr></thead>
        <tbody>${evals.map((e) => html`<tr><td><a class="name" href=${`/jobs/${e.id}`}>${e.request.split || "archive"} · ${e.request.checkpoint}</a></td><td><${Status} status=${e.status} /></td><td>${e.request.dataset_id ? e.request.split : "archive"}</td><td class="muted">${fmtAgo(e.created_at)}</td></tr>`)}</tbody></table></div>`
        : html`<${Empty} title=${evals ? "None yet" : "Loading…"}>Top-1/top-5, a confusion matrix and per-class precision and recall.<//>`}
    </div>
  </div>`;
}

/** Detection and segmentation: drop images, see the boxes or the mask drawn, with the numbers. */
export function PredictTab({ job, checkpoints }) {
  const [ckpt, setCkpt] = useDefaultCheckpoint(checkpoints);
  const [threshold, setThreshold] = useState("0.5");
  const [results, setResults] = useState([]);
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const detection = job.request.task === "detection";
  const run = async (files) => {
    setError(null);
    setBusy(true);
    const form = new FormData();
    // an archive (or more images than the service answers at once) becomes a prediction job
    const isArchive = (f) => /\.(zip|tar|tgz|gz)$/i.test(f.name);
    if (files.filter(isArchive).length > 1) {
      setError({ problem: { title: "One archive at a time", detail: "drop one archive, or the images themselves" } });
      setBusy(false);
      return;
    }
    for (const f of files) form.append(isArchive(f) ? "archive" : "images", f, f.name);
    form.append("checkpoint", ckpt);
    if (detection) form.append("threshold", threshold);
    try {
      const body = await upload(`/jobs/${job.id}/predict`, form);
      if (body.kind === "inference") { toast("Queued as a prediction job"); navigate(`/jobs/${body.id}`); return; }
      const made = body.predictions.map((p) => ({ ...p, ms: body.milliseconds, checkpoint: body.checkpoint, threshold: body.threshold }));
      setResults((old) => [...made, ...old].slice(0, 60));
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };
  if (!checkpoints.length) return html`<div class="card"><${Empty} title="Nothing to predict with yet">The job has saved no checkpoint.<//></div>`;
  return html`<div class="stack" data-testid="predict">
    <div class="card"><div class="card-body stack">
      <div class="row wrap">
        <div class="field"><label for="pr-ck">Checkpoint</label><select id="pr-ck" value=${ckpt} onChange=${(e) => setCkpt(e.target.value)}>${checkpoints.map((c) => html`<option value=${c.name}>${c.name} · epoch ${fmtNum(c.epoch, 3)}</option>`)}</select></div>
        ${detection && html`<div class="field"><label for="pr-th">Lowest score</label><select id="pr-th" data-testid="threshold" value=${threshold} onChange=${(e) => setThreshold(e.target.value)}>${["0.05", "0.25", "0.5", "0.75", "0.9"].map((k) => html`<option value=${k}>${k}</option>`)}</select></div>`}
        ${results[0] && html`<span class="small muted" style=${{ alignSelf: "flex-end" }}>last answer in ${fmtNum(results[0].ms, 3)} ms (${results[0].checkpoint})</span>`}
      </div>
      <${DropZone} multiple accept="image/*,.zip,.tar,.tgz,.gz" onFiles=${run} testid="predict-drop">
        ${busy ? (detection ? "Detecting…" : "Segmenting…") : html`<b>Drop images here</b> or click to choose; ${detection ? "boxes are drawn at the training size and listed in the image's own pixels" : "the mask is blended over the image"}. An archive, or many images, becomes a prediction job.`}
      <//>
      <${Problem} error=${error} />
    </div></div>
    ${results.length > 0 && html`<div class="preds" data-testid="dense-predictions">${results.map((r) => html`<div class="card pred" data-threshold=${r.threshold}>
      ${r.overlay_png ? html`<img src=${`data:image/png;base64,${r.overlay_png}`} alt=${r.filename} data-testid="prediction-overlay" style=${{ imageRendering: "pixelated" }} />` : html`<div></div>`}
      <div class="stack" style=${{ gap: "6px" }}>
        <div class="small mono faint" style=${{ overflow: "hidden", textOverflow: "ellipsis", whiteSpace: "nowrap" }}>${r.filename}</div>
        ${r.error && html`<div class="problem small">${r.error}</div>`}
        ${r.boxes && (r.boxes.length ? r.boxes.slice(0, 12).map((b) => html`<div class="bar-row" data-label=${b.label}><span class="lab">${b.label}</span><div class="bar"><div style=${{ width: fmtPct(b.score, 1) }}></div></div><span class="mono right" title=${b.box.map((v) => v.toFixed(0)).join(", ")}>${fmtPct(b.score, 1)}</span></div>`) : html`<span class="faint small">no box scored ${r.threshold} or more</span>`)}
        ${r.boxes && r.boxes.length > 12 && html`<span class="faint small">and ${r.boxes.length - 12} more</span>`}
        ${r.areas && r.areas.map((a) => html`<div class="bar-row" data-label=${a.label}><span class="lab">${a.label}</span><div class="bar"><div style=${{ width: fmtPct(a.fraction, 1) }}></div></div><span class="mono right">${fmtPct(a.fraction, 1)}</span></div>`)}
      </div>
    </div>`)}</div>`}
  </div>`;
}
