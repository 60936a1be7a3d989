// /fleet: workers (alive or stale, heartbeat, queues, job) and GPUs with live sparklines.
import { html, useRef, useState } from "../lib.js";
import { api } from "../api.js";
import { Empty, Problem, Sparkline, usePoll } from "../components.js";
import { fmtAgo, fmtBytes, fmtNum, shortId } from "../util/format.js";

const KEEP = 90; // samples per sparkline: 3 minutes at one poll every 2 s

function push(store, key, value) {
  const list = store[key] || (store[key] = []);
  list.push(value);
  if (list.length > KEEP) list.shift();
  return list;
}

export function FleetPage() {
  const [workers, setWorkers] = useState(null);
  const [gpus, setGpus] = useState([]);
  const [error, setError] = useState(null);
  const hist = useRef({});
  usePoll(async () => {
    try {
      const [w, g] = await Promise.all([api("/workers"), api("/gpus")]);
      for (const gpu of g) {
        push(hist.current, `${gpu.uuid}:util`, gpu.utilization);
        push(hist.current, `${gpu.uuid}:mem`, gpu.memory_used_bytes);
        push(hist.current, `${gpu.uuid}:temp`, gpu.temperature_c);
        push(hist.current, `${gpu.uuid}:power`, gpu.power_w);
      }
      for (const wk of w) push(hist.current, `${wk.name}:cpu`, (wk.stats || {})["process.cpu_percent"] ?? null);
      setWorkers(w);
      setGpus(g);
      setError(null);
    } catch (err) { setError(err); }
  }, 2000);
  const h = (k) => hist.current[k] || [];
  const alive = (workers || []).filter((w) => w.alive);
  return html`<main class="page" data-testid="fleet">
    <div class="page-head"><div class="title"><h1>Fleet</h1>
      <div class="sub"><span>${alive.length} worker${alive.length === 1 ? "" : "s"} alive</span><span>${gpus.filter((g) => g.alive && !g.job_id).length}/${gpus.filter((g) => g.alive).length} GPUs free</span></div></div></div>
    <${Problem} error=${error} />
    <div class="section-title"><h2>GPUs</h2></div>
    ${gpus.length === 0 ? html`<div class="card"><${Empty} title="No GPUs in the fleet">The workers here train on CPUs. A GPU host joins with <code>digits worker</code>.<//></div>`
      : html`<div class="grid cols-3">${gpus.map((g) => html`<div class="card" data-gpu=${g.uuid}><div class="card-head">
          <span class=${`dot ${g.alive ? (g.job_id ? "warn" : "ok") : "err"}`}></span><h3>${g.name} <span class="faint">#${g.index}</span></h3><span class="small muted">${g.worker}</span></div>
          <div class="card-body stack">
            <div class="small muted">${g.job_id ? html`running <a href=${`/jobs/${g.job_id}`}>${shortId(g.job_id)}</a>` : "free"} · ${g.hostname} · cc ${g.compute_capability}</div>
            <div class="grid cols-2">
              <div><div class="small muted">Utilisation <b>${g.utilization === null ? "–" : `${fmtNum(g.utilization)}%`}</b></div><${Sparkline} values=${h(`${g.uuid}:util`)} min=${0} max=${100} /></div>
              <div><div class="small muted">Memory <b>${fmtBytes(g.memory_used_bytes)}</b> / ${fmtBytes(g.memory_total)}</div><${Sparkline} values=${h(`${g.uuid}:mem`)} min=${0} max=${g.memory_total} color="var(--ok)" /></div>
              <div><div class="small muted">Temperature <b>${g.temperature_c === null ? "–" : `${fmtNum(g.temperature_c)} °C`}</b></div><${Sparkline} values=${h(`${g.uuid}:temp`)} color="var(--warn)" /></div>
              <div><div class="small muted">Power <b>${g.power_w === null ? "–" : `${fmtNum(g.power_w)} W`}</b></div><${Sparkline} values=${h(`${g.uuid}:power`)} color="var(--err)" /></div>
            </div>
          </div></div>`)}</div>`}
    <div class="section-title"><h2>Workers</h2></div>
    <div class="card">${workers && workers.length === 0 ? html`<${Empty} title="No workers registered">Start one with <code>digits worker</code>.<//>` : html`<div class="table-wrap"><table class="t" data-testid="workers">
      <thead><tr><th>Worker</th><th>State</th><th>Kind</th><th>Device</th><th>Queues</th><th>Job</th><th>Heartbeat</th><th style=${{ width: "140px" }}>CPU</th></tr></thead>
      <tbody>${(workers || []).map((w) => html`<tr style=${w.alive ? undefined : { opacity: 0.55 }}>
        <td><b>${w.name}</b><div class="small faint">${w.hostname} · pid ${w.pid}</div></td>
        <td><span class=${`badge ${w.alive ? "done" : "error"}`}><span class="dot"></span>${w.alive ? "alive" : w.stopped_at ? "stopped" : "stale"}</span></td>
        <td>${w.kind}</td><td>${w.device || "–"}</td>
        <td>${w.queues.map((q) => html`<span class="tag">${q}</span> `)}</td>
        <td>${w.job_id ? html`<a href=${`/jobs/${w.job_id}`}>${shortId(w.job_id)}</a>` : html`<span class="faint">idle</span>`}</td>
        <td class="muted nowrap">${fmtAgo(w.heartbeat_at)}</td>
        <td><${Sparkline} values=${h(`${w.name}:cpu`)} height=${24} min=${0} /></td>
      </tr>`)}</tbody></table></div>`}</div>
  </main>`;
}
