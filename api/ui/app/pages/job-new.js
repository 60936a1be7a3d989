// /jobs/new: dataset, network, every hyperparameter with DIGITS's default, a learning-rate
// preview redrawn as you type, a sweep preview, worker/GPU choice, and "clone from" prefill.
import { html, useEffect, useMemo, useRef, useState } from "../lib.js";
import { allPages, api, fieldErrors } from "../api.js";
import { navigate } from "../router.js";
import { Problem } from "../components.js";
import { Chart, palette } from "../charts.js";
import { Field } from "./dataset-new.js";
import { combinations, parseList } from "../util/sweep.js";
import { fmtNum, shortId } from "../util/format.js";

// SweepHyperparameters' defaults (DIGITS's where it has one)
const HP = {
  epochs: "30", batch_size: "", learning_rate: "0.01", lr_policy: "step", solver: "sgd", momentum: "0.9",
  weight_decay: "", rms_decay: "0.99", batch_accumulation: "1", val_interval: "1", snapshot_interval: "1",
  use_mean: "image", crop_size: "", shuffle: true, seed: "", amp: true, best_metric: "val.accuracy",
  log_interval: "0", aug_flip: "none", aug_quad_rot: "none", aug_rot: "0", aug_scale: "0", aug_noise: "0",
  aug_hsv_use: false, aug_hsv_h: "0.02", aug_hsv_s: "0.04", aug_hsv_v: "0.06",
  early: false, es_metric: "val.loss", es_patience: "5", es_min_delta: "0",
  step_size: "", gamma: "", step_values: "", power: "", warmup_pct: "0", min_lr_pct: "0",
};

// which LR parameters a policy reads, with the server's defaults as placeholders
const POLICY_PARAMS = {
  fixed: {},
  step: { step_size: "33", gamma: "0.1" },
  multistep: { step_values: "50, 85", gamma: "0.5" },
  exp: { gamma: "0.95" },
  inv: { gamma: "0.1", power: "0.5" },
  poly: { power: "3" },
  sigmoid: { step_size: "50", gamma: "0.1" },
  cosine: {},
  onecycle: { step_size: "25" }, // the peak, as % of training
};
const PARAM_LABEL = { step_size: "Step size (% of training)", gamma: "Gamma", step_values: "Step values (%)", power: "Power" };

const CUSTOM_TEMPLATE = JSON.stringify([
  { type: "conv2d", out_channels: 20, kernel_size: 5 },
  { type: "maxpool2d", kernel_size: 2, stride: 2 },
  { type: "conv2d", out_channels: 50, kernel_size: 5 },
  { type: "maxpool2d", kernel_size: 2, stride: 2 },
  { type: "flatten" },
  { type: "linear", out_features: 500 },
  { type: "relu" },
  { type: "linear" },
], null, 1).replace(/\n\s*/g, "\n  ").replace("\n  ]", "\n]");

function fromRequest(req) {
  const hp = req.hyperparameters || {};
  const v = { ...HP };
  for (const k of Object.keys(HP)) if (hp[k] !== undefined && hp[k] !== null) v[k] = typeof hp[k] === "boolean" ? hp[k] : Array.isArray(hp[k]) ? hp[k].join(", ") : String(hp[k]);
  const lp = hp.lr_params || {};
  for (const k of ["step_size", "gamma", "power", "warmup_pct", "min_lr_pct"]) if (lp[k] !== undefined && lp[k] !== null) v[k] = String(lp[k]);
  if (lp.step_values) v.step_values = lp.step_values.join(", ");
  if (hp.early_stopping) {
    v.early = true;
    v.es_metric = hp.early_stopping.metric;
    v.es_patience = String(hp.early_stopping.patience);
    v.es_min_delta = String(hp.early_stopping.min_delta);
  }
  return v;
}

function num(text, integer = false) {
  if (text === "" || text === null || text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new Error(`${text} is not ${integer ? "an integer" : "a number"}`);
  return n;
}

/** The hyperparameters object the API takes, from the form's strings. */
function hyperparameters(v) {
  const lrs = parseList(v.learning_rate);
  const bss = parseList(v.batch_size, { integer: true });
  const params = {};
  for (const k of Object.keys(POLICY_PARAMS[v.lr_policy] || {})) {
    if (k === "step_values") { if (v.step_values.trim()) params.step_values = parseList(v.step_values); } else if (v[k] !== "") params[k] = num(v[k]);
  }
  params.warmup_pct = num(v.warmup_pct) ?? 0;
  params.min_lr_pct = num(v.min_lr_pct) ?? 0;
  const hp = {
    epochs: num(v.epochs, true), learning_rate: lrs.length === 1 ? lrs[0] : lrs, lr_policy: v.lr_policy, lr_params: params,
    solver: v.solver, momentum: num(v.momentum), rms_decay: num(v.rms_decay), batch_accumulation: num(v.batch_accumulation, true),
    val_interval: num(v.val_interval), snapshot_interval: num(v.snapshot_interval), use_mean: v.use_mean, shuffle: v.shuffle,
    amp: v.amp, best_metric: v.best_metric, log_interval: num(v.log_interval, true), aug_flip: v.aug_flip,
    aug_quad_rot: v.aug_quad_rot, aug_rot: num(v.aug_rot), aug_scale: num(v.aug_scale), aug_noise: num(v.aug_noise),
    aug_hsv_use: v.aug_hsv_use, aug_hsv_h: num(v.aug_hsv_h), aug_hsv_s: num(v.aug_hsv_s), aug_hsv_v: num(v.aug_hsv_v),
  };
  if (bss.length) hp.batch_size = bss.length === 1 ? bss[0] : bss;
  if (v.weight_decay !== "") hp.weight_decay = num(v.weight_decay);
  if (v.crop_size !== "") hp.crop_size = num(v.crop_size, true);
  if (v.seed !== "") hp.seed = num(v.seed, true);
  if (v.early) hp.early_stopping = { metric: v.es_metric, patience: num(v.es_patience, true), min_delta: num(v.es_min_delta) };
  for (const k of Object.keys(hp)) if (hp[k] === undefined) delete hp[k];
  return hp;
}

function LrPreview({ v }) {
  const [curves, setCurves] = useState([]);
  const [error, setError] = useState(null);
  const timer = useRef(null);
  let lrs = [];
  try { lrs = parseList(v.learning_rate).slice(0, 8); } catch { lrs = []; }
  const key = JSON.stringify([lrs, v.lr_policy, v.step_size, v.gamma, v.step_values, v.power, v.warmup_pct, v.min_lr_pct]);
  useEffect(() => {
    clearTimeout(timer.current);
    timer.current = setTimeout(async () => {
      try {
        const out = [];
        for (const lr of lrs) {
          const q = new URLSearchParams({ policy: v.lr_policy, learning_rate: String(lr) });
          for (const k of Object.keys(POLICY_PARAMS[v.lr_policy] || {})) {
            const val = k === "step_values" ? v.step_values.replace(/\s/g, "") : v[k];
            if (val !== "") q.set(k, val);
          }
          if (v.warmup_pct !== "") q.set("warmup_pct", v.warmup_pct);
          if (v.min_lr_pct !== "") q.set("min_lr_pct", v.min_lr_pct);
          out.push({ lr, ...(await api(`/lr-policies/preview?${q}`)) });
        }
        setCurves(out);
        setError(null);
      } catch (err) {
        setError(err);
      }
    }, 150);
    return () => clearTimeout(timer.current);
  }, [key]);
  const epochs = Number(v.epochs) || 1;
  const series = curves.map((c, i) => ({ label: `lr ${c.lr}`, x: c.percent.map((p) => (p * epochs) / 100), y: c.values, color: palette(i) }));
  return html`<div data-testid="lr-preview" data-curves=${curves.length}>
    ${error ? html`<${Problem} error=${error} />` : series.length > 0 && html`<${Chart} series=${series} height=${180} format="lr" xKind="epoch" testid="lr-chart" />`}
  </div>`;
}

// what each task's validation reports (the first: its default to follow)
const TASK_METRICS = {
  classification: ["val.accuracy", "val.loss", "val.top5"],
  detection: ["val.map", "val.map_50", "val.map_75"],
  segmentation: ["val.miou", "val.loss", "val.pixel_accuracy"],
};
const TASK_TITLE = { classification: "image classification", detection: "object detection", segmentation: "semantic segmentation" };

export function NewJobPage() {
  const params = new URLSearchParams(location.search);
  const [v, setV] = useState(HP);
  const [meta, setMeta] = useState({ name: "", group: "", notes: "", dataset_id: params.get("dataset") || "", network: "lenet", kind: "standard", custom: CUSTOM_TEMPLATE, prev_job: "", prev_ckpt: "last", model_id: "", gpu: "", gpus: "1" });
  const [lists, setLists] = useState({ datasets: [], networks: [], jobs: [], models: [], workers: [], gpus: [] });
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);
  const [from, setFrom] = useState(null);
  const errors = fieldErrors(error);

  useEffect(() => {
    (async () => {
      const [datasets, networks, jobs, models, workers, gpus] = await Promise.all([
        allPages("/datasets?status=done"), api("/networks"), api("/jobs?status=done&per_page=100").then((p) => p.items),
        api("/pretrained-models"), api("/workers"), api("/gpus"),
      ]);
      setLists({ datasets, networks, jobs: jobs.filter((j) => j.kind === "train"), models, workers, gpus });
      setMeta((m) => ({ ...m, dataset_id: m.dataset_id || (datasets[0] && datasets[0].id) || "" }));
      const cloneFrom = params.get("from");
      if (cloneFrom) {
        const job = await api(`/jobs/${cloneFrom}`);
        const req = job.request;
        setFrom(job);
        setV(fromRequest(req));
        const net = req.network || {};
        setMeta((m) => ({
          ...m, name: `${job.name} (copy)`, group: req.group || "", notes: req.notes || "", dataset_id: req.dataset_id || job.dataset_id || m.dataset_id,
          kind: net.kind || "standard", network: net.name || m.network, custom: net.layers ? JSON.stringify(net.layers, null, 1) : m.custom,
          prev_job: net.job_id || "", prev_ckpt: String(net.checkpoint ?? "last"), model_id: net.model_id || "", gpu: req.gpu || "", gpus: String(req.gpus || 1),
        }));
      }
    })().catch(setError);
  }, []);

  const ds = lists.datasets.find((d) => d.id === meta.dataset_id);
  const task = (ds && ds.task) || "classification";
  // a dataset of another task: its networks and metrics (a clone keeps what it had)
  useEffect(() => {
    const ofTask = lists.networks.filter((n) => n.kind === "standard" && (n.task || "classification") === task);
    if (ofTask.length && !ofTask.some((n) => n.name === meta.network)) setMeta((m) => ({ ...m, network: ofTask[0].name }));
    const ms = TASK_METRICS[task] || TASK_METRICS.classification;
    setV((old) => ({
      ...old,
      best_metric: ms.includes(old.best_metric) ? old.best_metric : ms[0],
      es_metric: ms.includes(old.es_metric) ? old.es_metric : ms.includes("val.loss") ? "val.loss" : ms[0],
    }));
  }, [task, lists.networks.length]);

  const set = (k) => (e) => setV({ ...v, [k]: e.target.type === "checkbox" ? e.target.checked : e.target.value });
  const setM = (k) => (e) => setMeta({ ...meta, [k]: e.target.value });
  const input = (k, props = {}) => html`<input id=${`f-${k}`} name=${k} value=${v[k]} onInput=${set(k)} ...${props} />`;
  const select = (k, options) => html`<select id=${`f-${k}`} name=${k} value=${v[k]} onChange=${set(k)}>${options.map((o) => html`<option value=${o}>${o}</option>`)}</select>`;
  const check = (k, label) => html`<div class="field check"><input id=${`f-${k}`} type="checkbox" checked=${v[k]} onChange=${set(k)} /><label for=${`f-${k}`}>${label}</label></div>`;

  const sweep = useMemo(() => {
    try {
      const lrs = parseList(v.learning_rate);
      const bss = parseList(v.batch_size, { integer: true });
      return { combos: combinations({ learning_rate: lrs, batch_size: bss }), error: null };
    } catch (err) {
      return { combos: [], error: err.message };
    }
  }, [v.learning_rate, v.batch_size]);

  const network = () => {
    if (meta.kind === "standard") return meta.network;
    if (meta.kind === "custom") {
      let layers;
      try { layers = JSON.parse(meta.custom); } catch (err) { throw Object.assign(new Error(`custom network: ${err.message}`), { problem: { title: "Custom network is not JSON", detail: err.message, errors: [{ loc: ["network"], msg: "not valid JSON" }] } }); }
      return { kind: "custom", layers };
    }
    if (meta.kind === "previous") return { kind: "previous", job_id: meta.prev_job, checkpoint: /^\d+$/.test(meta.prev_ckpt) ? Number(meta.prev_ckpt) : meta.prev_ckpt };
    return { kind: "pretrained", model_id: meta.model_id };
  };

  const submit = async (e) => {
    e.preventDefault();
    setError(null);
    let body;
    try {
      body = { dataset_id: meta.dataset_id, name: meta.name.trim(), network: network(), hyperparameters: hyperparameters(v), gpus: Number(meta.gpus) || 1 };
      if (meta.group.trim()) body.group = meta.group.trim();
      if (meta.notes.trim()) body.notes = meta.notes;
      if (meta.gpu) body.gpu = meta.gpu;
    } catch (err) {
      setError(err.problem ? err : { problem: { title: "Check the form", detail: err.message } });
      return;
    }
    if (!body.name) { setError({ problem: { title: "Name needed", detail: "give the job a name", errors: [{ loc: ["name"], msg: "required" }] } }); return; }
    setBusy(true);
    try {
      const created = await api("/jobs", { method: "POST", body });
      navigate(created.jobs.length > 1 ? `/compare?group=${encodeURIComponent(created.group)}` : `/jobs/${created.jobs[0].id}`);
    } catch (err) {
      setError(err);
    } finally {
      setBusy(false);
    }
  };

  const metrics = TASK_METRICS[task] || TASK_METRICS.classification;
  const standard = lists.networks.filter((n) => n.kind === "standard" && (n.task || "classification") === task);
  const chosenNet = standard.find((n) => n.name === meta.network);
  const pp = POLICY_PARAMS[v.lr_policy] || {};
  const hpErr = (k) => errors[`hyperparameters.${k}`] ? { [k]: errors[`hyperparameters.${k}`] } : errors;

  return html`<main class="page" data-testid="job-new">
    <div class="crumbs"><a href="/">Jobs</a> / New</div>
    <div class="page-head"><div class="title"><h1 data-testid="job-new-title">New ${TASK_TITLE[task] || "image classification"} model</h1>
      <div class="sub">${from ? html`Prefilled from <a href=${`/jobs/${from.id}`}>${from.name}</a>; change anything before queueing.` : "Every field starts at DIGITS's default. Lists of learning rates or batch sizes make a sweep."}</div></div></div>
    <form class="grid sidebar" onSubmit=${submit} novalidate>
      <div class="stack">
        <div class="card"><div class="card-head"><h2>Data</h2></div><div class="card-body"><div class="fields">
          <${Field} label="Dataset" name="dataset_id" errors=${errors} wide help=${ds ? `${ds.num_images} images · ${(ds.classes || []).length} classes · ${ds.image_width}×${ds.image_height}×${ds.image_channels}` : lists.datasets.length ? "" : "No ready dataset: import one first"}>
            <select id="f-dataset_id" value=${meta.dataset_id} onChange=${setM("dataset_id")}>
              ${lists.datasets.map((d) => html`<option value=${d.id}>${d.name} · ${shortId(d.id)}</option>`)}
            </select><//>
          <${Field} label="Subtract mean" name="use_mean" errors=${hpErr("use_mean")}>${select("use_mean", ["image", "pixel", "none"])}<//>
          <${Field} label="Crop size" name="crop_size" errors=${hpErr("crop_size")} help="Random crops while training; empty: none">${input("crop_size", { type: "number", min: 1 })}<//>
          ${check("shuffle", "Shuffle every epoch")}
        </div></div></div>

        <div class="card"><div class="card-head"><h2>Network</h2></div><div class="card-body stack">
          <div class="tabs" role="tablist">${[["standard", "Standard"], ["previous", "Previous job"], ["pretrained", "Pretrained"], ["custom", "Custom layers"]].map(([k, label]) => html`
            <button type="button" role="tab" class=${meta.kind === k ? "on" : ""} aria-selected=${meta.kind === k} onClick=${() => setMeta({ ...meta, kind: k })}>${label}</button>`)}</div>
          ${meta.kind === "standard" && html`<div class="table-wrap" style=${{ maxHeight: "300px" }}><table class="t" data-testid="networks">
            <thead><tr><th></th><th>Network</th><th>Family</th><th class="num">Default batch</th><th>About</th></tr></thead>
            <tbody>${standard.map((n) => html`<tr class=${meta.network === n.name ? "selected" : ""} onClick=${() => setMeta({ ...meta, network: n.name })}>
              <td class="check"><input type="radio" name="network" value=${n.name} checked=${meta.network === n.name} aria-label=${n.name} onChange=${() => setMeta({ ...meta, network: n.name })} /></td>
              <td class="name">${n.name}</td><td class="muted">${n.family}</td><td class="num">${n.default_batch_size ?? "–"}</td><td class="small muted">${n.description}</td></tr>`)}</tbody>
          </table></div>`}
          ${meta.kind === "previous" && html`<div class="fields">
            <${Field} label="Job" name="prev_job" errors=${errors} wide><select id="f-prev_job" value=${meta.prev_job} onChange=${setM("prev_job")}>
              <option value="">Choose a finished job</option>${lists.jobs.map((j) => html`<option value=${j.id}>${j.name} · ${shortId(j.id)}</option>`)}</select><//>
            <${Field} label="Checkpoint" name="prev_ckpt" errors=${errors} help="best, last or an epoch"><input id="f-prev_ckpt" value=${meta.prev_ckpt} onInput=${setM("prev_ckpt")} /><//>
          </div>`}
          ${meta.kind === "pretrained" && html`<${Field} label="Pretrained model" name="model_id" errors=${errors} help=${lists.models.length ? "" : "None yet: make one from a job, or upload one under Models"}>
            <select id="f-model_id" value=${meta.model_id} onChange=${setM("model_id")}><option value="">Choose a model</option>${lists.models.map((m) => html`<option value=${m.id}>${m.name}</option>`)}</select><//>`}
          ${meta.kind === "custom" && html`<${Field} label="Layers (JSON)" name="network" errors=${errors} help="conv2d, maxpool2d/avgpool2d, batchnorm2d, relu/gelu/…, dropout, flatten, linear (a last linear without out_features gets one per class)">
            <textarea id="f-network" rows="12" value=${meta.custom} onInput=${setM("custom")}></textarea><//>`}
        </div></div>

        <div class="card"><div class="card-head"><h2>Solver</h2></div><div class="card-body"><div class="fields">
          <${Field} label="Training epochs" name="epochs" errors=${hpErr("epochs")}>${input("epochs", { type: "number", min: 1 })}<//>
          <${Field} label="Batch size" name="batch_size" errors=${hpErr("batch_size")} help=${`Empty: the network's (${chosenNet && chosenNet.default_batch_size ? chosenNet.default_batch_size : "default"}); a list sweeps`}>${input("batch_size", { placeholder: chosenNet && chosenNet.default_batch_size ? String(chosenNet.default_batch_size) : "" })}<//>
          <${Field} label="Batch accumulation" name="batch_accumulation" errors=${hpErr("batch_accumulation")}>${input("batch_accumulation", { type: "number", min: 1 })}<//>
          <${Field} label="Solver type" name="solver" errors=${hpErr("solver")}>${select("solver", ["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw"])}<//>
          <${Field} label="Base learning rate" name="learning_rate" errors=${hpErr("learning_rate")} help="A list (0.1, 0.01) sweeps">${input("learning_rate", { "data-testid": "lr-input" })}<//>
          <${Field} label="Momentum" name="momentum" errors=${hpErr("momentum")}>${input("momentum")}<//>
          <${Field} label="Weight decay" name="weight_decay" errors=${hpErr("weight_decay")} help="Empty: the solver's default">${input("weight_decay")}<//>
          <${Field} label="RMS decay" name="rms_decay" errors=${hpErr("rms_decay")} help="rmsprop only">${input("rms_decay")}<//>
          ${check("amp", "Mixed precision (bf16/fp16 on GPUs)")}
        </div></div></div>

        <div class="card"><div class="card-head"><h2>Learning rate schedule</h2></div><div class="card-body stack">
          <div class="fields">
            <${Field} label="Policy" name="lr_policy" errors=${hpErr("lr_policy")}>${select("lr_policy", Object.keys(POLICY_PARAMS))}<//>
            ${Object.entries(pp).map(([k, placeholder]) => html`<${Field} label=${PARAM_LABEL[k]} name=${k} errors=${hpErr(`lr_params.${k}`)}>${input(k, { placeholder })}<//>`)}
            <${Field} label="Warm-up (% of training)" name="warmup_pct" errors=${hpErr("lr_params.warmup_pct")}>${input("warmup_pct")}<//>
            <${Field} label="Floor (% of base rate)" name="min_lr_pct" errors=${hpErr("lr_params.min_lr_pct")}>${input("min_lr_pct")}<//>
          </div>
          <${LrPreview} v=${v} />
        </div></div>

        <div class="card"><div class="card-head"><h2>Validation, snapshots, stopping</h2></div><div class="card-body stack"><div class="fields">
          <${Field} label="Validation interval (epochs)" name="val_interval" errors=${hpErr("val_interval")}>${input("val_interval")}<//>
          <${Field} label="Snapshot interval (epochs)" name="snapshot_interval" errors=${hpErr("snapshot_interval")}>${input("snapshot_interval")}<//>
          <${Field} label="Best checkpoint by" name="best_metric" errors=${hpErr("best_metric")}>${select("best_metric", metrics)}<//>
          <${Field} label="Log interval (steps)" name="log_interval" errors=${hpErr("log_interval")} help="0: about 20 points per epoch">${input("log_interval", { type: "number", min: 0 })}<//>
          <${Field} label="Random seed" name="seed" errors=${hpErr("seed")} help="Empty: random">${input("seed", { type: "number", min: 0 })}<//>
          ${check("early", "Stop early when validation stops improving")}
        </div>
        ${v.early && html`<div class="fields">
          <${Field} label="Watch" name="es_metric" errors=${errors}>${select("es_metric", metrics)}<//>
          <${Field} label="Patience (validations)" name="es_patience" errors=${errors}>${input("es_patience", { type: "number", min: 1 })}<//>
          <${Field} label="Minimum change" name="es_min_delta" errors=${errors}>${input("es_min_delta")}<//>
        </div>`}</div></div>

        <div class="card"><div class="card-head"><h2>Data augmentation</h2></div><div class="card-body"><div class="fields">
          <${Field} label="Flipping" name="aug_flip" errors=${hpErr("aug_flip")}>${select("aug_flip", ["none", "fliplr", "flipud", "fliplrud"])}<//>
          <${Field} label="Quadrilateral rotation" name="aug_quad_rot" errors=${hpErr("aug_quad_rot")}>${select("aug_quad_rot", ["none", "rot90", "rot180", "rotall"])}<//>
          <${Field} label="Rotation (± degrees)" name="aug_rot" errors=${hpErr("aug_rot")}>${input("aug_rot")}<//>
          <${Field} label="Rescale (± fraction)" name="aug_scale" errors=${hpErr("aug_scale")}>${input("aug_scale")}<//>
          <${Field} label="Noise (std dev)" name="aug_noise" errors=${hpErr("aug_noise")}>${input("aug_noise")}<//>
          ${check("aug_hsv_use", "HSV shifting")}
          ${v.aug_hsv_use && html`<${Field} label="Hue" name="aug_hsv_h">${input("aug_hsv_h")}<//><${Field} label="Saturation" name="aug_hsv_s">${input("aug_hsv_s")}<//><${Field} label="Value" name="aug_hsv_v">${input("aug_hsv_v")}<//>`}
        </div></div></div>
      </div>

      <div class="stack" style=${{ position: "sticky", top: "68px" }}>
        <div class="card"><div class="card-head"><h2>Job</h2></div><div class="card-body form">
          <${Field} label="Name" name="name" errors=${errors}><input id="f-name" name="name" value=${meta.name} onInput=${setM("name")} placeholder="lenet-digits" /><//>
          <${Field} label="Group" name="group" errors=${errors} help="Sweeps get one; jobs in a group compare together"><input id="f-group" value=${meta.group} onInput=${setM("group")} /><//>
          <${Field} label="Run on" name="gpu" errors=${errors} help="Any free worker, or one worker or GPU">
            <select id="f-gpu" value=${meta.gpu} onChange=${setM("gpu")}>
              <option value="">Any free worker</option>
              ${lists.workers.filter((w) => w.alive && w.kind !== "cpu").map((w) => html`<option value=${w.name}>worker ${w.name} (${w.device || "cpu"})</option>`)}
              ${lists.gpus.filter((g) => g.alive).map((g) => html`<option value=${g.uuid}>${g.name} #${g.index} on ${g.worker}${g.job_id ? " (busy)" : ""}</option>`)}
            </select><//>
          <${Field} label="Devices" name="gpus" errors=${errors} help="More than 1: DistributedDataParallel"><input id="f-gpus" type="number" min="1" max="16" value=${meta.gpus} onInput=${setM("gpus")} /><//>
          <${Field} label="Notes" name="notes" errors=${errors}><textarea id="f-notes" rows="3" value=${meta.notes} onInput=${setM("notes")}></textarea><//>
        </div></div>
        <div class="card" data-testid="sweep-preview"><div class="card-body stack">
          ${sweep.error ? html`<span class="field-error">${sweep.error}</span>` : html`<div><b>${sweep.combos.length === 1 ? "1 job" : `These lists make ${sweep.combos.length} jobs`}</b></div>
            ${sweep.combos.length > 1 && html`<div class="small muted">${sweep.combos.slice(0, 12).map((c) => html`<div class="mono">${Object.entries(c).map(([k, x]) => `${k === "learning_rate" ? "lr" : "batch"} ${fmtNum(x)}`).join(" · ")}</div>`)}${sweep.combos.length > 12 ? "…" : ""}</div>`}`}
          <${Problem} error=${error} />
          <button class="primary" type="submit" disabled=${busy || !lists.datasets.length || sweep.error}>${busy ? "Queueing…" : sweep.combos.length > 1 ? `Queue ${sweep.combos.length} jobs` : "Queue the job"}</button>
        </div></div>
      </div>
    </form>
  </main>`;
}
