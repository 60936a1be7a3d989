// Small shared components: status badges, progress, dialogs, toasts, drop zones, tables.
import { html, useEffect, useRef, useState, render } from "./lib.js";
import { fmtPct } from "./util/format.js";

export function Status({ status, title }) {
  return html`<span class=${`badge ${status}`} title=${title || ""} data-status=${status}><span class="dot"></span>${status}</span>`;
}

export function Progress({ value, ok = false }) {
  const pct = Math.max(0, Math.min(1, value || 0));
  return html`<div class=${`progress${ok ? " ok" : ""}`} role="progressbar" aria-valuenow=${Math.round(pct * 100)} aria-valuemin="0" aria-valuemax="100"><div style=${{ width: fmtPct(pct, 1) }}></div></div>`;
}

export function Problem({ error }) {
  if (!error) return null;
  const p = error.problem || { detail: String(error.message || error) };
  const errs = Array.isArray(p.errors) ? p.errors.slice(0, 6) : [];
  return html`<div class="problem" role="alert">
    <b>${p.title || "Error"}${p.code ? html` <span class="mono faint">(${p.code})</span>` : ""}</b>
    ${p.detail}
    ${errs.length > 1 && html`<ul>${errs.map((e) => html`<li><code>${(e.loc || []).filter((x) => x !== "body").join(".")}</code>: ${e.msg}</li>`)}</ul>`}
  </div>`;
}

export function Spinner() {
  return html`<span class="faint">Loading…</span>`;
}

export function Empty({ title, children }) {
  return html`<div class="empty"><h3>${title}</h3>${children}</div>`;
}

export function Dialog({ title, onClose, children, foot, wide = false }) {
  useEffect(() => {
    const key = (e) => { if (e.key === "Escape") onClose(); };
    window.addEventListener("keydown", key);
    return () => window.removeEventListener("keydown", key);
  }, [onClose]);
  return html`<div class="overlay" onMouseDown=${(e) => { if (e.target === e.currentTarget) onClose(); }}>
    <div class=${`card dialog${wide ? " wide" : ""}`} role="dialog" aria-modal="true" aria-label=${title}>
      <div class="card-head"><h2>${title}</h2><button class="ghost icon" aria-label="Close" onClick=${onClose}>✕</button></div>
      <div class="card-body">${children}</div>
      ${foot && html`<div class="foot">${foot}</div>`}
    </div>
  </div>`;
}

/** Ask before a destructive action; resolves true/false. */
export function confirmDialog(title, text, action = "Delete") {
  return new Promise((resolve) => {
    const host = document.createElement("div");
    document.body.appendChild(host);
    const done = (v) => { render(null, host); host.remove(); resolve(v); };
    render(html`<${Dialog} title=${title} onClose=${() => done(false)} foot=${html`
      <button onClick=${() => done(false)}>Cancel</button>
      <button class="primary" data-confirm onClick=${() => done(true)}>${action}</button>`}>
      <div>${text}</div>
    <//>`, host);
  });
}

let toastHost = null;
export function toast(text, { error = false, ms = 3500 } = {}) {
  if (!toastHost) {
    toastHost = document.createElement("div");
    toastHost.className = "toast-box";
    document.body.appendChild(toastHost);
  }
  const el = document.createElement("div");
  el.className = `toast${error ? " err" : ""}`;
  el.setAttribute("role", "status");
  el.textContent = text;
  toastHost.appendChild(el);
  setTimeout(() => el.remove(), ms);
}

export function DropZone({ onFiles, accept, multiple = false, children, testid }) {
  const [over, setOver] = useState(false);
  const input = useRef(null);
  const take = (list) => { const files = Array.from(list || []); if (files.length) onFiles(multiple ? files : files.slice(0, 1)); };
  return html`<div class=${`drop${over ? " over" : ""}`} data-testid=${testid}
      onClick=${() => input.current && input.current.click()}
      onDragOver=${(e) => { e.preventDefault(); setOver(true); }}
      onDragLeave=${() => setOver(false)}
      onDrop=${(e) => { e.preventDefault(); setOver(false); take(e.dataTransfer.files); }}>
    <input ref=${input} type="file" accept=${accept} multiple=${multiple} onChange=${(e) => { take(e.target.files); e.target.value = ""; }} />
    ${children}
  </div>`;
}

/** A sortable header cell. */
export function Th({ id, sort, setSort, children, num = false }) {
  const [key, dir] = (sort || "").split(":");
  const on = key === id;
  return html`<th class=${`sortable${num ? " num" : ""}`} onClick=${() => setSort(`${id}:${on && dir === "asc" ? "desc" : "asc"}`)} aria-sort=${on ? (dir === "asc" ? "ascending" : "descending") : "none"}>
    ${children}${on ? (dir === "asc" ? " ↑" : " ↓") : ""}
  </th>`;
}

export function sortBy(rows, sort, getters) {
  if (!sort) return rows;
  const [key, dir] = sort.split(":");
  const get = getters[key];
  if (!get) return rows;
  const sign = dir === "asc" ? 1 : -1;
  return rows.slice().sort((a, b) => {
    const x = get(a);
    const y = get(b);
    if (x === y) return 0;
    if (x === null || x === undefined) return 1;
    if (y === null || y === undefined) return -1;
    return (x < y ? -1 : 1) * sign;
  });
}

/** A tiny canvas line (home running strip, fleet): cheaper than a chart per row. */
export function Sparkline({ values, color = "var(--accent)", height = 36, max = null, min = null, label }) {
  const ref = useRef(null);
  useEffect(() => {
    const c = ref.current;
    if (!c) return;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth || 200;
    c.width = w * dpr;
    c.height = height * dpr;
    const ctx = c.getContext("2d");
    ctx.scale(dpr, dpr);
    ctx.clearRect(0, 0, w, height);
    const vs = (values || []).filter((v) => v !== null && Number.isFinite(v));
    if (vs.length < 2) return;
    const lo = min ?? Math.min(...vs);
    const hi = max ?? Math.max(...vs);
    const span = hi - lo || 1;
    const stroke = color.startsWith("var(") ? getComputedStyle(c).getPropertyValue(color.slice(4, -1)).trim() : color;
    ctx.beginPath();
    vs.forEach((v, i) => {
      const x = (i / (vs.length - 1)) * (w - 2) + 1;
      const y = height - 3 - ((v - lo) / span) * (height - 6);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.strokeStyle = stroke;
    ctx.lineWidth = 1.5;
    ctx.lineJoin = "round";
    ctx.stroke();
    ctx.lineTo(w - 1, height);
    ctx.lineTo(1, height);
    ctx.closePath();
    ctx.globalAlpha = 0.1;
    ctx.fillStyle = stroke;
    ctx.fill();
  });
  return html`<canvas class="spark" ref=${ref} style=${{ height: `${height}px` }} aria-label=${label || "sparkline"} data-points=${(values || []).length}></canvas>`;
}

export function CopyButton({ text, label = "Copy" }) {
  const [done, setDone] = useState(false);
  return html`<button class="small" onClick=${async () => {
    try { await navigator.clipboard.writeText(text); setDone(true); setTimeout(() => setDone(false), 1500); } catch { toast("Copy failed: select the text instead", { error: true }); }
  }}>${done ? "Copied" : label}</button>`;
}

/** Run `fn` every `ms` while the page is visible (and once at mount). */
export function usePoll(fn, ms, deps = []) {
  useEffect(() => {
    let stop = false;
    let timer = null;
    const tick = async () => {
      if (stop) return;
      if (document.visibilityState === "visible") { try { await fn(); } catch { /* shown by the page */ } }
      if (!stop) timer = setTimeout(tick, ms);
    };
    tick();
    return () => { stop = true; clearTimeout(timer); };
  }, deps);
}

export const SearchIcon = html`<svg width="14" height="14" viewBox="0 0 24 24" fill="none" stroke="currentColor" stroke-width="2.2" stroke-linecap="round"><circle cx="11" cy="11" r="7"/><path d="m20 20-3.5-3.5"/></svg>`;
