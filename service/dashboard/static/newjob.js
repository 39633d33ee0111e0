// New job: a form built from /api/v1/catalog, filled with its `defaults` (the demo job, so the form as it
// opens runs); the server validates and its errors appear next to each field.
import { api, ApiError, banner, catalog, errorText, esc } from "./util.js";

const field = (path, label, control, help = "") => `<div class="field" data-field="${esc(path)}">
  <label for="f-${esc(path)}">${esc(label)}</label>${control}${help ? `<div class="help">${esc(help)}</div>` : ""}
  <div class="field-error" hidden></div></div>`;
const input = (path, type, value, attrs = "") => `<input id="f-${esc(path)}" name="${esc(path)}" type="${type}" value="${esc(value ?? "")}" ${attrs}>`;
const optionTags = (options, value) => options.map((o) => {
  const [v, label] = Array.isArray(o) ? o : [o, o];
  return `<option value="${esc(v)}" ${String(v) === String(value) ? "selected" : ""}>${esc(label)}</option>`;
}).join("");
const select = (path, options, value) => `<select id="f-${esc(path)}" name="${esc(path)}">${optionTags(options, value)}</select>`;

/** One input for a JSON-schema property of a strategy; `given` is the default job's value, if any. */
function strategyField(name, schemaProp, given) {
  const prop = given === undefined ? schemaProp : { ...schemaProp, default: given };
  const path = `strategy.${name}`;
  const label = name.replace(/_/g, " ");
  const types = prop.anyOf ? prop.anyOf.map((p) => p.type) : [prop.type];
  if (prop.enum) {
    return field(path, label, select(path, prop.enum, prop.default), prop.description);
  }
  if (types.includes("array")) {
    const hint = prop.default ? "" : 'placeholder="server default"';
    const items = prop.items || (prop.anyOf || []).map((p) => p.items).find(Boolean) || {};
    const kind = items.type === "string" ? "strings" : "list";
    return field(path, label, input(path, "text", (prop.default || []).join(", "), `data-kind="${kind}" ${hint}`), prop.description || "comma-separated values");
  }
  if (types.includes("boolean")) {
    return field(path, label, `<input id="f-${esc(path)}" name="${esc(path)}" type="checkbox" data-kind="bool" ${prop.default ? "checked" : ""}>`, prop.description);
  }
  if (types.includes("integer") || types.includes("number")) {
    const kind = types.includes("integer") ? "int" : "float";
    return field(path, label, input(path, "number", prop.default, `step="any" data-kind="${kind}"${types.includes("null") ? ' data-null="1"' : ""}`), prop.description);
  }
  return field(path, label, input(path, "text", prop.default, `data-kind="text"${types.includes("null") ? ' data-null="1"' : ""}`), prop.description);
}

function valueOf(el) {
  const kind = el.dataset.kind;
  if (kind === "bool") return el.checked;
  const raw = el.value.trim();
  if (raw === "") return el.dataset.null ? null : undefined;
  if (kind === "int" || kind === "float") return Number(raw);
  if (kind === "list") return raw.split(/[,\s]+/).filter(Boolean).map(Number);
  if (kind === "strings") return raw.split(/[,\s]+/).filter(Boolean);
  return raw;
}

/** The default job's values the form has no field for (seed, measurement, finetune…), for the JSON box. */
function uncovered(form, value, path = []) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const out = {};
    for (const [k, v] of Object.entries(value)) {
      const dotted = [...path, k].join(".");
      if (dotted === "model.weights" || dotted === "strategy" || dotted === "dimensions") continue;
      const rest = uncovered(form, v, [...path, k]);
      if (rest !== undefined) out[k] = rest;
    }
    return Object.keys(out).length ? out : undefined;
  }
  return form.querySelector(`[name="${CSS.escape(path.join("."))}"]`) ? undefined : value;
}

/** Map a server error location (["body", "model", "arch"]) to the form field that owns it. */
function fieldFor(root, loc, strategy) {
  let parts = loc.filter((p) => p !== "body").map(String);
  if (parts[0] === "strategy" && parts[1] === strategy) parts = ["strategy", ...parts.slice(2)];
  parts = parts.filter((p) => /^[a-z_0-9]+$/.test(p));  // drop union branches such as "TrainWeights"
  for (let n = parts.length; n > 0; n--) {
    const el = root.querySelector(`[data-field="${CSS.escape(parts.slice(0, n).join("."))}"]`);
    if (el) return el;
  }
  return null;
}

export function renderNewJob(root) {
  root.innerHTML = '<h1>New job</h1><div class="panel empty" id="nj-state">Loading the catalog…</div>';
  let alive = true;
  catalog().then((cat) => { if (alive) build(root, cat); }).catch((err) => {
    if (alive) root.querySelector("#nj-state").innerHTML = `<span class="error">Cannot load /api/v1/catalog: ${esc(errorText(err))}</span>`;
  });
  return () => { alive = false; };
}

function build(root, cat) {
  const d = { model: {}, dataset: {}, device: {}, budget: {}, strategy: {}, ...cat.defaults };
  const strategies = Object.keys(cat.strategies);
  const trained = d.model.weights && typeof d.model.weights === "object" ? d.model.weights : null;
  const kinds = new Set(d.dimensions || ["channel"]);
  root.innerHTML = `<h1>New job</h1><p class="muted small">Filled with the demo job, which runs as it is. Every value is checked by the server; problems appear under the field.</p>
  <form class="spec" id="job-form" novalidate>
    <fieldset><legend>Job</legend><div class="fields">
      ${field("name", "name", input("name", "text", d.name, 'data-kind="text" placeholder="optional"'))}
    </div></fieldset>
    <fieldset><legend>Model</legend><div class="fields">
      ${field("model.arch", "architecture", select("model.arch", cat.models, d.model.arch))}
      ${field("model.num_classes", "classes", input("model.num_classes", "number", d.model.num_classes, 'data-kind="int"'))}
      ${field("model.in_channels", "input channels", input("model.in_channels", "number", d.model.in_channels, 'data-kind="int"'))}
      ${field("model.input_size", "input size (px)", input("model.input_size", "number", d.model.input_size, 'data-kind="int"'))}
      ${field("model.weights", "base weights", select("weights-mode", [["train", "train in the job"], ["upload", "upload safetensors"], ["none", "random init"]], trained ? "train" : "none"))}
      ${field("weights-epochs", "training epochs", input("weights-epochs", "number", trained?.train_epochs ?? 5, 'data-kind="int"'))}
      ${field("weights-file", "weights file (.safetensors)", '<input id="f-weights-file" type="file" accept=".safetensors">')}
    </div></fieldset>
    <fieldset><legend>Dataset</legend><div class="fields">
      ${field("dataset.name", "dataset", select("dataset.name", cat.datasets, d.dataset.name))}
      ${field("dataset.val_size", "validation samples", input("dataset.val_size", "number", d.dataset.val_size, 'data-kind="int"'))}
      ${field("dataset.train_size", "training samples", input("dataset.train_size", "number", d.dataset.train_size, 'data-kind="int" data-null="1" placeholder="all"'))}
      ${field("dataset.test_size", "test samples", input("dataset.test_size", "number", d.dataset.test_size, 'data-kind="int" data-null="1" placeholder="all"'))}
    </div></fieldset>
    <fieldset><legend>Device</legend><div class="fields">
      ${field("device.name", "device", select("device.name", cat.devices.map((dev) => [dev.name, `${dev.name} — ${dev.model}`]), d.device.name))}
      ${field("device.runtime", "runtime", select("device.runtime", cat.runtimes, d.device.runtime))}
      ${field("device.threads", "threads", input("device.threads", "number", d.device.threads, 'data-kind="int"'))}
      ${field("device.batch_size", "batch size", input("device.batch_size", "number", d.device.batch_size, 'data-kind="int"'))}
    </div></fieldset>
    <fieldset><legend>Budget and space</legend><div class="fields">
      ${field("budget.metric", "metric", select("budget.metric", cat.budget_metrics, d.budget.metric))}
      ${field("budget.target", "target", input("budget.target", "number", d.budget.target, 'step="any" data-kind="float"'), "relative: fraction of the base (0–1]; absolute: ms, MACs or params")}
      ${field("budget.relative", "relative to the base model", `<input id="f-budget.relative" name="budget.relative" type="checkbox" data-kind="bool" ${d.budget.relative !== false ? "checked" : ""}>`)}
      ${field("dimensions", "dimensions", `<div class="checks">${cat.dimensions.map((k) => `<label class="check"><input type="checkbox" data-dimension="${esc(k)}" ${kinds.has(k) ? "checked" : ""}> ${esc(k)}</label>`).join(" ")}</div>`, "what may be pruned: channels, whole blocks, or fine-grained weights")}
      ${field("criterion", "importance criterion", '<select id="f-criterion" name="criterion"></select>', "the criteria the chosen dimensions accept")}
    </div><div id="nj-space" class="small muted" data-space="" aria-live="polite" style="margin-top:8px"></div></fieldset>
    <fieldset><legend>Strategy</legend><div class="fields">
      ${field("strategy.name", "strategy", select("strategy.name", strategies, d.strategy.name))}
    </div><div class="fields" id="strategy-fields" style="margin-top:10px"></div></fieldset>
    <fieldset><legend>Advanced (JSON, merged into the spec)</legend>
      ${field("advanced", "other sections: measurement, evaluation, finetune, execution, seed…",
        '<textarea id="f-advanced" rows="4" placeholder=\'{"execution": {"backend": "local"}}\'></textarea>')}
    </fieldset>
    <div class="row"><button class="primary" type="submit" id="submit">Submit job</button><span id="form-msg" class="muted"></span></div>
  </form>`;
  const form = root.querySelector("#job-form");
  form.trainedWeights = trained;
  const stratBox = root.querySelector("#strategy-fields");
  const drawStrategy = () => {
    const name = form.querySelector('[name="strategy.name"]').value;
    const given = name === d.strategy.name ? d.strategy : {};
    stratBox.innerHTML = Object.entries(cat.strategies[name]).map(([k, p]) => strategyField(k, p, given[k])).join("");
  };
  const drawCriteria = () => {
    const el = form.querySelector('[name="criterion"]');
    const current = el.value || d.criterion;
    const checked = [...form.querySelectorAll("[data-dimension]:checked")].map((c) => c.dataset.dimension);
    const allowed = checked.length ? cat.criteria_by_kind[checked[0]].filter((c) => checked.every((k) => cat.criteria_by_kind[k].includes(c))) : cat.criteria;
    el.innerHTML = optionTags(allowed, allowed.includes(current) ? current : allowed[0]);
  };
  const syncWeights = () => {
    const mode = form.querySelector('[name="weights-mode"]').value;
    root.querySelector('[data-field="weights-epochs"]').hidden = mode !== "train";
    root.querySelector('[data-field="weights-file"]').hidden = mode !== "upload";
  };
  const spaceBox = root.querySelector("#nj-space");
  let spaceAsked = 0;
  const drawSpace = async () => { // what the preflight would search and leave unpruned, for this model as set
    const asked = ++spaceAsked;
    const q = new URLSearchParams();
    for (const k of ["arch", "num_classes", "in_channels", "input_size"]) q.set(k, form.querySelector(`[name="model.${k}"]`).value);
    form.querySelectorAll("[data-dimension]:checked").forEach((c) => q.append("dimensions", c.dataset.dimension));
    spaceBox.dataset.space = "loading";
    spaceBox.textContent = "Checking what this model's space holds…";
    let html, state = "ok";
    try {
      const sp = await api(`/api/v1/catalog/space?${q}`);
      const left = Object.entries(sp.excluded);
      html = `<strong>${sp.dimensions.length}</strong> prunable dimension${sp.dimensions.length === 1 ? "" : "s"}`
        + (left.length ? `; left unpruned: ${left.map(([layer, why]) => `<code>${esc(layer)}</code> (${esc(why)})`).join("; ")}` : "; no layer left unpruned");
    } catch (err) {
      html = `<span class="error">${esc(errorText(err))}</span>`;
      state = "error";
    }
    if (asked !== spaceAsked) return; // a newer request is on its way
    spaceBox.innerHTML = `Space: ${html}`;
    spaceBox.dataset.space = state;
  };
  let spaceTimer = null;
  const scheduleSpace = () => { clearTimeout(spaceTimer); spaceTimer = setTimeout(drawSpace, 300); };
  for (const k of ["arch", "num_classes", "in_channels", "input_size"]) form.querySelector(`[name="model.${k}"]`).addEventListener("change", scheduleSpace);
  form.querySelectorAll("[data-dimension]").forEach((c) => c.addEventListener("change", scheduleSpace));
  form.querySelector('[name="strategy.name"]').addEventListener("change", drawStrategy);
  form.querySelector('[name="weights-mode"]').addEventListener("change", syncWeights);
  form.querySelectorAll("[data-dimension]").forEach((c) => c.addEventListener("change", drawCriteria));
  drawStrategy();
  drawCriteria();
  syncWeights();
  drawSpace();
  const rest = uncovered(form, d);
  if (rest) root.querySelector("#f-advanced").value = JSON.stringify(rest);
  form.addEventListener("submit", (e) => { e.preventDefault(); submit(root, form); });
}

function clearErrors(root) {
  root.querySelectorAll(".field.invalid").forEach((f) => f.classList.remove("invalid"));
  root.querySelectorAll(".field-error").forEach((f) => { f.hidden = true; f.textContent = ""; });
}

function showError(root, fieldEl, msg) {
  fieldEl.classList.add("invalid");
  const box = fieldEl.querySelector(".field-error");
  box.textContent = box.textContent ? `${box.textContent}; ${msg}` : msg;
  box.hidden = false;
}

async function submit(root, form) {
  clearErrors(root);
  banner("");
  const msg = root.querySelector("#form-msg");
  const button = root.querySelector("#submit");
  const spec = {};
  const set = (path, value) => {
    if (value === undefined) return;
    const keys = path.split(".");
    let o = spec;
    for (const k of keys.slice(0, -1)) o = o[k] ??= {};
    o[keys[keys.length - 1]] = value;
  };
  form.querySelectorAll("[name]").forEach((el) => {
    if (el.name.startsWith("weights-")) return;
    set(el.name, el.dataset.kind ? valueOf(el) : el.value);
  });
  spec.dimensions = [...form.querySelectorAll("[data-dimension]:checked")].map((c) => c.dataset.dimension);
  const strategy = spec.strategy.name;
  const advancedRaw = root.querySelector("#f-advanced").value.trim();
  if (advancedRaw) {
    try {
      const extra = JSON.parse(advancedRaw);
      for (const [k, v] of Object.entries(extra)) {
        spec[k] = v && typeof v === "object" && !Array.isArray(v) && spec[k] && typeof spec[k] === "object" ? { ...spec[k], ...v } : v;
      }
    } catch (err) {
      showError(root, root.querySelector('[data-field="advanced"]'), `not valid JSON: ${err.message}`);
      return;
    }
  }
  button.disabled = true;
  try {
    const mode = form.querySelector('[name="weights-mode"]').value;
    if (mode === "train") spec.model.weights = { ...(form.trainedWeights || {}), train_epochs: valueOf(form.querySelector('[name="weights-epochs"]')) ?? 0 };
    else if (mode === "none") spec.model.weights = null;
    else {
      const file = root.querySelector("#f-weights-file").files[0];
      if (!file) { showError(root, root.querySelector('[data-field="weights-file"]'), "choose a .safetensors file"); return; }
      msg.textContent = `uploading ${file.name}…`;
      try {
        spec.model.weights = (await api("/api/v1/weights", { method: "POST", raw: file })).reference;
      } catch (err) {
        showError(root, root.querySelector('[data-field="weights-file"]'), errorText(err));
        return;
      }
    }
    msg.textContent = "submitting…";
    const job = await api("/api/v1/jobs", { method: "POST", body: spec });
    location.hash = `#/jobs?highlight=${encodeURIComponent(job.id)}`;
  } catch (err) {
    msg.textContent = "";
    if (err instanceof ApiError && Array.isArray(err.detail)) {
      const loose = [];
      for (const e of err.detail) {
        const el = fieldFor(root, e.loc || [], strategy);
        if (el) showError(root, el, e.msg); else loose.push(`${(e.loc || []).filter((p) => p !== "body").join(".")}: ${e.msg}`);
      }
      if (loose.length) banner(`The server refused the job: ${loose.join("; ")}`);
      const first = root.querySelector(".field.invalid");
      if (first) first.scrollIntoView({ block: "center" });
    } else if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      banner(`Submit refused (${err.status}): set a write token in “API token” at the top right.`);
    } else {
      banner(`Submit failed: ${errorText(err)}`);
    }
  } finally {
    button.disabled = false;
  }
}
