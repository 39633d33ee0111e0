// Schedules: list, create, pause/resume, run now, and each schedule's run history with its trend.
// The scheduler is optional server-side: a 404 on /api/v1/schedules is shown as such, never faked.
import { api, banner, COLORS, dateTime, errorText, esc, pct, plot } from "./util.js";

/** Pull accuracy and latency out of a run's comparison, whichever of the documented shapes it uses. */
export function comparisonValues(c) {
  if (!c) return {};
  const pick = (...paths) => {
    for (const p of paths) {
      const v = p.split(".").reduce((o, k) => (o && typeof o === "object" ? o[k] : undefined), c);
      if (typeof v === "number") return v;
    }
    return null;
  };
  // first run: {current: {base_accuracy, ...}}; later runs: {base: {accuracy: {previous, current, delta}}, ...}
  return {
    baseAcc: pick("current.base_accuracy", "base.accuracy.current", "base.val_acc", "base_accuracy"),
    prunedAcc: pick("current.pruned_accuracy", "pruned.accuracy.current", "pruned.val_acc", "pruned_accuracy"),
    baseMs: pick("current.base_latency_ms", "base.latency_ms.current", "base_latency_ms"),
    prunedMs: pick("current.pruned_latency_ms", "pruned.latency_ms.current", "pruned_latency_ms"),
  };
}

function template() {
  return JSON.stringify({ model: { arch: "resnet20", num_classes: 10, in_channels: 3, input_size: 32 },
    dataset: { name: "cifar10" }, budget: { metric: "latency_ms", target: 0.5 }, strategy: { name: "sensitivity" } }, null, 1);
}

export function renderSchedules(root) {
  let alive = true;
  root.innerHTML = '<h1>Schedules</h1><div class="panel empty" id="sc-state">Loading schedules…</div>';
  const load = async () => {
    let items;
    try {
      items = (await api("/api/v1/schedules")).items;
    } catch (err) {
      if (!alive) return;
      root.innerHTML = err.status === 404
        ? `<h1>Schedules</h1><div class="panel empty" id="sc-unavailable"><strong>Schedules are not available on this server.</strong>
            <p class="small">This server has no <code>/api/v1/schedules</code> endpoint (the scheduler is not installed or not enabled).
            Jobs can still be submitted by hand from <a href="#/new">New job</a>.</p></div>`
        : `<h1>Schedules</h1><div class="panel empty error">Cannot load schedules: ${esc(errorText(err))}</div>`;
      return;
    }
    if (alive) draw(root, items, load);
  };
  load();
  return () => { alive = false; };
}

function draw(root, items, reload) {
  root.innerHTML = `<div class="row" style="margin-bottom:12px"><h1>Schedules</h1></div>
    <div class="panel table-wrap">
      ${items.length ? `<table id="schedules-table"><thead><tr><th>Name</th><th>Cron</th><th>Time zone</th><th>State</th><th>Next run</th>
        <th>Last run</th><th>Created</th><th></th></tr></thead><tbody>${items.map((s) => `<tr data-id="${esc(s.id)}">
        <td><a href="#" data-act="runs">${esc(s.name)}</a></td><td><code>${esc(s.cron)}</code></td><td>${esc(s.timezone)}</td>
        <td>${s.paused ? '<span class="badge cancelled">paused</span>' : '<span class="badge succeeded">active</span>'}</td>
        <td>${dateTime(s.next_run_at)}</td><td>${dateTime(s.last_run_at)}</td><td>${dateTime(s.created_at)}</td>
        <td><button data-act="${s.paused ? "resume" : "pause"}">${s.paused ? "Resume" : "Pause"}</button>
          <button data-act="run">Run now</button></td></tr>`).join("")}</tbody></table>`
        : '<div class="empty">No schedules yet. Create one below.</div>'}
    </div>
    <div class="panel" id="runs-panel" hidden></div>
    <div class="panel"><h2>New schedule</h2>
      <form id="schedule-form" class="spec" novalidate><div class="fields">
        <div class="field" data-field="name"><label>name</label><input name="name" required><div class="field-error" hidden></div></div>
        <div class="field" data-field="cron"><label>cron (min hour day month weekday)</label><input name="cron" value="0 2 * * *"><div class="field-error" hidden></div></div>
        <div class="field" data-field="timezone"><label>time zone</label><input name="timezone" value="${esc(Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC")}"><div class="field-error" hidden></div></div>
        <div class="field" data-field="weights"><label>weights: file path on the server or upload id</label><input name="weights" placeholder="/models/latest.safetensors or upload id"><div class="field-error" hidden></div></div>
      </div>
      <div class="field" data-field="job" style="margin-top:10px"><label>job spec template (JSON)</label><textarea name="job" rows="8">${esc(template())}</textarea><div class="field-error" hidden></div></div>
      <div class="row" style="margin-top:10px"><button class="primary" type="submit">Create schedule</button></div></form>
    </div>`;
  root.querySelectorAll("tr[data-id]").forEach((tr) => tr.addEventListener("click", async (e) => {
    const act = e.target.dataset.act;
    if (!act) return;
    e.preventDefault();
    const id = tr.dataset.id;
    if (act === "runs") { showRuns(root, items.find((s) => s.id === id)); return; }
    try {
      await api(`/api/v1/schedules/${encodeURIComponent(id)}/${act}`, { method: "POST" });
      banner("");
      reload();
    } catch (err) { banner(`${act} failed: ${errorText(err)}`); }
  }));
  root.querySelector("#schedule-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const f = e.target;
    f.querySelectorAll(".field-error").forEach((x) => { x.hidden = true; });
    f.querySelectorAll(".invalid").forEach((x) => x.classList.remove("invalid"));
    const fail = (name, msg) => {
      const el = f.querySelector(`[data-field="${name}"]`) || f.querySelector('[data-field="job"]');
      el.classList.add("invalid");
      const box = el.querySelector(".field-error");
      box.textContent = msg; box.hidden = false;
    };
    let job;
    try { job = JSON.parse(f.job.value); } catch (err) { fail("job", `not valid JSON: ${err.message}`); return; }
    const w = f.weights.value.trim();
    const body = { name: f.name.value.trim(), cron: f.cron.value.trim(), timezone: f.timezone.value.trim(), job,
      weights: w.includes("/") ? { path: w } : w ? { upload_id: w } : null };
    try {
      await api("/api/v1/schedules", { method: "POST", body });
      reload();
    } catch (err) {
      if (Array.isArray(err.detail)) for (const d of err.detail) fail(String((d.loc || []).filter((p) => p !== "body")[0] || "job"), d.msg);
      else banner(`Create failed: ${errorText(err)}`);
    }
  });
}

async function showRuns(root, schedule) {
  const panel = root.querySelector("#runs-panel");
  panel.hidden = false;
  panel.innerHTML = `<h2>Runs of ${esc(schedule.name)}</h2><div class="muted">Loading…</div>`;
  let runs;
  try {
    runs = (await api(`/api/v1/schedules/${encodeURIComponent(schedule.id)}/runs`)).items;
  } catch (err) { panel.innerHTML = `<h2>Runs of ${esc(schedule.name)}</h2><div class="error">${esc(errorText(err))}</div>`; return; }
  const rows = runs.map((r) => ({ ...r, v: comparisonValues(r.comparison) }));
  panel.innerHTML = `<h2>Runs of ${esc(schedule.name)}</h2>
    ${rows.length ? `<div class="charts"><div class="chart" id="trend-acc"></div><div class="chart" id="trend-lat"></div></div>
    <div class="table-wrap"><table><thead><tr><th>Fired</th><th>Status</th><th>Job</th><th class="num">Pruned test acc.</th>
      <th class="num">Pruned latency</th><th>Regression</th><th>Reason</th></tr></thead><tbody>${rows.map((r) => `<tr>
      <td>${dateTime(r.fired_at)}</td><td><span class="badge ${esc(r.status)}">${esc(r.status)}</span></td>
      <td>${r.job_id ? `<a href="#/jobs/${encodeURIComponent(r.job_id)}">${esc(r.job_id.slice(0, 8))}</a>` : "—"}</td>
      <td class="num">${pct(r.v.prunedAcc)}</td><td class="num">${r.v.prunedMs != null ? `${r.v.prunedMs.toFixed(3)} ms` : "—"}</td>
      <td>${r.regression ? '<span class="error">regression</span>' : "—"}</td><td>${esc(r.reason || "")}</td></tr>`).join("")}</tbody></table></div>`
      : '<div class="empty">This schedule has not fired yet.</div>'}`;
  if (!rows.length) return;
  const sorted = [...rows].sort((a, b) => String(a.fired_at).localeCompare(String(b.fired_at)));
  const x = sorted.map((r) => r.fired_at);
  const line = (name, ys, color, dash) => ({ x, y: ys, name, mode: "lines+markers", line: { color, dash } });
  plot(root.querySelector("#trend-acc"), [
    line("base", sorted.map((r) => (r.v.baseAcc == null ? null : 100 * r.v.baseAcc)), COLORS.base, "dot"),
    line("pruned", sorted.map((r) => (r.v.prunedAcc == null ? null : 100 * r.v.prunedAcc)), COLORS.pruned)],
  { xaxis: { title: { text: "run (fired at)" } }, yaxis: { title: { text: "test accuracy (%)" } } });
  plot(root.querySelector("#trend-lat"), [
    line("base", sorted.map((r) => r.v.baseMs), COLORS.base, "dot"), line("pruned", sorted.map((r) => r.v.prunedMs), COLORS.pruned)],
  { xaxis: { title: { text: "run (fired at)" } }, yaxis: { title: { text: "latency (ms)" } } });
}
