// Formatters shared by every page (pure: unit-tested with `node --test`).

export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  if (typeof v !== "number") return String(v);
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6 || a < 1e-3) return v.toExponential(2);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return Number(v.toPrecision(digits)).toString();
}

export function fmtPct(v, digits = 1) {
  if (v === null || v === undefined || Number.isNaN(v)) return "–";
  return `${(v * 100).toFixed(digits)}%`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${v >= 100 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "–";
  if (seconds < 10) return `${Math.max(0, seconds).toFixed(1)}s`;
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}

export function fmtAgo(iso, now = Date.now()) {
  if (!iso) return "–";
  const t = typeof iso === "number" ? iso : Date.parse(iso);
  const d = (now - t) / 1000;
  if (d < 5) return "just now";
  if (d < 60) return `${Math.round(d)}s ago`;
  if (d < 3600) return `${Math.round(d / 60)}m ago`;
  if (d < 86400) return `${Math.round(d / 3600)}h ago`;
  return `${Math.round(d / 86400)}d ago`;
}

export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const today = new Date();
  const time = d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  if (d.toDateString() === today.toDateString()) return time;
  return `${d.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
}

/** Seconds a job ran: to its end, or to now while it runs. */
export function jobDuration(job, now = Date.now()) {
  if (!job.started_at) return null;
  const end = job.finished_at ? Date.parse(job.finished_at) : now;
  return (end - Date.parse(job.started_at)) / 1000;
}

/** A job's network in words: "lenet", "custom (7 layers)", "fine-tune of 1a2b3c4d". */
export function networkName(request) {
  const n = request && request.network;
  if (!n) return "–";
  if (typeof n === "string") return n;
  if (n.kind === "standard") return n.name;
  if (n.kind === "custom") return `custom (${(n.layers || []).length} layers)`;
  if (n.kind === "previous") return `from ${String(n.job_id).slice(0, 8)}`;
  if (n.kind === "pretrained") return `pretrained ${String(n.model_id).slice(0, 8)}`;
  return n.kind || "–";
}

export function shortId(id) {
  return String(id || "").slice(0, 8);
}

/** Metric names read better without their prefix in a chart legend. */
export function metricLabel(name) {
  const labels = {
    "train.loss": "train loss", "val.loss": "val loss", "val.accuracy": "val top-1",
    "val.top5": "val top-5", "train.lr": "learning rate", "train.images_per_second": "images/s",
    "gpu.utilization": "GPU util %", "gpu.memory_used_bytes": "GPU memory",
    "gpu.memory_utilization": "GPU mem util %", "gpu.temperature_c": "GPU °C",
    "gpu.power_w": "GPU W", "process.cpu_percent": "CPU %", "process.rss_bytes": "RSS",
    "val.map": "val mAP", "val.map_50": "val mAP@0.5", "val.map_75": "val mAP@0.75",
    "val.miou": "val mIoU", "val.pixel_accuracy": "val pixel acc.",
  };
  if (labels[name]) return labels[name];
  if (name.startsWith("val.ap.")) return `AP ${name.slice(7)}`;
  if (name.startsWith("val.iou.")) return `IoU ${name.slice(8)}`;
  return name;
}

/** Series read as a share (0..1): accuracies, mAP, IoU. */
export function isAccuracy(name) {
  return name === "val.accuracy" || name === "val.top5" || name.endsWith(".accuracy")
    || name.startsWith("val.map") || name.startsWith("val.ap.") || name.includes("iou");
}
