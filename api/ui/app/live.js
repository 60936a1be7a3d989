// Live job events: one multiplexed stream for many jobs (GET /api/v1/events), resumed with
// Last-Event-ID after any drop (a server restart included); per-job streams when the server
// has no multiplexed endpoint. Handlers get (kind, data) with data.job_id always set.
import { SSEParser } from "./util/sse.js";

let multiplexed = null; // null: unknown yet, true / false once a server answered
const FALLBACK_STREAMS = 4; // browsers allow 6 HTTP/1.1 connections per origin; keep 2 for requests

class Stream {
  constructor(url, { onEvent, onState, jobId = null, endOnFinal = false }) {
    this.url = url;
    this.onEvent = onEvent;
    this.onState = onState || (() => {});
    this.jobId = jobId;
    this.endOnFinal = endOnFinal;
    this.lastId = null;
    this.closed = false;
    this.delay = 500;
    this.ctrl = null;
    this.wake = () => { if (!this.closed && this.ctrl === null) this.connect(); };
    window.addEventListener("online", this.wake);
  }

  /** Resolves to "ok", "missing" (404/405: no such endpoint) or throws. */
  async connect() {
    if (this.closed) return "closed";
    this.ctrl = new AbortController();
    const headers = { Accept: "text/event-stream" };
    if (this.lastId !== null) headers["Last-Event-ID"] = this.lastId;
    let final = false;
    try {
      const resp = await fetch(this.url, { headers, signal: this.ctrl.signal, credentials: "same-origin", cache: "no-store" });
      if (resp.status === 404 || resp.status === 405) {
        const body = await resp.json().catch(() => ({}));
        const routeMissing = !body.code || body.code === "not_found";
        if (routeMissing && this.jobId === null) { this.ctrl = null; return "missing"; }
        this.closed = true; // the job is gone
        this.onState("ended");
        return "gone";
      }
      if (resp.status === 401) { this.onState("unauthorized"); throw new Error("unauthorized"); }
      if (!resp.ok || !resp.body) throw new Error(`HTTP ${resp.status}`);
      this.delay = 500;
      this.onState("live");
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      const parser = new SSEParser((ev) => {
        if (ev.id !== null) this.lastId = ev.id;
        let data;
        try { data = JSON.parse(ev.data); } catch { return; }
        if (this.jobId && !data.job_id) data.job_id = this.jobId;
        if (ev.event === "status" && ["done", "error", "aborted"].includes(data.status)) final = true;
        this.onEvent(ev.event, data, ev.id);
      });
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.push(value);
      }
    } catch (err) {
      if (this.closed) return "closed";
    }
    this.ctrl = null;
    if (this.closed) return "closed";
    if (final && this.endOnFinal) { this.onState("ended"); return "ok"; }
    this.onState("reconnecting");
    await new Promise((r) => setTimeout(r, this.delay));
    this.delay = Math.min(this.delay * 2, 5000);
    return this.connect();
  }

  close() {
    this.closed = true;
    window.removeEventListener("online", this.wake);
    if (this.ctrl) this.ctrl.abort();
  }
}

/**
 * Follow these jobs' events (or, with `status: "running"`, every running job of the user).
 * Returns {close()}. `onState` hears "live", "reconnecting", "ended", "fallback".
 */
export function follow({ jobs = [], status = null }, onEvent, onState = () => {}) {
  const streams = [];
  let closed = false;
  const qs = status ? `status=${encodeURIComponent(status)}` : `jobs=${jobs.map(encodeURIComponent).join(",")}`;
  const perJob = () => {
    onState("fallback");
    for (const id of jobs.slice(0, FALLBACK_STREAMS)) {
      const s = new Stream(`/api/v1/jobs/${id}/events`, { onEvent, onState, jobId: id, endOnFinal: true });
      streams.push(s);
      s.connect();
    }
  };
  if (!status && jobs.length === 0) return { close() {} };
  if (multiplexed === false) {
    if (!status) perJob();
  } else {
    const s = new Stream(`/api/v1/events?${qs}`, { onEvent, onState });
    streams.push(s);
    s.connect().then((r) => {
      if (r === "missing") {
        multiplexed = false;
        s.close();
        if (!closed && !status) perJob();
      } else if (r !== "closed") multiplexed = true;
    }, () => {});
    // the first bytes prove the endpoint exists
    const prev = s.onState;
    s.onState = (st) => { if (st === "live") multiplexed = true; prev(st); };
  }
  return {
    close() {
      closed = true;
      for (const s of streams) s.close();
    },
  };
}

export function hasMultiplexed() {
  return multiplexed;
}
