// The REST client: JSON in and out, problem+json errors as ApiError, 401 sends to sign-in.

export const API = "/api/v1";

export class ApiError extends Error {
  constructor(status, problem) {
    super((problem && (problem.detail || problem.title)) || `HTTP ${status}`);
    this.status = status;
    this.problem = problem || { status, title: `HTTP ${status}` };
  }
}

const listeners = new Set();
/** Called with "unauthorized" or "unavailable" so the shell can react. */
export function onApiTrouble(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}
function trouble(kind, detail) {
  for (const fn of listeners) fn(kind, detail);
}

async function problemOf(resp) {
  const type = resp.headers.get("content-type") || "";
  if (type.includes("json")) {
    try { return await resp.json(); } catch { /* fall through */ }
  }
  const text = await resp.text().catch(() => "");
  return { status: resp.status, title: resp.statusText || `HTTP ${resp.status}`, detail: text.slice(0, 300) };
}

// GETs started before their page asks (prefetch, and boot.js before any module ran), by
// path; each is taken once, while fresh
const early = new Map();
const EARLY_MS = 5000;

function adoptBoot() {
  const boot = window.__digitsEarly;
  if (!boot) return;
  for (const [path, started] of Object.entries(boot)) if (!early.has(path)) early.set(path, started);
  window.__digitsEarly = {};
}

/**
 * Start a GET now, while the app still checks the session and loads: the page's own api()
 * call of the same path takes its answer (one round trip off the first paint). A failure
 * is dropped here; the page's call then asks the server itself and sees the error.
 */
export function prefetch(path) {
  adoptBoot();
  if (early.has(path)) return;
  const answer = fetch(API + path, { headers: { Accept: "application/json" }, credentials: "same-origin" })
    .then((resp) => (resp.ok ? resp.json() : null), () => null);
  early.set(path, { answer, at: performance.now() });
}

/** fetch against /api/v1; returns parsed JSON (or text, or the Response with raw: true). */
export async function api(path, { method = "GET", body, form, headers = {}, raw = false, signal, quiet401 = false } = {}) {
  if (method === "GET" && !raw) adoptBoot();
  const started = method === "GET" && !raw && early.get(path);
  if (started) {
    early.delete(path);
    const got = performance.now() - started.at < EARLY_MS ? await started.answer : null;
    if (got !== null) return got;
  }
  const init = { method, headers: { Accept: "application/json", ...headers }, signal, credentials: "same-origin" };
  if (form) init.body = form;
  else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const resp = await fetch(path.startsWith("/") && !path.startsWith(API) && !path.startsWith("/openapi") ? API + path : path, init);
  if (!resp.ok) {
    const problem = await problemOf(resp);
    if (resp.status === 401 && !quiet401) trouble("unauthorized", problem);
    if (resp.status === 503) trouble("unavailable", problem);
    throw new ApiError(resp.status, problem);
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  const type = resp.headers.get("content-type") || "";
  return type.includes("json") ? resp.json() : resp.text();
}

/** Every page of a paged list (GET ...?page=&per_page=), up to `max` items. */
export async function allPages(path, { perPage = 200, max = 5000, onPage } = {}) {
  const sep = path.includes("?") ? "&" : "?";
  let page = 1;
  let items = [];
  for (;;) {
    const body = await api(`${path}${sep}page=${page}&per_page=${perPage}`);
    items = items.concat(body.items);
    if (onPage) onPage(items, body.total);
    if (items.length >= body.total || body.items.length === 0 || items.length >= max) return items;
    page += 1;
  }
}

/** A multipart upload with progress (fetch cannot report upload progress; XHR can). */
export function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", API + path);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable && onProgress) onProgress(e.loaded / e.total); };
    xhr.onload = () => {
      let data = null;
      try { data = JSON.parse(xhr.responseText); } catch { data = { detail: xhr.responseText.slice(0, 300) }; }
      if (xhr.status >= 200 && xhr.status < 300) resolve(data);
      else {
        if (xhr.status === 401) trouble("unauthorized", data);
        reject(new ApiError(xhr.status, { status: xhr.status, title: xhr.statusText, ...data }));
      }
    };
    xhr.onerror = () => reject(new ApiError(0, { title: "Network error", detail: "the upload did not reach the server" }));
    xhr.send(form);
  });
}

/** Field path -> message from a 422 problem's `errors` (loc like ["body", "image_width"]). */
export function fieldErrors(err) {
  const out = {};
  const list = err && err.problem && err.problem.errors;
  if (!Array.isArray(list)) return out;
  for (const e of list) {
    const loc = (e.loc || e.field || []).filter((p) => p !== "body" && p !== "query");
    const key = Array.isArray(loc) ? loc.join(".") : String(loc);
    out[key] = e.msg || e.message || "invalid";
  }
  return out;
}
