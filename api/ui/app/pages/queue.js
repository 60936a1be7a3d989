// /queue: waiting jobs in run order with the reason in words, candidate workers, waiting
// since and an estimated start (from the ETAs of the jobs running on the candidates).
import { html, useState } from "../lib.js";
import { api } from "../api.js";
import { Empty, Problem, Progress, Status, usePoll } from "../components.js";
import { fmtAgo, fmtDuration, fmtPct } from "../util/format.js";

/** Seconds until a candidate worker frees up for this item (null: not known). */
function estimate(item, running, ahead) {
  const etas = item.candidates.map((w) => {
    const busy = running.filter((j) => j.worker === w);
    return busy.length ? Math.max(...busy.map((j) => j.eta_seconds ?? Infinity)) : 0;
  }).filter((v) => Number.isFinite(v));
  if (!etas.length) return null;
  const free = Math.min(...etas);
  // jobs ahead in the queue on the same workers go first; a rough average of their ETAs
  const avg = running.length ? running.reduce((a, j) => a + (j.eta_seconds || 0), 0) / running.length : 0;
  return free + ahead * avg;
}

export function QueuePage() {
  const [queue, setQueue] = useState(null);
  const [running, setRunning] = useState([]);
  const [error, setError] = useState(null);
  usePoll(async () => {
    try {
      const [q, r] = await Promise.all([api("/queue"), api("/jobs?status=running&per_page=200")]);
      setQueue(q);
      setRunning(r.items);
      setError(null);
    } catch (err) { setError(err); }
  }, 3000);
  return html`<main class="page" data-testid="queue">
    <div class="page-head"><div class="title"><h1>Queue</h1><div class="sub">Jobs wait in this order; each says why it waits and which workers could take it.</div></div></div>
    <${Problem} error=${error} />
    <div class="card">
      <div class="card-head"><h2>Waiting</h2><span class="faint small">${queue ? queue.total : ""}</span></div>
      ${queue && queue.items.length === 0 && html`<${Empty} title="Nothing waits">Every queued job has a worker.<//>`}
      ${queue && queue.items.length > 0 && html`<div class="table-wrap"><table class="t" data-testid="queue-table">
        <thead><tr><th class="num">#</th><th>Job</th><th>Why it waits</th><th>Could run on</th><th>Waiting since</th><th>Estimated start</th></tr></thead>
        <tbody>${queue.items.map((it, k) => {
          const eta = estimate(it, running, queue.items.slice(0, k).filter((o) => o.candidates.some((c) => it.candidates.includes(c))).length);
          return html`<tr data-job=${it.job_id}>
            <td class="num">${it.position}</td>
            <td><a class="name" href=${`/jobs/${it.job_id}`}>${it.name}</a>${it.requested_worker && html`<div class="small faint">asks for ${it.requested_worker}</div>`}</td>
            <td class="reason" style=${{ maxWidth: "420px" }}>${it.reason}</td>
            <td>${it.candidates.length ? it.candidates.map((c) => html`<span class="tag">${c}</span> `) : html`<span class="faint">none</span>`}</td>
            <td class="muted nowrap">${fmtAgo(it.waiting_since)}</td>
            <td class="nowrap">${eta === null ? html`<span class="faint">no candidate</span>` : eta === 0 ? "next" : `in ~${fmtDuration(eta)}`}</td>
          </tr>`;
        })}</tbody></table></div>`}
    </div>
    <div class="card">
      <div class="card-head"><h2>Running</h2><span class="faint small">${running.length}</span></div>
      ${running.length === 0 ? html`<${Empty} title="Nothing runs" />` : html`<div class="table-wrap"><table class="t">
        <thead><tr><th>Job</th><th>Status</th><th>Worker</th><th style=${{ width: "28%" }}>Progress</th><th>ETA</th></tr></thead>
        <tbody>${running.map((j) => html`<tr><td><a class="name" href=${`/jobs/${j.id}`}>${j.name}</a></td><td><${Status} status=${j.status} /></td><td>${j.worker}</td>
          <td><div class="row"><div class="grow"><${Progress} value=${j.progress} /></div><span class="mono small">${fmtPct(j.progress, 0)}</span></div></td><td>${fmtDuration(j.eta_seconds)}</td></tr>`)}</tbody>
      </table></div>`}
    </div>
  </main>`;
}
