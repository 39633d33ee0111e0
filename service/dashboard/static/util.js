// Shared helpers: API calls with the bearer token, formatting, job progress, SSE, chart colours.

/** One colour per meaning, used by every chart and the summary cards. */
export const COLORS = {
  search: "#4c78a8", chosen: "#f58518", base: "#64748b", pruned: "#f58518", uniform: "#54a24b",
  global: "#b279a2", budget: "#e45756", pareto: "#72b7b2", reward: "#4c78a8", secondary: "#9d755d",
};
export const PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#9d755d", "#ff9da6",
  "#bab0ac", "#eeca3b"];

export const tokenKey = "prunesearch.token";
export const token = () => localStorage.getItem(tokenKey) || "";

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
  }
}

export function authHeaders(extra = {}) {
  const t = token();
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra;
}

/** fetch JSON from the API; throws ApiError with the server's `detail` on a non-2xx answer. */
export async function api(path, { method = "GET", body, raw } = {}) {
  const headers = authHeaders(body !== undefined && !raw ? { "Content-Type": "application/json" } : {});
  const r = await fetch(path, { method, headers, body: raw ?? (body !== undefined ? JSON.stringify(body) : undefined) });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!r.ok) throw new ApiError(r.status, data && data.detail !== undefined ? data.detail : text || r.statusText);
  return data;
}

export function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

export function errorText(err) {
  if (err instanceof ApiError) {
    const d = err.detail;
    if (Array.isArray(d)) return d.map((e) => `${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`).join("; ");
    return `${err.status}: ${typeof d === "string" ? d : JSON.stringify(d)}`;
  }
  return String(err && err.message ? err.message : err);
}

export function banner(message) {
  const el = document.getElementById("banner");
  el.textContent = message || "";
  el.hidden = !message;
}

export const pct = (x, digits = 1) => (x == null || Number.isNaN(x) ? "—" : `${(100 * x).toFixed(digits)}%`);
export const ms = (x) => (x == null ? "—" : x >= 100 ? `${x.toFixed(0)} ms` : x >= 1 ? `${x.toFixed(2)} ms` : `${x.toFixed(3)} ms`);
export function count(x) {
  if (x == null) return "—";
  const a = Math.abs(x);
  return a >= 1e9 ? `${(x / 1e9).toFixed(2)} G` : a >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : a >= 1e3 ? `${(x / 1e3).toFixed(1)} k` : `${x}`;
}
export function duration(seconds) {
  if (seconds == null || Number.isNaN(seconds)) return "—";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")}m`;
}
export const when = (iso) => (iso ? new Date(iso.endsWith("Z") || iso.includes("+") ? iso : `${iso}Z`) : null);
export function dateTime(iso) {
  const d = when(iso);
  return d ? d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit" }) : "—";
}
export function jobDuration(job) {
  const start = when(job.started_at);
  if (!start) return null;
  const end = when(job.finished_at) || new Date();
  return (end - start) / 1000;
}

/** Human budget: "latency ≤ 90%" (of the base) or "latency ≤ 5 ms". */
export function budgetText(b) {
  if (!b) return "—";
  const metric = { latency_ms: "latency", flops: "FLOPs", params: "params" }[b.metric] || b.metric;
  if (b.relative !== false) return `${metric} ≤ ${(100 * b.target).toFixed(0)}%`;
  return `${metric} ≤ ${b.metric === "latency_ms" ? ms(b.target) : count(b.target)}`;
}

// The server's vocabulary (strategies, criteria, dimensions, phases, event kinds, the demo job): fetched
// once from /api/v1/catalog, never copied here. app.js waits for it before the first view.
let catalogPromise = null;
let phases = [];  // [{name, weight}] in pipeline order
let eventKinds = {};  // kind -> summary template (agents/events.py)
let granularities = {};  // granularity -> {kind, unit, width, binary, sparse} (search_spaces/kinds.py)
export function catalog() {
  catalogPromise ??= api("/api/v1/catalog").then((cat) => {
    phases = cat.phases; eventKinds = cat.events; granularities = cat.granularities; return cat;
  }).catch((err) => { catalogPromise = null; throw err; });
  return catalogPromise;
}

/** What a plan group's units count ("channels", "heads", …), from its granularity's declaration. */
export function unitOf(granularity) {
  return granularities[granularity ?? "channel"]?.unit ?? "units";
}

const FIELD = /\{(\w+)(?::([^}]*))?\}/g;
function formatField(value, spec) {
  if (typeof value === "boolean") return value ? "yes" : "no";
  if (typeof value !== "number") return typeof value === "string" ? value : JSON.stringify(value);
  if (spec === "%") return pct(value);
  if (spec === "n") return count(value);
  if (spec === "4") return String(Number(value.toPrecision(4)));
  return String(value);
}

/** One event as a line of text, from its kind's template in the catalog (see agents/events.py). */
export function summarize(e) {
  const template = eventKinds[e.type];
  if (template == null) {
    const { eventId, type, ...rest } = e;
    const text = JSON.stringify(rest);
    return `${type}${text !== "{}" ? ` ${text.length > 160 ? `${text.slice(0, 160)}…` : text}` : ""}`;
  }
  // [optional] sections stay only when every field inside them is set; then every field is filled once
  const kept = template.replace(/\[([^\]]*)\]/g, (_, part) =>
    [...part.matchAll(FIELD)].every(([, name]) => e[name] != null) ? part : "");
  return kept.replace(FIELD, (_, name, spec) => formatField(e[name], spec));
}

/** Overall fraction done: whole phases behind, plus the current phase's done/planned. */
export function progressFraction(job) {
  if (job.status === "succeeded") return 1;
  const p = job.progress || {};
  const idx = phases.findIndex((ph) => ph.name === p.phase);
  if (idx < 0) return 0;
  const total = phases.reduce((a, ph) => a + ph.weight, 0);
  const before = phases.slice(0, idx).reduce((a, ph) => a + ph.weight, 0);
  const within = p.done && p.planned ? Math.min(p.done / p.planned, 1) : 0;
  return (before + phases[idx].weight * within) / total;
}

export function progressBar(job, wide = false) {
  const f = progressFraction(job);
  return `<span class="bar ${wide ? "wide" : ""} ${esc(job.status)}" role="progressbar" aria-valuemin="0" aria-valuemax="100"
    aria-valuenow="${(100 * f).toFixed(1)}" title="${(100 * f).toFixed(0)}%"><span style="width:${(100 * f).toFixed(1)}%"></span></span>`;
}

export const badge = (status) => `<span class="badge ${esc(status)}">${esc(status)}</span>`;
export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

/**
 * Read a job's Server-Sent Events with fetch (so the bearer token can be sent), resuming after the
 * last id on a dropped connection. Returns a function that stops the stream.
 */
export function streamEvents(jobId, onEvent, onEnd, onError) {
  const ctrl = new AbortController();
  let last = 0;
  let stopped = false;
  const handle = (block) => {
    let id = null, type = "message", data = "";
    for (const line of block.split("\n")) {
      if (line.startsWith(":")) continue;
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
      if (field === "id") id = Number(value);
      else if (field === "event") type = value;
      else if (field === "data") data += (data ? "\n" : "") + value;
    }
    if (!data) return false;
    if (id != null) last = id;
    const payload = JSON.parse(data);
    if (type === "end") { onEnd(payload); return true; }
    onEvent({ ...payload, type, eventId: id });  // payload `id`s (candidate ids) stay intact
    return false;
  };
  (async () => {
    while (!stopped) {
      try {
        const r = await fetch(`/api/v1/jobs/${encodeURIComponent(jobId)}/events?after=${last}`,
          { headers: authHeaders({ Accept: "text/event-stream" }), signal: ctrl.signal });
        if (!r.ok) throw new ApiError(r.status, (await r.json().catch(() => ({}))).detail || r.statusText);
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf = (buf + decoder.decode(value, { stream: true })).replace(/\r\n/g, "\n");
          let cut;
          while ((cut = buf.indexOf("\n\n")) >= 0) {
            const block = buf.slice(0, cut);
            buf = buf.slice(cut + 2);
            if (handle(block)) { stopped = true; ctrl.abort(); return; }
          }
        }
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        if (onError) onError(err);
        if (err instanceof ApiError && err.status < 500) return;
      }
      await new Promise((res) => setTimeout(res, 2000));
    }
  })();
  return () => { stopped = true; ctrl.abort(); };
}

/** Plotly with the same look everywhere; marks the div with how many points it draws (tests read it). */
export function plot(div, traces, layout) {
  const points = traces.reduce((n, t) => n + (t.showInCount === false ? 0 : (t.y || t.x || []).length), 0);
  const clean = traces.map(({ showInCount, ...t }) => t);
  div.dataset.points = String(points);
  Plotly.react(div, clean, {
    margin: { l: 64, r: 20, t: 34, b: 52 }, font: { family: "system-ui, sans-serif", size: 12, color: "#1f2937" },
    paper_bgcolor: "#fff", plot_bgcolor: "#fff", hovermode: "closest",
    legend: { orientation: "h", x: 0, y: 1.02, yanchor: "bottom" }, ...layout,
    xaxis: { gridcolor: "#edf2f7", zeroline: false, automargin: true, ...layout.xaxis },
    yaxis: { gridcolor: "#edf2f7", zeroline: false, automargin: true, ...layout.yaxis },
  }, { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["lasso2d", "select2d"] });
  if (!div.resizeWatch) {  // follow the panel's width (grid reflows, a scrollbar appearing), not just the window's
    div.resizeWatch = new ResizeObserver(() => requestAnimationFrame(() => {
      if (div.isConnected && div.offsetWidth > 0 && div.data) Plotly.Plots.resize(div).catch(() => {});
    }));
    div.resizeWatch.observe(div);
  }
}
