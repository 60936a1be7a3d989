// /models: pretrained models (list, upload an archive or weights + info, delete).
import { html, useState } from "../lib.js";
import { api, upload } from "../api.js";
import { DropZone, Empty, Problem, Progress, confirmDialog, toast, usePoll } from "../components.js";
import { fmtAgo, shortId } from "../util/format.js";

function UploadCard({ onDone }) {
  const [files, setFiles] = useState({});
  const [name, setName] = useState("");
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const set = (k) => (f) => setFiles({ ...files, [k]: f[0] });
  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    const form = new FormData();
    if (name.trim()) form.append("name", name.trim());
    for (const [k, f] of Object.entries(files)) if (f) form.append(k, f, f.name);
    setProgress(0);
    try { await upload("/pretrained-models", form, setProgress); toast("Model uploaded"); setFiles({}); setName(""); onDone(); } catch (err) { setError(err); } finally { setProgress(null); }
  };
  const pick = (k, label, accept) => html`<${DropZone} accept=${accept} onFiles=${set(k)}>${files[k] ? html`<b>${files[k].name}</b>` : label}<//>`;
  return html`<form class="card" onSubmit=${submit}><div class="card-head"><h2>Upload a model</h2></div><div class="card-body form">
    <div class="field"><label for="m-name">Name</label><input id="m-name" value=${name} onInput=${(e) => setName(e.target.value)} placeholder="from the archive's info.json when empty" /></div>
    ${pick("archive", html`<b>Drop a model archive</b> (what Download gives: .tar.gz or .zip)`, ".zip,.tar,.tgz,.gz")}
    <div class="small faint">…or its files one by one:</div>
    <div class="grid cols-2">
      ${pick("weights", "weights.safetensors", ".safetensors")}${pick("info", "info.json", ".json")}
      ${pick("labels", "labels.txt (optional)", ".txt")}${pick("mean", "mean.npy (optional)", ".npy")}
    </div>
    <${Problem} error=${error} />
    ${progress !== null && html`<${Progress} value=${progress} />`}
    <div class="row"><span class="grow"></span><button class="primary" type="submit" disabled=${progress !== null || (!files.archive && !files.weights)}>Upload</button></div>
  </div></form>`;
}

export function ModelsPage() {
  const [models, setModels] = useState(null);
  const [error, setError] = useState(null);
  const load = async () => { try { setModels(await api("/pretrained-models")); setError(null); } catch (err) { setError(err); } };
  usePoll(load, 30000);
  const remove = async (m) => {
    if (!(await confirmDialog(`Delete ${m.name}?`, "Jobs that started from it keep their own weights."))) return;
    try { await api(`/pretrained-models/${m.id}`, { method: "DELETE" }); toast("Deleted"); load(); } catch (err) { toast(err.message, { error: true }); }
  };
  return html`<main class="page" data-testid="models">
    <div class="page-head"><div class="title"><h1>Pretrained models</h1><div class="sub">Start new jobs from them (Network → Pretrained); make one from any job's checkpoint.</div></div></div>
    <${Problem} error=${error} />
    <div class="grid sidebar">
      <div class="card"><div class="table-wrap"><table class="t" data-testid="models-table">
        <thead><tr><th>Name</th><th>Network</th><th class="num">Classes</th><th>Input</th><th>From job</th><th>Created</th><th></th></tr></thead>
        <tbody>${(models || []).map((m) => html`<tr>
          <td><b>${m.name}</b> <span class="mono faint">${shortId(m.id)}</span></td>
          <td>${m.network && (m.network.name || m.network.kind) || "–"}</td>
          <td class="num" title=${m.classes.join(", ")}>${m.classes.length}</td>
          <td>${m.image_width}×${m.image_height}×${m.image_channels} · ${m.resize_mode}</td>
          <td>${m.source_job_id ? html`<a href=${`/jobs/${m.source_job_id}`}>${shortId(m.source_job_id)}</a>` : "uploaded"}</td>
          <td class="muted">${fmtAgo(m.created_at)}</td>
          <td class="right"><button class="small ghost danger" onClick=${() => remove(m)}>Delete</button></td>
        </tr>`)}</tbody>
      </table>${models && models.length === 0 && html`<${Empty} title="No pretrained models yet">Use “Make pretrained” on a job, or upload one.<//>`}</div></div>
      <${UploadCard} onDone=${load} />
    </div>
  </main>`;
}
