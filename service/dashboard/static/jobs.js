// Jobs page: every job, refreshed in place every 1.5 s, filtered in the browser.
import { api, badge, budgetText, catalog, dateTime, duration, errorText, esc, jobDuration, pct, progressBar, progressFraction } from "./util.js";

const FILTERS = { status: "", strategy: "", text: "" };

/** The returned model's validation accuracy (after fine-tuning when there was one), as the job page's headline. */
function bestAcc(job) {
  const r = job.result;
  if (r && r.pruned) return { value: r.pruned.val_acc_ft ?? r.pruned.val_acc, tuned: r.pruned.val_acc_ft != null };
  return { value: job.progress ? job.progress.best_val_acc : null, tuned: false };
}

function accCell(job) {
  const { value, tuned } = bestAcc(job);
  return `${pct(value)}${tuned ? ' <span class="small muted" title="after fine-tuning">ft</span>' : ""}`;
}

function speedup(job) {
  const ratio = job.result && job.result.ratios && job.result.ratios.latency;
  return ratio ? `${(1 / ratio).toFixed(2)}×` : "—";
}

function row(job) {
  const spec = job.spec || {};
  const p = job.progress || {};
  const phase = job.status === "running" && p.phase
    ? `<div class="small muted">${esc(p.phase)}${p.planned ? ` ${p.done ?? 0}/${p.planned}` : ""}</div>` : "";
  return `<td><a href="#/jobs/${encodeURIComponent(job.id)}">${esc(job.name || job.id.slice(0, 8))}</a></td>
    <td>${esc(spec.model ? spec.model.arch : "—")}</td>
    <td>${esc(spec.strategy ? spec.strategy.name : "—")}</td>
    <td>${esc(budgetText(spec.budget))}</td>
    <td>${badge(job.status)}</td>
    <td>${progressBar(job)}${phase}</td>
    <td class="num">${accCell(job)}</td>
    <td class="num">${speedup(job)}</td>
    <td>${dateTime(job.started_at)}</td>
    <td class="num">${duration(jobDuration(job))}</td>`;
}

function matches(job) {
  const spec = job.spec || {};
  if (FILTERS.status && job.status !== FILTERS.status) return false;
  if (FILTERS.strategy && (!spec.strategy || spec.strategy.name !== FILTERS.strategy)) return false;
  const hay = `${job.name || ""} ${job.id} ${spec.model ? spec.model.arch : ""}`.toLowerCase();
  return !FILTERS.text || hay.includes(FILTERS.text.toLowerCase());
}

export function renderJobs(root, params) {
  const highlight = params.get("highlight");
  root.innerHTML = `
    <div class="row" style="margin-bottom:12px">
      <h1>Jobs</h1><span class="spacer"></span>
      <input id="f-text" type="search" placeholder="filter by name or model" value="${esc(FILTERS.text)}">
      <select id="f-status"><option value="">all statuses</option>
        ${["queued", "running", "succeeded", "failed", "cancelled"].map((s) => `<option ${FILTERS.status === s ? "selected" : ""}>${s}</option>`).join("")}
      </select>
      <select id="f-strategy"><option value="">all strategies</option></select>
      <a class="button" href="#/new">New job</a>
    </div>
    <div class="panel table-wrap">
      <table id="jobs-table"><thead><tr><th>Name</th><th>Model</th><th>Strategy</th><th>Budget</th><th>Status</th>
        <th>Progress</th><th class="num" title="validation accuracy of the returned model; ft: after fine-tuning">Val. acc.</th><th class="num">Speed-up</th><th>Started</th><th class="num">Duration</th></tr></thead>
        <tbody></tbody></table>
      <div id="jobs-state" class="empty">Loading jobs…</div>
    </div>`;
  // the strategies come from the catalog (their one declaration), never from a copy here
  catalog().then((cat) => {
    root.querySelector("#f-strategy").insertAdjacentHTML("beforeend", Object.keys(cat.strategies)
      .map((s) => `<option ${FILTERS.strategy === s ? "selected" : ""}>${esc(s)}</option>`).join(""));
  }).catch(() => {});
  const tbody = root.querySelector("tbody");
  const state = root.querySelector("#jobs-state");
  let jobs = [];
  let failed = null;

  const draw = () => {
    const shown = jobs.filter(matches);
    const seen = new Set();
    let prev = null;
    for (const job of shown) {
      seen.add(job.id);
      let tr = tbody.querySelector(`tr[data-id="${CSS.escape(job.id)}"]`);
      const html = row(job);
      if (!tr) {
        tr = document.createElement("tr");
        tr.dataset.id = job.id;
        if (job.id === highlight) tr.classList.add("highlight");
      }
      if (tr.dataset.html !== html) { tr.innerHTML = html; tr.dataset.html = html; }
      tr.dataset.status = job.status;
      tr.dataset.progress = (100 * progressFraction(job)).toFixed(1);
      const want = prev ? prev.nextSibling : tbody.firstChild;
      if (want !== tr) tbody.insertBefore(tr, want);
      prev = tr;
    }
    tbody.querySelectorAll("tr").forEach((tr) => { if (!seen.has(tr.dataset.id)) tr.remove(); });
    if (failed) { state.innerHTML = `<span class="error">Cannot load jobs: ${esc(failed)}</span>`; state.hidden = false; }
    else if (!jobs.length) { state.innerHTML = 'No jobs yet. <a href="#/new">Submit one</a>.'; state.hidden = false; }
    else if (!shown.length) { state.textContent = "No job matches these filters."; state.hidden = false; }
    else state.hidden = true;
  };

  let timer = null;
  let alive = true;
  const load = async () => {
    try {
      jobs = (await api("/api/v1/jobs?limit=200")).items;
      failed = null;
    } catch (err) { failed = errorText(err); }
    if (!alive) return;
    draw();
    timer = setTimeout(load, 1500);
  };
  root.querySelector("#f-text").addEventListener("input", (e) => { FILTERS.text = e.target.value; draw(); });
  root.querySelector("#f-status").addEventListener("change", (e) => { FILTERS.status = e.target.value; draw(); });
  root.querySelector("#f-strategy").addEventListener("change", (e) => { FILTERS.strategy = e.target.value; draw(); });
  load();
  return () => { alive = false; clearTimeout(timer); };
}
