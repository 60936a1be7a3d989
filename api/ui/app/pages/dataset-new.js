// /datasets/new: DIGITS's three import methods, every option with its default, upload progress.
import { html, useState } from "../lib.js";
import { fieldErrors, upload } from "../api.js";
import { navigate } from "../router.js";
import { DropZone, Problem, Progress } from "../components.js";
import { fmtBytes } from "../util/format.js";

// DIGITS's defaults (DatasetOptions on the server)
const DEFAULTS = {
  name: "", group: "", image_width: "256", image_height: "256", channels: "3", resize_mode: "squash",
  val_pct: "25", test_pct: "0", min_per_class: "2", max_per_class: "", encoding: "auto",
  shuffle: true, seed: "", train_path: "", val_path: "", test_path: "", image_root: "",
  task: "classification", annotation_format: "auto", class_names: "",
};

const TASK_HELP = {
  classification: "One folder per class",
  detection: "Images with boxes: COCO .json, Pascal VOC .xml, KITTI or YOLO .txt",
  segmentation: "images/ and masks/ with the same names (palette or grey class indices, 255 ignored)",
};

const RESIZE_HELP = {
  squash: "Stretch to the size, ignoring the aspect ratio",
  crop: "Scale the short side, centre-crop the long one",
  fill: "Scale the long side, pad the rest with noise",
  half_crop: "Half crop, half fill",
};

export function Field({ label, name, help, errors, children, wide = false }) {
  const err = errors && errors[name];
  return html`<div class=${`field${err ? " invalid" : ""}`} style=${wide ? { gridColumn: "1 / -1" } : undefined} data-field=${name}>
    <label for=${`f-${name}`}>${label}</label>
    ${children}
    ${err ? html`<span class="err">${err}</span>` : help && html`<span class="help">${help}</span>`}
  </div>`;
}

function FilePick({ label, file, onFile, accept, testid }) {
  return html`<${DropZone} accept=${accept} onFiles=${(f) => onFile(f[0])} testid=${testid}>
    ${file ? html`<b>${file.name}</b> <span class="faint">${fmtBytes(file.size)}</span> · <a href="#" onClick=${(e) => { e.preventDefault(); e.stopPropagation(); onFile(null); }}>remove</a>`
      : html`<span>${label}</span>`}
  <//>`;
}

export function NewDatasetPage() {
  const [method, setMethod] = useState("upload");
  const [v, setV] = useState(DEFAULTS);
  const [files, setFiles] = useState({});
  const [progress, setProgress] = useState(null);
  const [error, setError] = useState(null);
  const errors = fieldErrors(error);
  const set = (k) => (e) => setV({ ...v, [k]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const setFile = (k) => (f) => setFiles({ ...files, [k]: f });
  const input = (k, props = {}) => html`<input id=${`f-${k}`} name=${k} value=${v[k]} onInput=${set(k)} ...${props} />`;

  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    const form = new FormData();
    const opts = { ...v };
    if (!opts.name.trim()) { setError({ problem: { title: "Name needed", detail: "give the dataset a name", errors: [{ loc: ["name"], msg: "required" }] } }); return; }
    if (opts.task === "classification") { delete opts.annotation_format; delete opts.class_names; }
    if (opts.task === "segmentation") delete opts.annotation_format;
    const keep = method === "upload" ? ["train_path", "val_path", "test_path", "image_root"] : method === "folder" ? ["image_root"] : ["train_path", "val_path", "test_path"];
    for (const [k, val] of Object.entries(opts)) {
      if (keep.includes(k)) continue;
      if (val === "" || val === null) continue;
      form.append(k, typeof val === "boolean" ? String(val) : String(val).trim());
    }
    const wanted = method === "upload" ? ["archive", "val_archive", "test_archive"] : method === "textfile" ? ["train_list", "val_list", "test_list", "labels"] : [];
    for (const k of wanted) if (files[k]) form.append(k, files[k], files[k].name);
    if (method === "upload" && !files.archive) { setError({ problem: { title: "Archive needed", detail: "drop a .zip or .tar.gz of class folders", errors: [{ loc: ["archive"], msg: "required" }] } }); return; }
    setProgress(0);
    try {
      const ds = await upload("/datasets", form, setProgress);
      navigate(`/datasets/${ds.id}`);
    } catch (err) {
      setError(err);
      setProgress(null);
    }
  };

  return html`<main class="page narrow" data-testid="dataset-new">
    <div class="crumbs"><a href="/">Jobs</a> / Datasets</div>
    <div class="page-head"><div class="title"><h1>New image dataset</h1>
      <div class="sub">Images in one folder per class, as DIGITS imports them: an uploaded archive, folders on the server, or text files of <code>path label</code> lines. Or, for detection and segmentation, images with their boxes or masks.</div></div></div>
    <form class="form" onSubmit=${submit} novalidate>
      <div class="card"><div class="card-body form">
        <div class="tabs" role="tablist">
          ${[["upload", "Upload an archive"], ["folder", "Server folders"], ["textfile", "Text files"]].map(([id, label]) => html`
            <button type="button" role="tab" class=${method === id ? "on" : ""} aria-selected=${method === id} onClick=${() => setMethod(id)}>${label}</button>`)}
        </div>
        ${method === "upload" && html`<div class="stack">
          <${Field} label="Training images" name="archive" errors=${errors}>
            <${FilePick} file=${files.archive} onFile=${setFile("archive")} accept=".zip,.tar,.tgz,.gz,.tar.gz" testid="archive-drop"
              label=${html`<b>Drop a .zip or .tar.gz</b> of ${v.task === "classification" ? "class folders" : "images and annotations"} here, or click to choose`} />
          <//>
          <div class="grid cols-2">
            <${Field} label="Separate validation images (optional)" name="val_archive" errors=${errors}>
              <${FilePick} file=${files.val_archive} onFile=${setFile("val_archive")} accept=".zip,.tar,.tgz,.gz" label="Drop an archive" />
            <//>
            <${Field} label="Separate test images (optional)" name="test_archive" errors=${errors}>
              <${FilePick} file=${files.test_archive} onFile=${setFile("test_archive")} accept=".zip,.tar,.tgz,.gz" label="Drop an archive" />
            <//>
          </div>
        </div>`}
        ${method === "folder" && html`<div class="fields">
          <${Field} label="Training images folder" name="train_path" errors=${errors} help="An absolute path under the server's import roots" wide>${input("train_path", { placeholder: "/data/images/train" })}<//>
          <${Field} label="Separate validation folder" name="val_path" errors=${errors} help="Optional; else % for validation below">${input("val_path")}<//>
          <${Field} label="Separate test folder" name="test_path" errors=${errors} help="Optional">${input("test_path")}<//>
        </div>`}
        ${method === "textfile" && html`<div class="stack">
          <div class="grid cols-2">
            <${Field} label="Training list" name="train_list" errors=${errors} help="Lines of path label">
              <${FilePick} file=${files.train_list} onFile=${setFile("train_list")} accept=".txt,text/plain" label="Drop train.txt" /><//>
            <${Field} label="Labels" name="labels" errors=${errors} help="Line i names class i">
              <${FilePick} file=${files.labels} onFile=${setFile("labels")} accept=".txt,text/plain" label="Drop labels.txt" /><//>
            <${Field} label="Validation list (optional)" name="val_list" errors=${errors}>
              <${FilePick} file=${files.val_list} onFile=${setFile("val_list")} accept=".txt,text/plain" label="Drop val.txt" /><//>
            <${Field} label="Test list (optional)" name="test_list" errors=${errors}>
              <${FilePick} file=${files.test_list} onFile=${setFile("test_list")} accept=".txt,text/plain" label="Drop test.txt" /><//>
          </div>
          <div class="fields">
            <${Field} label="Image folder" name="image_root" errors=${errors} help="Relative paths in the lists start here" wide>${input("image_root", { placeholder: "/data/images" })}<//>
            <div class="field check"><input id="f-shuffle" type="checkbox" checked=${v.shuffle} onChange=${set("shuffle")} /><label for="f-shuffle">Shuffle the lines</label></div>
          </div>
        </div>`}
      </div></div>

      <div class="card"><div class="card-head"><h2>Images</h2></div><div class="card-body">
        <div class="fields">
          <${Field} label="Task" name="task" errors=${errors} help=${TASK_HELP[v.task]}>
            <select id="f-task" value=${v.task} onChange=${set("task")}>
              ${Object.keys(TASK_HELP).map((m) => html`<option value=${m}>${m}</option>`)}
            </select><//>
          ${v.task === "detection" && html`<${Field} label="Box format" name="annotation_format" errors=${errors} help="auto: told from the files">
            <select id="f-annotation_format" value=${v.annotation_format} onChange=${set("annotation_format")}>
              ${["auto", "coco", "voc", "kitti", "yolo"].map((m) => html`<option value=${m}>${m}</option>`)}
            </select><//>`}
          ${v.task !== "classification" && html`<${Field} label="Classes to keep" name="class_names" errors=${errors} help="Comma-separated; empty: the files' own">${input("class_names", { placeholder: "car, person" })}<//>`}
          <${Field} label="Image width" name="image_width" errors=${errors} help="Pixels (DIGITS: 256)">${input("image_width", { type: "number", min: 1, max: 4096 })}<//>
          <${Field} label="Image height" name="image_height" errors=${errors} help="Pixels (DIGITS: 256)">${input("image_height", { type: "number", min: 1, max: 4096 })}<//>
          <${Field} label="Image type" name="channels" errors=${errors}>
            <select id="f-channels" value=${v.channels} onChange=${set("channels")}><option value="3">Color (RGB)</option><option value="1">Grayscale</option></select><//>
          <${Field} label="Resize transformation" name="resize_mode" errors=${errors} help=${RESIZE_HELP[v.resize_mode]}>
            <select id="f-resize_mode" value=${v.resize_mode} onChange=${set("resize_mode")}>
              ${Object.keys(RESIZE_HELP).map((m) => html`<option value=${m}>${m.replace("_", " ")}</option>`)}
            </select><//>
          <${Field} label="Encoding" name="encoding" errors=${errors} help="auto: raw up to 128×128×3, else PNG">
            <select id="f-encoding" value=${v.encoding} onChange=${set("encoding")}>
              ${["auto", "raw", "png", "jpg"].map((m) => html`<option value=${m}>${m}</option>`)}
            </select><//>
        </div>
      </div></div>

      <div class="card"><div class="card-head"><h2>Splits and classes</h2></div><div class="card-body">
        <div class="fields">
          <${Field} label="% for validation" name="val_pct" errors=${errors} help="Of each class (DIGITS: 25)">${input("val_pct", { type: "number", min: 0, max: 100, step: "any" })}<//>
          <${Field} label="% for testing" name="test_pct" errors=${errors} help="Of each class (DIGITS: 0)">${input("test_pct", { type: "number", min: 0, max: 100, step: "any" })}<//>
          <${Field} label="Minimum images per class" name="min_per_class" errors=${errors} help="Smaller classes are dropped">${input("min_per_class", { type: "number", min: 1 })}<//>
          <${Field} label="Maximum images per class" name="max_per_class" errors=${errors} help="Empty: no cap">${input("max_per_class", { type: "number", min: 1 })}<//>
          <${Field} label="Split seed" name="seed" errors=${errors} help="Empty: random">${input("seed", { type: "number", min: 0 })}<//>
        </div>
      </div></div>

      <div class="card"><div class="card-head"><h2>Name</h2></div><div class="card-body">
        <div class="fields">
          <${Field} label="Dataset name" name="name" errors=${errors}>${input("name", { placeholder: "digits-28", required: true })}<//>
          <${Field} label="Group" name="group" errors=${errors} help="Optional, to find it later">${input("group")}<//>
        </div>
      </div></div>

      <${Problem} error=${error} />
      ${progress !== null && html`<div class="card"><div class="card-body stack" data-testid="upload-progress">
        <div class="row"><span class="grow">${progress < 1 ? "Uploading…" : "Uploaded; checking the archive…"}</span><span class="mono">${Math.round(progress * 100)}%</span></div>
        <${Progress} value=${progress} />
      </div></div>`}
      <div class="row"><span class="grow"></span>
        <a class="btn" href="/">Cancel</a>
        <button class="primary" type="submit" disabled=${progress !== null}>Create dataset</button>
      </div>
    </form>
  </main>`;
}
