// The shell: sign-in, theme, top bar, health banner, routes, keyboard shortcuts.
import { html, render, useEffect, useState } from "./lib.js";
import { api, onApiTrouble } from "./api.js";
import { installLinkHandler, match, navigate, useLocation } from "./router.js";
import { Dialog, usePoll } from "./components.js";
import { session } from "./session.js";
import { SHORTCUTS, applyTheme, getTheme } from "./prefs.js";
import { LoginPage } from "./pages/login.js";
import { HomePage, prefetchHome } from "./pages/home.js";
import { JobPage } from "./pages/job.js";
import { NewJobPage } from "./pages/job-new.js";
import { DatasetPage } from "./pages/dataset.js";
import { NewDatasetPage } from "./pages/dataset-new.js";
import { ComparePage, prefetchCompare } from "./pages/compare.js";
import { QueuePage } from "./pages/queue.js";
import { FleetPage } from "./pages/fleet.js";
import { ModelsPage } from "./pages/models.js";
import { SettingsPage } from "./pages/settings.js";
import { StudiesPage, StudyPage } from "./pages/study.js";

const ROUTES = [
  ["/", HomePage],
  ["/jobs/new", NewJobPage],
  ["/jobs/:id", JobPage],
  ["/datasets/new", NewDatasetPage],
  ["/datasets/:id", DatasetPage],
  ["/compare", ComparePage],
  ["/studies", StudiesPage],
  ["/studies/:id", StudyPage],
  ["/queue", QueuePage],
  ["/fleet", FleetPage],
  ["/models", ModelsPage],
  ["/settings", SettingsPage],
];

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
  for (const [pattern, Page] of ROUTES) {
    const params = match(pattern, path);
    if (params) { page = html`<${Page} key=${path} ...${params} />`; break; }
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
  if (location.pathname !== "/login" && !session.user) {
    const ok = await session.load();
    // signed in (a signed-out page meets no 401): the heaviest pages' first data is asked
    // for now, while the app renders, not after the page's first effect
    if (ok && location.pathname === "/") prefetchHome();
    else if (ok && location.pathname === "/compare") prefetchCompare(location.search);
    if (!ok) navigate(`/login?next=${encodeURIComponent(location.pathname + location.search)}`, { replace: true });
  }
  render(html`<${App} />`, document.getElementById("app"));
}

boot();
