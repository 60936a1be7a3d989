// uPlot wrappers: one <Chart> for every time series in the UI (job page, compare, LR preview).
import { html, uPlot, useEffect, useLayoutEffect, useMemo, useRef } from "./lib.js";
import { align, ema } from "./util/smooth.js";
import { fmtBytes, fmtDuration, fmtNum } from "./util/format.js";

// Palettes per theme (ClearML's #270: a dark theme must not wash out the lines).
const PALETTE = {
  light: ["#4f46e5", "#e8590c", "#0ca678", "#d6336c", "#1c7ed6", "#f59f00", "#7048e8", "#2b8a3e", "#c2255c", "#495057"],
  dark: ["#818cf8", "#ff922b", "#38d9a9", "#f06595", "#4dabf7", "#ffd43b", "#b197fc", "#69db7c", "#faa2c1", "#ced4da"],
};

export function theme() {
  return document.documentElement.dataset.theme === "dark" ? "dark" : "light";
}

export function palette(i) {
  const p = PALETTE[theme()];
  return p[i % p.length];
}

/** A colour on a ramp from t=0 to t=1 (colour by a numeric hyperparameter). */
export function ramp(t) {
  const stops = theme() === "dark"
    ? [[99, 102, 241], [56, 217, 169], [255, 212, 59]]
    : [[67, 56, 202], [12, 166, 120], [232, 89, 12]];
  const x = Math.max(0, Math.min(1, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const c = stops[i].map((v, k) => Math.round(v + (stops[i + 1][k] - v) * f));
  return `rgb(${c[0]},${c[1]},${c[2]})`;
}

function cssVar(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
}

function withAlpha(color, alpha) {
  if (color.startsWith("#") && color.length === 7) {
    const n = parseInt(color.slice(1), 16);
    return `rgba(${n >> 16},${(n >> 8) & 255},${n & 255},${alpha})`;
  }
  if (color.startsWith("rgb(")) return color.replace("rgb(", "rgba(").replace(")", `,${alpha})`);
  return color;
}

export const FORMATS = {
  num: (v) => fmtNum(v, 3),
  pct: (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(1)}%`),
  bytes: (v) => (v === null || v === undefined ? "–" : fmtBytes(v)),
  lr: (v) => (v === null || v === undefined ? "–" : v.toExponential(2)),
};

function xFormatter(kind) {
  if (kind === "time") return (v) => fmtDuration(v);
  if (kind === "epoch") return (v) => fmtNum(v, 3);
  return (v) => fmtNum(v, 6);
}

/**
 * A line chart. `series`: [{label, x, y, color}], each with its own x values.
 * `smooth` (0..0.99): a debiased EMA drawn over the raw curve, which stays faint behind it.
 * `markers`: [{x, label, kind: "best" | "ckpt"}] drawn as vertical rules.
 */
export function Chart({
  series, height = 220, xKind = "epoch", log = false, smooth = 0, markers = [], syncKey = null,
  format = "num", hidden = null, highlight = null, onFocus = null, testid = null, yRange = null,
  showLegend = true, points = false, version = undefined,
}) {
  const box = useRef(null);
  const legend = useRef(null);
  const plot = useRef(null);
  const shape = useRef("");
  const zoomed = useRef(false);
  const markersRef = useRef(markers);
  markersRef.current = markers;
  const smoothOn = smooth > 0;

  // uPlot wants one x column: align the series on the union of their x values
  // with a `version`, the (costly) aligned table is rebuilt only when the data changed, not on
  // every hover of the compare page
  const built = useMemo(
    () => buildData(series, smoothOn ? smooth : 0, log),
    version === undefined ? [series] : [version, smooth, log, xKind, series.length],
  );
  const lastBuilt = useRef(null);
  const signature = JSON.stringify([series.map((s) => [s.label, s.color]), smoothOn, log, xKind, format, theme(), height, syncKey, points]);

  // a layout effect: the chart is drawn before the browser paints the page it is on, not a
  // frame later (the compare page's 100 rows and parallel coordinates took 100-190 ms to paint)
  useLayoutEffect(() => {
    const el = box.current;
    if (!el) return undefined;
    if (plot.current && shape.current === signature) {
      if (lastBuilt.current !== built) plot.current.setData(built, !zoomed.current);
      lastBuilt.current = built;
      return undefined;
    }
    lastBuilt.current = built;
    if (plot.current) plot.current.destroy();
    shape.current = signature;
    zoomed.current = false;
    plot.current = new uPlot(options(), built, el);
    buildLegend();
    return undefined;
  });

  useEffect(() => {
    const el = box.current;
    const ro = new ResizeObserver(() => {
      if (plot.current && el.clientWidth) plot.current.setSize({ width: el.clientWidth, height });
    });
    ro.observe(el);
    const onTheme = () => { shape.current = ""; };
    window.addEventListener("themechange", onTheme);
    return () => {
      ro.disconnect();
      window.removeEventListener("themechange", onTheme);
      if (plot.current) plot.current.destroy();
      plot.current = null;
    };
  }, []);

  // brushing / legend search hide series; the legend list's hover focuses one
  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    series.forEach((s, i) => {
      const show = !(hidden && hidden.has(i));
      for (const idx of seriesIndexes(i)) if (u.series[idx] && u.series[idx].show !== show) u.setSeries(idx, { show });
    });
  });
  useEffect(() => {
    const u = plot.current;
    if (!u) return;
    // uPlot: focusing series null gives every series its full alpha back
    if (highlight === null || highlight === undefined || highlight < 0) u.setSeries(null, { focus: true });
    else u.setSeries(seriesIndexes(highlight).pop(), { focus: true });
  }, [highlight]);

  function seriesIndexes(i) {
    return smoothOn ? [1 + 2 * i, 2 + 2 * i] : [1 + i];
  }

  function options() {
    const grid = cssVar("--grid");
    const axis = cssVar("--axis");
    const yFmt = FORMATS[format] || FORMATS.num;
    const uSeries = [{ label: xKind, value: (u, v) => (v === null ? "–" : xFormatter(xKind)(v)) }];
    series.forEach((s, i) => {
      const color = s.color || palette(i);
      if (smoothOn) {
        uSeries.push({ label: `${s.label} (raw)`, stroke: withAlpha(color, 0.22), width: 1, spanGaps: true, points: { show: false } });
      }
      uSeries.push({
        label: s.label, stroke: color, width: s.width || 1.75, spanGaps: true, dash: s.dash,
        points: { show: points || s.points || false, size: 5, fill: color },
      });
    });
    const width = box.current.clientWidth || 600;
    return {
      width, height, series: uSeries, pxAlign: 0,
      legend: { show: false },
      focus: { alpha: 0.25 },
      cursor: {
        sync: syncKey ? { key: syncKey, setSeries: false } : undefined,
        focus: { prox: 24 },
        drag: { x: true, y: false, setScale: true },
        points: { size: 6 },
      },
      scales: {
        x: { time: false },
        y: log ? { distr: 3, log: 10 } : yRange ? { range: yRange } : { range: (u, lo, hi) => padRange(lo, hi) },
      },
      axes: [
        {
          stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1, size: 4 },
          values: (u, ticks) => ticks.map(xFormatter(xKind)), font: "11px system-ui, sans-serif", size: 30,
        },
        {
          stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { show: false },
          values: (u, ticks) => ticks.map(yFmt), font: "11px system-ui, sans-serif", size: 56,
        },
      ],
      hooks: {
        setSelect: [(u) => { if (u.select.width > 0) zoomed.current = true; }],
        setCursor: [(u) => updateLegend(u)],
        setSeries: [(u, idx, opts) => {
          if (!opts || !opts.focus || !onFocus) return;
          onFocus(idx === null || idx < 1 ? null : smoothOn ? Math.floor((idx - 1) / 2) : idx - 1);
        }],
        draw: [(u) => drawMarkers(u, markersRef.current)],
        ready: [(u) => {
          u.over.addEventListener("dblclick", () => { zoomed.current = false; });
          u.over.addEventListener("mouseleave", () => { if (onFocus) onFocus(null); });
        }],
      },
    };
  }

  function buildLegend() {
    const el = legend.current;
    if (!el) return;
    el.replaceChildren();
    const x = document.createElement("span");
    x.className = "x";
    el.appendChild(x);
    if (series.length > 8) return; // many runs: the compare page lists them beside the charts
    series.forEach((s, i) => {
      const item = document.createElement("span");
      const sw = document.createElement("span");
      sw.className = "sw";
      sw.style.background = s.color || palette(i);
      const name = document.createTextNode(`${s.label} `);
      const val = document.createElement("b");
      item.append(sw, name, val);
      el.appendChild(item);
    });
    updateLegend(plot.current);
  }

  function updateLegend(u) {
    const el = legend.current;
    if (!el || !u) return;
    const idx = u.cursor.idx;
    const yFmt = FORMATS[format] || FORMATS.num;
    const xs = u.data[0];
    const at = idx === null || idx === undefined ? xs.length - 1 : idx;
    const kids = el.children;
    if (kids[0]) kids[0].textContent = at >= 0 && xs.length ? `${xKind} ${xFormatter(xKind)(xs[at])}` : "";
    series.forEach((s, i) => {
      const b = kids[i + 1] && kids[i + 1].lastChild;
      if (!b) return;
      const col = u.data[seriesIndexes(i).pop()];
      let v = col ? col[at] : null;
      if ((v === null || v === undefined) && idx === null && col) {
        for (let k = col.length - 1; k >= 0; k--) if (col[k] !== null && col[k] !== undefined) { v = col[k]; break; }
      }
      b.textContent = v === null || v === undefined ? "–" : yFmt(v);
    });
  }

  const counts = {};
  for (const s of series) counts[s.label] = s.x.length;
  return html`<div class="chart-box" data-testid=${testid} data-series=${series.length} data-points=${JSON.stringify(counts)}>
    <div ref=${box}></div>
    ${showLegend && html`<div class="legend" ref=${legend}></div>`}
  </div>`;
}

function padRange(lo, hi) {
  if (lo === null || hi === null) return [0, 1];
  if (lo === hi) return [lo - Math.abs(lo || 1) * 0.1, hi + Math.abs(hi || 1) * 0.1];
  const pad = (hi - lo) * 0.06;
  return [lo - pad, hi + pad];
}

function buildData(series, smooth, log) {
  const cols = [];
  // one smoothing unit for the whole chart: runs logged at different densities smooth alike
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of series) if (s.x.length) { lo = Math.min(lo, s.x[0]); hi = Math.max(hi, s.x[s.x.length - 1]); }
  const unit = hi > lo ? (hi - lo) / 200 : null;
  for (const s of series) {
    let y = Array.from(s.y);
    if (log) y = y.map((v) => (v > 0 ? v : null)); // a log axis cannot show <= 0 (it is not hidden in linear mode)
    if (smooth > 0) cols.push({ x: s.x, y }, { x: s.x, y: ema(s.x, y, smooth, unit) });
    else cols.push({ x: s.x, y });
  }
  return align(cols);
}

function drawMarkers(u, markers) {
  if (!markers || !markers.length) return;
  const ctx = u.ctx;
  const { top, height } = u.bbox;
  const dpr = devicePixelRatio || 1;
  ctx.save();
  for (const m of markers) {
    const x = u.valToPos(m.x, "x", true);
    if (!Number.isFinite(x) || x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
    if (m.kind === "best") {
      ctx.strokeStyle = cssVar("--ok");
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.lineWidth = 1.25 * dpr;
      ctx.beginPath();
      ctx.moveTo(x, top);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = cssVar("--ok");
      ctx.font = `${11 * dpr}px system-ui, sans-serif`;
      ctx.fillText(m.label || "best", x + 4 * dpr, top + 12 * dpr);
    } else {
      ctx.fillStyle = cssVar("--fg-3");
      ctx.beginPath();
      const y = top + height;
      ctx.moveTo(x, y - 7 * dpr);
      ctx.lineTo(x - 4 * dpr, y);
      ctx.lineTo(x + 4 * dpr, y);
      ctx.closePath();
      ctx.fill();
    }
  }
  ctx.restore();
}
