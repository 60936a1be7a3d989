// History API router: paths are the UI's contract (/jobs/{id}, /compare?jobs=...).
import { useEffect, useState } from "./lib.js";

const subs = new Set();

export function navigate(url, { replace = false } = {}) {
  if (replace) history.replaceState(null, "", url);
  else history.pushState(null, "", url);
  for (const fn of subs) fn();
  if (!replace) window.scrollTo(0, 0);
}

/** Re-render on navigation; returns {path, query}. */
export function useLocation() {
  const [, setTick] = useState(0);
  useEffect(() => {
    const fn = () => setTick((t) => t + 1);
    subs.add(fn);
    window.addEventListener("popstate", fn);
    return () => { subs.delete(fn); window.removeEventListener("popstate", fn); };
  }, []);
  return { path: location.pathname, query: new URLSearchParams(location.search) };
}

/** Internal links navigate without a reload (modifier clicks keep their meaning). */
export function installLinkHandler() {
  document.addEventListener("click", (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const a = e.target.closest && e.target.closest("a[href]");
    if (!a || a.target || a.hasAttribute("download")) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname.startsWith("/docs") || url.pathname.startsWith("/redoc")) return;
    e.preventDefault();
    navigate(url.pathname + url.search + url.hash);
  });
}

/**
 * View state kept in the query string: [value, set] like useState, but a refresh or a shared
 * link shows the same view. `replaceState`, so the back button is not flooded.
 */
export function useQueryState(key, fallback = "") {
  const read = () => {
    const v = new URLSearchParams(location.search).get(key);
    return v === null ? fallback : v;
  };
  const [value, setValue] = useState(read);
  useEffect(() => {
    const fn = () => setValue(read());
    subs.add(fn);
    window.addEventListener("popstate", fn);
    return () => { subs.delete(fn); window.removeEventListener("popstate", fn); };
  }, [key]);
  const set = (v) => {
    const params = new URLSearchParams(location.search);
    if (v === "" || v === null || v === undefined || v === fallback) params.delete(key);
    else params.set(key, String(v));
    const qs = params.toString();
    history.replaceState(null, "", location.pathname + (qs ? `?${qs}` : "") + location.hash);
    setValue(v === null || v === undefined ? fallback : String(v));
  };
  return [value, set];
}

/** Match "/jobs/:id" against a path; returns params or null. */
export function match(pattern, path) {
  const p = pattern.split("/");
  const s = path.replace(/\/+$/, "").split("/");
  if (path === "/" && pattern === "/") return {};
  if (p.length !== s.length) return null;
  const params = {};
  for (let i = 0; i < p.length; i++) {
    if (p[i].startsWith(":")) params[p[i].slice(1)] = decodeURIComponent(s[i]);
    else if (p[i] !== s[i]) return null;
  }
  return params;
}
