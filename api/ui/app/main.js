// The shell: sign-in, theme, top bar, health banner, routes, keyboard shortcuts.
import { html, render, useEffect, useState } from "./lib.js";
import { api, onApiTrouble } from "./api.js";
import { installLinkHandler, match, navigate, useLocation } from "./router.js";
import { Dialog, Problem, usePoll } from "./components.js";
import { session } from "./session.js";
import { SHORTCUTS, applyTheme, getTheme } from "./prefs.js";
import { LoginPage } from "./pages/login.js";

// Pages load when first shown (boot.js preloads the one a visit opens), then the others while
// the browser is idle: the first paint waits for 18 modules, not 31. [pattern, module, export]
const PAGES = {
  home: () => import("./pages/home.js"),
  "job-new": () => import("./pages/job-new.js"),
  job: () => import("./pages/job.js"),
  "dataset-new": () => import("./pages/dataset-new.js"),
  dataset: () => import("./pages/dataset.js"),
  compare: () => import("./pages/compare.js"),
  study: () => import("./pages/study.js"),
  queue: () => import("./pages/queue.js"),
  fleet: () => import("./pages/fleet.js"),
  models: () => import("./pages/models.js"),
  settings: () => import("./pages/settings.js"),
};
const ROUTES = [
  ["/", "home", "HomePage"],
  ["/jobs/new", "job-new", "NewJobPage"],
  ["/jobs/:id", "job", "JobPage"],
  ["/datasets/new", "dataset-new", "NewDatasetPage"],
  ["/datasets/:id", "dataset", "DatasetPage"],
  ["/compare", "compare", "ComparePage"],
  ["/studies", "study", "StudiesPage"],
  ["/studies/:id", "study", "StudyPage"],
  ["/queue", "queue", "QueuePage"],
  ["/fleet", "fleet", "FleetPage"],
  ["/models", "models", "ModelsPage"],
  ["/settings", "settings", "SettingsPage"],
];
const loaded = new Map();
const loading = new Map();

function loadPage(key) {
  if (!loading.has(key)) {
    const started = PAGES[key]().then((mod) => { loaded.set(key, mod); return mod; });
    started.catch(() => loading.delete(key)); // a failed fetch is tried again next time
    loading.set(key, started);
  }
  return loading.get(key);
}

function routeOf(path) {
  for (const [pattern, key, name] of ROUTES) {
    const params = match(pattern, path);
    if (params) return { key, name, params };
  }
  return null;
}

function TopBar({ path }) {
  const [gpus, setGpus] = useState(null);
  usePoll(async () => setGpus(await api("/gpus")), 10000);
  const link = (href, label, test) => html`<a href=${href} class=${test(path) ? "active" : ""}>${label}</a>`;
  const free = gpus ? gpus.filter((g) => g.alive && !g.job_id).length : 0;
  const total = gpus ? gpus.filter((g) => g.alive).length : 0;
  return html`<header class="topbar">
    <a class="brand" href="/"><img src="/ui/favicon.svg" alt="" />digits</a>
    <nav class="nav">
      ${link("/", "Jobs", (p) => p === "/" || p.startsWith("/jobs") || p.startsWith("/compare"))}
      ${link("/studies", "Studies", (p) => p.startsWith("/studies"))}
      ${link("/queue", "Queue", (p) => p === "/queue")}
      ${link("/fleet", "Fleet", (p) => p === "/fleet")}
      ${link("/models", "Models", (p) => p === "/models")}
      ${link("/settings", "Settings", (p) => p === "/settings")}
    </nav>
    <div class="spacer"></div>
    ${gpus && html`<a class="gpu-badge" href="/fleet" data-testid="gpu-badge" title="GPUs of alive workers that run no job">
      <span class=${`dot ${total === 0 ? "" : free ? "ok" : "warn"}`}></span>${total === 0 ? "no GPUs (CPU workers)" : `${free}/${total} GPUs free`}</a>`}
    <a class="btn primary small" href="/jobs/new">New job</a>
    <span class="who">${session.user ? session.user.name : ""}</span>
  </header>`;
}

function HealthBanner() {
  const [health, setHealth] = useState(null);
  const [down, setDown] = useState(false);
  usePoll(async () => {
    try {
      const resp = await fetch("/api/v1/health", { headers: { Accept: "application/json" } });
      setHealth(await resp.json());
      setDown(false);
    } catch {
      setDown(true);
    }
  }, 15000);
  useEffect(() => onApiTrouble((kind) => { if (kind === "unavailable") setHealth({ status: "degraded", database: { ok: false, detail: "unavailable" } }); }), []);
  if (down) return html`<div class="banner" role="alert" data-testid="health-banner"><span class="dot err"></span>The server does not answer; retrying…</div>`;
  if (!health || health.status === "ok") return null;
  const bad = ["database", "broker"].filter((k) => health[k] && !health[k].ok);
  return html`<div class="banner" role="alert" data-testid="health-banner"><span class="dot err"></span>
    ${bad.length ? `The ${bad.join(" and ")} ${bad.length > 1 ? "are" : "is"} down: ` : "Degraded: "}
    ${bad.map((k) => health[k].detail).join("; ")}. Jobs keep their state and resume when it is back.</div>`;
}

function Shortcuts({ onClose }) {
  return html`<${Dialog} title="Keyboard shortcuts" onClose=${onClose}>
    <div class="kbd-list">${SHORTCUTS.map(([k, d]) => html`<span>${k.split(" ").map((x) => html`<kbd>${x}</kbd> `)}</span><span>${d}</span>`)}</div>
  <//>`;
}

function useShortcuts(setHelp) {
  useEffect(() => {
    let pending = null;
    const onKey = (e) => {
      const t = e.target;
      if (e.metaKey || e.ctrlKey || e.altKey) return;
      if (t && (t.isContentEditable || ["INPUT", "TEXTAREA", "SELECT"].includes(t.tagName))) {
        if (e.key === "Escape") t.blur();
        return;
      }
      if (pending === "g") {
        pending = null;
        const to = { h: "/", q: "/queue", f: "/fleet", m: "/models", s: "/settings" }[e.key];
        if (to) { e.preventDefault(); navigate(to); }
        return;
      }
      if (e.key === "g") { pending = "g"; setTimeout(() => { pending = null; }, 1200); return; }
      if (e.key === "?") { e.preventDefault(); setHelp(true); return; }
      if (e.key === "n") { e.preventDefault(); navigate("/jobs/new"); return; }
      if (e.key === "/") {
        const box = document.querySelector("[data-search]");
        if (box) { e.preventDefault(); box.focus(); box.select && box.select(); }
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, []);
}

function NotFound() {
  return html`<main class="page"><div class="card"><div class="empty"><h3>No such page</h3><a href="/">Back to the jobs</a></div></div></main>`;
}

function App() {
  const { path } = useLocation();
  const [, setAuthTick] = useState(0);
  const [help, setHelp] = useState(false);
  const [, setPageTick] = useState(0);
  const [pageError, setPageError] = useState(null);
  useShortcuts(setHelp);
  useEffect(() => onApiTrouble((kind) => {
    if (kind === "unauthorized" && location.pathname !== "/login") {
      session.user = null;
      navigate(`/login?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
    }
  }), []);
  useEffect(() => session.subscribe(() => setAuthTick((t) => t + 1)), []);

  if (path === "/login") return html`<${LoginPage} />`;
  if (!session.user) return html`<div class="boot">digits</div>`;
  let page = html`<${NotFound} />`;
  const route = routeOf(path);
  if (route && loaded.has(route.key)) {
    const Page = loaded.get(route.key)[route.name];
    page = html`<${Page} key=${path} ...${route.params} />`;
  } else if (route && pageError) {
    page = html`<main class="page"><${Problem} error=${pageError} /></main>`;
  } else if (route) {
    page = html`<main class="page"><span class="faint">Loading…</span></main>`;
    loadPage(route.key).then(() => setPageTick((t) => t + 1), setPageError);
  }
  return html`<div>
    <${TopBar} path=${path} />
    <${HealthBanner} />
    ${page}
    ${help && html`<${Shortcuts} onClose=${() => setHelp(false)} />`}
  </div>`;
}

async function boot() {
  installLinkHandler();
  applyTheme(getTheme());
  // One-click sign-in: `digits up` prints a URL ending in #token=...; the fragment never
  // reaches the server's logs. Strip it from the address bar before anything else.
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    history.replaceState(null, "", location.pathname + location.search);
    try {
      await session.signIn(decodeURIComponent(m[1]));
    } catch {
      navigate("/login?error=token", { replace: true });
    }
  }
  const route = location.pathname === "/login" ? null : routeOf(location.pathname);
  const page = route ? loadPage(route.key).catch(() => null) : null; // while the session is checked
  if (location.pathname !== "/login" && !session.user) {
    const ok = await session.load();
    // signed in (a signed-out page meets no 401): the heaviest pages' first data is asked
    // for now (boot.js asked already; prefetch does not ask twice), not after their first effect
    const mod = ok && page ? await page : null;
    if (mod && mod.prefetchFirst) mod.prefetchFirst(location.search);
    if (!ok) navigate(`/login?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
  }
  if (page) await page;
  render(html`<${App} />`, document.getElementById("app"));
  // the other pages, once this one is up: a click on a link does not wait for a download
  const rest = () => Object.keys(PAGES).forEach((key) => loadPage(key).catch(() => {}));
  if (window.requestIdleCallback) requestIdleCallback(rest, { timeout: 3000 });
  else setTimeout(rest, 1000);
}

boot();
