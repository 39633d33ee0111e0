// The job-detail charts. Each takes the page state and returns {traces, layout} or an empty-state message.
import { COLORS, PALETTE, unitOf } from "./util.js";

const ACC = { title: { text: "validation accuracy (%)" } };
const toPct = (x) => (x == null ? null : 100 * x);

/** Milliseconds of the base model: the budget's base for a latency budget, else the final measurement. */
export function baseMs(s) {
  if (s.budget && s.budget.metric === "latency_ms") return s.budget.base;
  return s.report ? s.report.base.latency.median_ms : null;
}

const batchOf = (s) => (s.job && s.job.spec && s.job.spec.device ? s.job.spec.device.batch_size : null);
const latencyAxis = (s) => ({ title: { text: `latency (ms per batch of ${batchOf(s) ?? "?"})` } });

function budgetLine(x, ys) {
  const lo = Math.min(...ys), hi = Math.max(...ys);
  const pad = Math.max((hi - lo) * 0.1, 1);
  return { x: [x, x], y: [lo - pad, hi + pad], mode: "lines", name: "budget", showInCount: false,
    line: { color: COLORS.budget, dash: "dash", width: 2 }, hoverinfo: "name+x" };
}

/** Non-dominated points: nothing else is at least as accurate and at least as cheap. */
export function paretoFront(points) {
  const sorted = [...points].sort((a, b) => a.x - b.x || b.y - a.y);
  const front = [];
  let best = -Infinity;
  for (const p of sorted) if (p.y > best) { front.push(p); best = p.y; }
  return front;
}

export function bestSoFar(s) {
  // x is the evaluation's position in the search (events of one batch share the same `done` count)
  const numbered = s.evals.map((e, i) => ({ ...e, n: i + 1 }));
  const evals = numbered.filter((e) => e.val_acc != null);
  const best = numbered.filter((e) => e.best_val_acc != null);
  if (!evals.length && !best.length) {
    return { empty: s.evals.length ? "This strategy scores accuracy only on its final plan (cost-only bisection); see the summary cards."
      : "No evaluations yet." };
  }
  return {
    traces: [
      { x: evals.map((e) => e.n), y: evals.map((e) => toPct(e.val_acc)), mode: "markers", name: "evaluation",
        marker: { color: COLORS.search, opacity: 0.45, size: 7 }, hovertemplate: "#%{x}: %{y:.1f}%<extra></extra>" },
      { x: best.map((e) => e.n), y: best.map((e) => toPct(e.best_val_acc)), mode: "lines+markers",
        line: { shape: "hv", color: COLORS.chosen, width: 2 }, marker: { size: 5 }, name: "best within budget",
        hovertemplate: "#%{x}: best %{y:.1f}%<extra></extra>" },
    ],
    layout: { xaxis: { title: { text: "evaluation (#)" }, rangemode: "tozero" }, yaxis: ACC },
  };
}

function markersFor(name, pts, color, symbol, extra = {}) {
  return { x: pts.map((p) => p.x), y: pts.map((p) => p.y), text: pts.map((p) => p.label || ""), mode: "markers",
    name, marker: { color, symbol, size: symbol === "circle" ? 8 : 13, line: { color: "#fff", width: 1 } },
    hovertemplate: "%{text}<br>%{x:.4g}, %{y:.1f}%<extra>" + name + "</extra>", ...extra };
}

/** Accuracy against a resource (`latency` in ms or `flops` in millions of MACs). */
export function tradeoff(s, axis) {
  const base = baseMs(s);
  const xOf = axis === "latency"
    ? (e) => (e.latency_ratio != null && base != null ? e.latency_ratio * base : null)
    : (e) => (e.flops != null ? e.flops / 1e6 : null);
  const pts = (rows, label) => rows.filter((e) => e.val_acc != null && xOf(e) != null)
    .map((e) => ({ x: xOf(e), y: toPct(e.val_acc), label: label(e), src: e.latency_source, ci: e.latency_ci }));
  const evals = pts(s.evals, (e) => `evaluation ${e.done ?? e.id}`);
  const traces = [];
  if (axis === "latency") {
    const measured = evals.filter((p) => p.src !== "lut");
    const lut = evals.filter((p) => p.src === "lut");
    traces.push(markersFor("search (measured)", measured, COLORS.search, "circle", {
      error_x: { type: "data", symmetric: false, color: "#a0aec0", thickness: 1,
        array: measured.map((p) => (p.ci ? p.ci[1] * base - p.x : 0)),
        arrayminus: measured.map((p) => (p.ci ? p.x - p.ci[0] * base : 0)) } }));
    if (lut.length) traces.push(markersFor("search (LUT-predicted)", lut, COLORS.search, "circle-open"));
  } else {
    traces.push(markersFor("search", evals, COLORS.search, "circle"));
  }
  const uniformLine = pts([...(s.sweep || []), ...s.baselines.filter((b) => b.name === "uniform")],
    (e) => (e.ratio != null ? `uniform ${Math.round(e.ratio * 100)}%` : "uniform baseline")).sort((a, b) => a.x - b.x);
  if (uniformLine.length > 1) {
    traces.push({ x: uniformLine.map((p) => p.x), y: uniformLine.map((p) => p.y), text: uniformLine.map((p) => p.label),
      mode: "lines+markers", name: "uniform sweep", line: { color: COLORS.uniform, width: 1.5, dash: "dot" },
      marker: { color: COLORS.uniform, size: 6 }, showInCount: false,
      hovertemplate: "%{text}<br>%{x:.4g}, %{y:.1f}%<extra>uniform sweep</extra>" });
  }
  for (const b of s.baselines) {
    const [p] = pts([b], () => `${b.name} baseline`);
    if (p) traces.push(markersFor(`${b.name} baseline`, [p], COLORS[b.name] || COLORS.base, "diamond"));
  }
  const r = s.report;
  if (r) {
    const bx = axis === "latency" ? r.base.latency.median_ms : r.base.flops / 1e6;
    const px = axis === "latency" ? r.pruned.latency_ms : r.pruned.flops / 1e6;
    traces.push(markersFor("base model", [{ x: bx, y: toPct(r.base.val_acc), label: "base model" }], COLORS.base, "square"));
    traces.push(markersFor("chosen plan", [{ x: px, y: toPct(r.pruned.val_acc), label: "chosen plan" }], COLORS.chosen, "star"));
  }
  const strategy = s.job && s.job.spec ? s.job.spec.strategy : {};
  const metric = s.budget ? s.budget.metric : null;
  if (strategy.name === "optuna" && strategy.sampler === "nsga2" && evals.length
      && ((axis === "latency") === (metric === "latency_ms"))) {
    const front = paretoFront(evals);
    traces.push({ x: front.map((p) => p.x), y: front.map((p) => p.y), mode: "lines+markers", name: "Pareto front",
      line: { color: COLORS.pareto, width: 2, shape: "hv" }, marker: { color: COLORS.pareto, size: 10, symbol: "circle-open", line: { width: 2 } },
      showInCount: false });
  }
  const n = traces.reduce((a, t) => a + (t.showInCount === false ? 0 : t.x.length), 0);
  if (!n) {
    return { empty: axis === "latency" && metric && metric !== "latency_ms" && !r
      ? "Candidates are timed on the device only under a latency budget; the base and chosen plan appear when the job finishes."
      : "No evaluated plan with accuracy yet." };
  }
  const ys = traces.flatMap((t) => t.y).filter((y) => y != null);
  if (s.budget && axis === "latency" && metric === "latency_ms") traces.push(budgetLine(s.budget.limit, ys));
  if (s.budget && axis === "flops" && metric === "flops") traces.push(budgetLine(s.budget.limit / 1e6, ys));
  return { traces, layout: { xaxis: axis === "latency" ? latencyAxis(s) : { title: { text: "FLOPs (millions of MACs)" } }, yaxis: ACC } };
}

export function layerChannels(s) {
  if (!s.plan) return { empty: "The chosen plan appears when the job succeeds." };
  const L = s.plan.layers;
  return {
    traces: [
      { type: "bar", name: "base", x: L.map((l) => l.name), y: L.map((l) => l.out_before), marker: { color: COLORS.base } },
      { type: "bar", name: "pruned", x: L.map((l) => l.name), y: L.map((l) => l.out_after), marker: { color: COLORS.pruned } },
    ],
    layout: { barmode: "group", xaxis: { title: { text: "layer" }, tickangle: -30 }, yaxis: { title: { text: "output channels (#)" } } },
  };
}

export function groupRatios(s) {
  if (!s.plan) return { empty: "The chosen plan appears when the job succeeds." };
  const G = s.plan.groups;
  return {
    traces: [{ type: "bar", name: "removed", x: G.map((g) => g.name), y: G.map((g) => 100 * (g.effective_ratio ?? g.ratio)),
      text: G.map((g) => `${g.kept}/${g.units} ${unitOf(g.granularity)} kept`), marker: { color: COLORS.pruned },
      hovertemplate: "%{x}: %{y:.1f}% removed (%{text})<extra></extra>" }],
    layout: { xaxis: { title: { text: "dimension (channel group, heads, block or layer)" }, tickangle: -30 },
      yaxis: { title: { text: "removed (%)" }, range: [0, 100] }, showlegend: false },
  };
}

export function sensitivity(s) {
  const groups = Object.keys(s.curves);
  if (!groups.length) return { empty: "Sensitivity curves appear once every group has been scanned." };
  const traces = groups.map((g, i) => ({ x: s.curves[g].ratios.map((r) => 100 * r), y: s.curves[g].val_acc.map(toPct),
    mode: "lines+markers", name: g, line: { color: PALETTE[i % PALETTE.length] } }));
  if (s.sensBase != null) {
    const xs = traces.flatMap((t) => t.x);
    traces.push({ x: [Math.min(0, ...xs), Math.max(...xs)], y: [toPct(s.sensBase), toPct(s.sensBase)], mode: "lines",
      name: "unpruned", line: { color: COLORS.base, dash: "dot" }, showInCount: false });
  }
  return { traces, layout: { xaxis: { title: { text: "channels removed in the group (%)" } }, yaxis: ACC } };
}

export function amcRewards(s) {
  if (!s.amc.length) return { empty: "No episode finished yet." };
  const x = s.amc.map((e) => e.episode), y = s.amc.map((e) => e.reward);
  const k = 10, avg = y.map((_, i) => { const w = y.slice(Math.max(0, i - k + 1), i + 1); return w.reduce((a, b) => a + b, 0) / w.length; });
  return {
    traces: [
      { x, y, mode: "markers", name: "episode", marker: { color: COLORS.reward, opacity: 0.5, size: 6 } },
      { x, y: avg, mode: "lines", name: `mean of last ${k}`, line: { color: COLORS.chosen, width: 2 }, showInCount: false },
    ],
    layout: { xaxis: { title: { text: "episode (#)" } }, yaxis: { title: { text: "reward (unitless)" } } },
  };
}

export function netadapt(s) {
  if (!s.netadapt.length) return { empty: "No iteration finished yet." };
  const x = s.netadapt.map((e) => e.iteration);
  const metric = s.budget ? { latency_ms: "latency (LUT)", flops: "FLOPs", params: "params" }[s.budget.metric] : "resource";
  return {
    traces: [
      { x, y: s.netadapt.map((e) => toPct(e.val_acc)), mode: "lines+markers", name: "validation accuracy", line: { color: COLORS.search } },
      { x, y: s.netadapt.map((e) => 100 * e.resource_ratio), mode: "lines+markers", name: `${metric} of base`, yaxis: "y2",
        line: { color: COLORS.chosen, dash: "dot" } },
    ],
    layout: { xaxis: { title: { text: "iteration (#)" } }, yaxis: ACC,
      yaxis2: { title: { text: `${metric} (% of base)` }, overlaying: "y", side: "right", zeroline: false, showgrid: false },
      margin: { l: 64, r: 64, t: 34, b: 52 } },
  };
}

export function lutBreakdown(s) {
  const lut = s.report && s.report.lookup_table;
  if (!lut || !lut.layers_ms) {
    return { empty: s.budget && s.budget.metric !== "latency_ms"
      ? "No lookup table: it is built only for a latency budget." : "The per-layer breakdown appears when the job finishes." };
  }
  const names = Object.keys(lut.layers_ms.base);
  const rows = [...names, "other (calibrated)"].reverse();
  const val = (side) => rows.map((n) => (n === "other (calibrated)" ? lut.overhead_ms : lut.layers_ms[side][n]));
  return {
    traces: [
      { type: "bar", orientation: "h", name: "base", y: rows, x: val("base"), marker: { color: COLORS.base } },
      { type: "bar", orientation: "h", name: "pruned", y: rows, x: val("pruned"), marker: { color: COLORS.pruned } },
    ],
    layout: { barmode: "group", xaxis: { title: { text: `predicted latency (ms per batch of ${batchOf(s) ?? "?"})` } },
      yaxis: { title: { text: "layer" }, automargin: true } },
  };
}
