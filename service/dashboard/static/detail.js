// Job detail: live over SSE while running; summary, downloads and every chart the job has data for.
import * as C from "./charts.js";
import { api, badge, banner, budgetText, count, dateTime, duration, errorText, esc, jobDuration, ms, pct, plot,
  progressBar, streamEvents, summarize, TERMINAL } from "./util.js";

// [key, title, chart, the event kind it needs (shown once the job emitted one; null: every job)]
const PANELS = [
  ["best", "Best so far", C.bestSoFar, null],
  ["latency", "Accuracy vs measured latency", (s) => C.tradeoff(s, "latency"), null],
  ["flops", "Accuracy vs FLOPs", (s) => C.tradeoff(s, "flops"), null],
  ["layers", "Chosen plan: channels per layer", C.layerChannels, null],
  ["groups", "Chosen plan: fraction removed per dimension", C.groupRatios, null],
  ["sensitivity", "Sensitivity per group", C.sensitivity, "sensitivity_point"],
  ["amc", "AMC reward per episode", C.amcRewards, "amc_episode"],
  ["netadapt", "NetAdapt: accuracy and resource per iteration", C.netadapt, "netadapt_iteration"],
  ["lut", "Latency per layer (lookup table): base vs pruned", C.lutBreakdown, null],
];
const MAX_LOG = 300;

const budgetLimit = (b) => (b.metric === "latency_ms" ? `latency ≤ ${ms(b.limit)}`
  : `${b.metric === "flops" ? "FLOPs" : "params"} ≤ ${count(b.limit)}`);

function cards(s) {
  const r = s.report;
  if (!r) return `<div class="card"><div class="label">Summary</div><div class="sub">Base vs pruned accuracy, latency, FLOPs and params appear when the job succeeds.</div></div>`;
  const lat = (l) => `${ms(l.median_ms)} <span class="sub">(p10–p90 ${ms(l.p10_ms)}–${ms(l.p90_ms)})</span>`;
  const pair = (label, base, pruned, sub, title = label) => `<div class="card" data-card="${esc(label)}"><div class="label">${title}</div>
    <div class="value"><span class="base-val">${base}</span> → <span class="pruned-val">${pruned}</span></div><div class="sub">${sub}</div></div>`;
  // The headline is the model the job returns: fine-tuned when it was (the jobs list shows the same figure).
  const tuned = r.pruned.val_acc_ft != null;
  const accuracy = tuned
    ? pair("Validation accuracy", pct(r.base.val_acc), pct(r.pruned.val_acc_ft),
      `after fine-tuning; before it ${pct(r.pruned.val_acc)}<br>test ${pct(r.base.test_acc)} → ${pct(r.pruned.test_acc_ft)} `
      + `(before fine-tuning ${pct(r.pruned.test_acc)})`, "Validation accuracy (after fine-tuning)")
    : pair("Validation accuracy", pct(r.base.val_acc), pct(r.pruned.val_acc),
      `no fine-tuning<br>test ${pct(r.base.test_acc)} → ${pct(r.pruned.test_acc)}`);
  return [
    accuracy,
    `<div class="card" data-card="Latency"><div class="label">Latency (median, ${esc(r.measurement.device)}, batch ${esc(r.measurement.batch_size)})</div>
      <div class="value"><span class="base-val">${ms(r.base.latency.median_ms)}</span> → <span class="pruned-val">${ms(r.pruned.latency_ms)}</span></div>
      <div class="sub">base ${lat(r.base.latency)}<br>pruned ${lat(r.pruned.latency)}<br>speed-up ${(1 / r.ratios.latency).toFixed(2)}× `
      + `(ratio CI ${r.ratios.latency_ci.map((x) => x.toFixed(3)).join("–")})</div></div>`,
    pair("FLOPs (MACs)", count(r.base.flops), count(r.pruned.flops), `${pct(r.ratios.flops)} of the base`),
    pair("Parameters", count(r.base.params), count(r.pruned.params), `${pct(r.ratios.params)} of the base`),
    `<div class="card" data-card="Budget"><div class="label">Budget</div><div class="value">${r.budget_met ? "met" : '<span class="error">missed</span>'}</div>
      <div class="sub">${budgetLimit(r.budget)} (${pct(r.budget.target_ratio)} of the base)</div></div>`,
  ].join("");
}

const DOWNLOADS = [["plan.json", "Plan"], ["model.safetensors", "Weights"], ["model.onnx", "ONNX"], ["report.json", "Report"]];

function downloads(s) {
  if (!s.artifacts) return s.job && TERMINAL.has(s.job.status) && s.job.status !== "succeeded"
    ? '<span class="muted">No artifacts: the job did not succeed.</span>' : '<span class="muted">Downloads appear when the job succeeds.</span>';
  const byName = Object.fromEntries(s.artifacts.map((a) => [a.name, a]));
  const main = DOWNLOADS.filter(([n]) => byName[n]).map(([n, label]) =>
    `<a href="${esc(byName[n].url)}" download="${esc(n)}" data-artifact="${esc(n)}">${label} <span class="muted small">(${esc(n)}, ${count(byName[n].size)}B)</span></a>`);
  const rest = s.artifacts.filter((a) => !DOWNLOADS.some(([n]) => n === a.name)).map((a) =>
    `<a href="${esc(a.url)}" download="${esc(a.name)}" data-artifact="${esc(a.name)}" class="small">${esc(a.name)}</a>`);
  return `${main.join("")}${rest.length ? `<span class="muted small">also:</span> ${rest.join(" ")}` : ""}`;
}

export function renderDetail(root, jobId) {
  const s = { job: null, budget: null, evals: [], baselines: [], sweep: [], curves: {}, sensBase: null, amc: [], netadapt: [],
    report: null, plan: null, artifacts: null, log: [], streamEnded: false, kinds: new Set() };
  const evalById = new Map();
  root.innerHTML = `
    <div class="small"><a href="#/jobs">← Jobs</a></div>
    <div class="row" style="margin:6px 0 2px"><h1 id="d-title">Job ${esc(jobId.slice(0, 8))}</h1><span id="d-badge"></span>
      <span class="spacer"></span><button id="d-cancel" class="danger" hidden>Cancel job</button></div>
    <div id="d-sub" class="muted small" style="margin-bottom:12px"></div>
    <div class="panel" id="d-progress">
      <div class="row"><strong id="d-phase">—</strong><span id="d-evals" class="muted"></span><span id="d-eta" class="muted"></span>
        <span class="spacer"></span><span id="d-elapsed" class="muted"></span></div>
      <div id="d-bar" style="margin:8px 0"></div>
      <div id="d-error" class="error"></div>
      <details open><summary class="small muted">Event log</summary><div class="log" id="d-log"></div></details>
    </div>
    <div class="cards" id="d-cards"></div>
    <div class="panel downloads"><h2>Downloads</h2><div id="d-downloads"></div></div>
    <div class="panel" id="d-excluded" hidden><h2>Layers left unpruned</h2><div class="small muted">The preflight
      excluded these layers automatically (their pruning fails at every setting); the plan records why.</div>
      <ul class="small" id="d-excluded-list"></ul></div>
    <div class="charts">${PANELS.map(([key, title]) => `
      <div class="chart-panel" data-panel="${key}" hidden><h2>${title}</h2>
        <div class="chart" id="c-${key}" data-chart="${key}"></div><div class="chart-empty" hidden></div></div>`).join("")}
    </div>`;
  const $ = (sel) => root.querySelector(sel);
  let alive = true, stopStream = null, pollTimer = null, renderTimer = null, fetchedFinal = false, finalLoaded = false;

  // Whether the page shows all it will: the job ended, its event stream was replayed to its `end`, and
  // the results (artifacts, plan, report) were fetched. Until then a finished job's page is still
  // filling in from two sources (the REST results arrive before the tail of a long event stream).
  const complete = () => Boolean(s.job && TERMINAL.has(s.job.status) && s.streamEnded && finalLoaded);

  const drawCharts = () => {
    const ended = Boolean(s.job && TERMINAL.has(s.job.status));
    for (const [key, , build, only] of PANELS) {
      const panel = root.querySelector(`[data-panel="${key}"]`);
      panel.hidden = !s.job || (only !== null && !s.kinds.has(only));
      if (panel.hidden) continue;
      const out = build(s);
      const chart = panel.querySelector(".chart"), empty = panel.querySelector(".chart-empty");
      if (out.empty && ended) { panel.hidden = true; chart.dataset.points = "0"; continue; } // nothing will come
      if (out.empty) {
        chart.hidden = true; empty.hidden = false; empty.textContent = out.empty;
        chart.dataset.points = "0";
      } else {
        chart.hidden = false; empty.hidden = true;
        plot(chart, out.traces, out.layout);
      }
    }
  };

  const drawHeader = () => {
    const job = s.job;
    if (!job) return;
    const spec = job.spec || {};
    $("#d-title").textContent = job.name || `Job ${job.id.slice(0, 8)}`;
    $("#d-badge").innerHTML = badge(job.status);
    $("#d-sub").innerHTML = `${esc(job.id)} · ${esc(spec.model ? spec.model.arch : "?")} on ${esc(spec.dataset ? spec.dataset.name : "?")}
      · ${esc(spec.strategy ? spec.strategy.name : "?")} · ${esc(budgetText(spec.budget))} · ${esc(spec.device ? spec.device.name : "")}
      · created ${dateTime(job.created_at)}`;
    const cancel = $("#d-cancel");
    cancel.hidden = TERMINAL.has(job.status);
    if (job.cancel_requested && !TERMINAL.has(job.status)) { cancel.disabled = true; cancel.textContent = "Cancelling…"; }
    const p = job.progress || {};
    $("#d-phase").textContent = job.status === "queued" ? "queued" : TERMINAL.has(job.status) ? job.status : (p.phase || "starting");
    const last = s.evals[s.evals.length - 1];
    $("#d-evals").textContent = last ? `evaluations ${last.done}${last.planned ? ` / ${last.planned}` : ""}` : "";
    $("#d-eta").textContent = job.status === "running" && p.eta_s != null && p.phase === "search" ? `ETA ${duration(p.eta_s)}` : "";
    $("#d-elapsed").textContent = job.started_at ? `elapsed ${duration(jobDuration(job))}` : "";
    $("#d-bar").innerHTML = progressBar(job, true);
    $("#d-error").textContent = job.error && job.status === "failed" ? job.error : "";
  };

  const render = () => {
    renderTimer = null;
    if (!alive) return;
    drawHeader();
    $("#d-cards").innerHTML = cards(s);
    $("#d-downloads").innerHTML = downloads(s);
    const excluded = Object.entries((s.plan && s.plan.excluded) || {});
    $("#d-excluded").hidden = !excluded.length;
    $("#d-excluded-list").innerHTML = excluded.map(([layer, why]) =>
      `<li data-layer="${esc(layer)}"><code>${esc(layer)}</code>: ${esc(why)}</li>`).join("");
    drawCharts();
    root.querySelector(".charts").dataset.complete = String(complete());
  };
  const schedule = () => { if (!renderTimer) renderTimer = setTimeout(render, 200); };

  const appendLog = (e) => {
    const log = $("#d-log");
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
    const div = document.createElement("div");
    div.innerHTML = `<span class="t">#${esc(e.eventId ?? "")}</span>${esc(summarize(e))}`;
    log.appendChild(div);
    while (log.childElementCount > MAX_LOG) log.firstChild.remove();
    if (atBottom) log.scrollTop = log.scrollHeight;
  };

  const onEvent = (e) => {
    appendLog(e);
    s.kinds.add(e.type);
    switch (e.type) {
      case "budget": s.budget = e; break;
      case "evaluation": // a resumed job may redo an evaluation: the latest record wins
        evalById.set(e.id, e);
        s.evals = [...evalById.values()].sort((a, b) => a.eventId - b.eventId);
        break;
      case "baseline": s.baselines = [...s.baselines.filter((b) => b.name !== e.name), e]; break;
      case "sweep_point": s.sweep = [...s.sweep.filter((p) => p.ratio !== e.ratio), e]; break;
      case "sensitivity_curve": s.curves[e.group] = e; break;
      case "sensitivity_point": if (e.group == null) s.sensBase = e.val_acc; break;
      case "amc_episode": s.amc.push(e); break;
      case "netadapt_iteration": s.netadapt.push(e); break;
      case "done": s.report = e.report; break;
      default: break;
    }
    schedule();
  };

  const loadFinal = async () => {
    if (fetchedFinal) return;
    fetchedFinal = true;
    try {
      s.artifacts = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/artifacts`);
      if (!s.artifacts.length) s.artifacts = null;
      if (s.job.status === "succeeded") {
        s.plan = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/plan`);
        if (!s.report) s.report = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/artifacts/report.json`);
      }
    } catch (err) { banner(`Could not load the job's results: ${errorText(err)}`); }
    finalLoaded = true;
    schedule();
  };

  const poll = async () => {
    try {
      s.job = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}`);
    } catch (err) {
      if (!alive) return;
      if (err.status === 404) { root.innerHTML = `<div class="panel empty">No job ${esc(jobId)}. <a href="#/jobs">Back to jobs</a></div>`; alive = false; return; }
      banner(`Cannot reach the server: ${errorText(err)}`);
    }
    if (!alive) return;
    if (s.job && !stopStream) {
      stopStream = streamEvents(jobId, onEvent, () => { s.streamEnded = true; poll(); },
        (err) => banner(`Event stream: ${errorText(err)}`));
    }
    if (s.job && TERMINAL.has(s.job.status)) await loadFinal();
    schedule();
    if (alive && !(s.job && TERMINAL.has(s.job.status))) pollTimer = setTimeout(poll, 1500);
  };

  $("#d-cancel").addEventListener("click", async () => {
    const btn = $("#d-cancel");
    btn.disabled = true;
    try {
      s.job = await api(`/api/v1/jobs/${encodeURIComponent(jobId)}/cancel`, { method: "POST" });
      btn.textContent = "Cancelling…";
      banner("");
    } catch (err) {
      btn.disabled = false;
      banner(err.status === 401 || err.status === 403 ? `Cancel refused (${err.status}): set a write token in “API token” at the top right.`
        : `Cancel failed: ${errorText(err)}`);
    }
    schedule();
  });

  poll();
  return () => { alive = false; clearTimeout(pollTimer); clearTimeout(renderTimer); if (stopStream) stopStream(); };
}
