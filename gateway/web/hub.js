// The Models view (the hub): every model as a table row with its capabilities (badges), state, engine,
// quantization, size, owner and memory fit (fits / tight / won't fit, the runners' own estimate: GET /v1/models/fit); search and filters; the import form (a local file or folder, a file URL, or a Hugging Face repository with
// its quantization picker); per model Download (live progress, Pause / Resume / Cancel), Start / Stop,
// Chat, Settings, Export and Delete. Rows are updated in place from the store (GET /v1/events).
//
// Exports: mountHub(section).

import { ApiError, del, get, modelPath, patch, post, send } from "./api.js";
import { withKey } from "./auth.js";
import { announce, clear, el, fill, formatBytes, formatDuration, openDialog } from "./dom.js";
import { ACTIVE, fits, jobs, load, models, problems, setJob, speedOf, subscribe, watchDownload } from "./store.js";

const STATES = ["running", "stopped", "downloading", "not-downloaded"];
const FIT_LABELS = { fits: "fits", tight: "tight", wont_fit: "won't fit" };
const ACTION_LABELS = {
  download: "Download",
  pause: "Pause",
  resume: "Resume",
  cancel: "Cancel",
  start: "Start",
  stop: "Stop",
  chat: "Chat",
  settings: "Settings",
  export: "Export",
  delete: "Delete",
};

const rows = new Map(); // id -> <tr>
const busy = new Map(); // id -> "Starting…" while an action of the row runs
const notes = new Map(); // id -> {text, error}: the last outcome of an action, shown in the row
let ui = null;

export function mountHub(section) {
  ui = build(section);
  subscribe(onChange);
  ui.tbody.addEventListener("click", onRowClick);
}

// --- layout -------------------------------------------------------------------------------------------

function build(section) {
  const source = el("input", {
    id: "import-source",
    type: "text",
    required: true,
    autocomplete: "off",
    spellcheck: false,
    placeholder: "/path/to/model.gguf, /path/to/folder, https://…/model.gguf or https://huggingface.co/org/repo",
  });
  const importId = el("input", { id: "import-id", type: "text", autocomplete: "off", spellcheck: false, placeholder: "folder/file" });
  const importButton = el("button", { type: "submit", class: "primary", text: "Import" });
  const importStatus = el("div", { class: "import-status", attrs: { role: "status" } });
  const picker = el("div", { class: "picker", hidden: true });
  const form = el(
    "form",
    { class: "import-form", attrs: { "aria-labelledby": "import-title" }, on: { submit: onImport } },
    el("h3", { id: "import-title", text: "Import a model" }),
    el(
      "div",
      { class: "fields" },
      el("div", { class: "field grow" }, el("label", { htmlFor: source.id, text: "Local path, file URL or Hugging Face repository URL" }), source),
      el("div", { class: "field" }, el("label", { htmlFor: importId.id, text: "Id (optional)" }), importId),
      el("div", { class: "field button-field" }, importButton),
    ),
  );

  const search = el("input", { id: "model-search", type: "search", autocomplete: "off", spellcheck: false, placeholder: "id, name or capability  ( / )" });
  const stateFilter = el("select", { id: "state-filter" }, el("option", { value: "", text: "All states" }), STATES.map((s) => el("option", { value: s, text: s })));
  const engineFilter = el("select", { id: "engine-filter" }, el("option", { value: "", text: "All engines" }));
  const count = el("p", { class: "count muted", attrs: { "aria-live": "polite" } });
  search.addEventListener("input", applyFilter);
  for (const select of [stateFilter, engineFilter]) {
    select.addEventListener("input", applyFilter);
    select.addEventListener("change", applyFilter);
  }
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    const typing = target instanceof HTMLInputElement || target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement || (target && target.isContentEditable);
    if (event.key === "/" && !typing && !section.hidden && !document.querySelector("dialog[open]")) {
      event.preventDefault();
      search.focus();
    }
  });

  const problemsBox = el("details", { class: "problems", hidden: true });
  const tbody = el("tbody");
  const headers = ["Model", "State", "Engine", "Quantization", "Size", "Owner", "Memory", "Actions"];
  const table = el(
    "table",
    { class: "models", attrs: { "aria-labelledby": "models-title" } },
    el("thead", null, el("tr", null, headers.map((h) => el("th", { scope: "col", text: h })))),
    tbody,
  );
  const empty = el("p", { class: "empty muted", hidden: true });
  const loadError = el("div", { class: "load-error", hidden: true, attrs: { role: "alert" } });

  fill(section,
    el("h2", { id: "models-title", text: "Models" }),
    form,
    importStatus,
    picker,
    problemsBox,
    el(
      "div",
      { class: "filters", attrs: { role: "search" } },
      el("div", { class: "field grow" }, el("label", { htmlFor: search.id, text: "Search" }), search),
      el("div", { class: "field" }, el("label", { htmlFor: stateFilter.id, text: "State" }), stateFilter),
      el("div", { class: "field" }, el("label", { htmlFor: engineFilter.id, text: "Engine" }), engineFilter),
      count,
    ),
    loadError,
    el("div", { class: "table-wrap" }, table),
    empty,
  );
  return { section, source, importId, importButton, importStatus, picker, search, stateFilter, engineFilter, count, problemsBox, tbody, empty, loadError };
}

/** Shows that the list could not be loaded, with a button to try again. */
export function showLoadError(err) {
  if (!ui) return;
  const needKey = err instanceof ApiError && err.status === 401;
  fill(ui.loadError,
    el("p", { text: needKey ? "An API key is needed to list the models." : `The models cannot be listed: ${err.message || err}` }),
    el("button", {
      type: "button",
      text: needKey ? "Enter API key" : "Try again",
      on: {
        click: () => {
          ui.loadError.hidden = true;
          load().catch(showLoadError);
        },
      },
    }),
  );
  ui.loadError.hidden = false;
}

// --- rows ---------------------------------------------------------------------------------------------

function onChange(change) {
  if (change.kind === "reset") {
    renderAll();
  } else if (change.kind === "problems") {
    renderProblems();
  } else if (change.kind === "fits") {
    for (const [id, tr] of rows) renderFit(tr.cells[6], id);
  } else if (change.kind === "job") {
    const model = models.get(change.id);
    const tr = rows.get(change.id);
    if (model && tr) {
      // Progress alone redraws the state cell; a change of what can be done redraws the row.
      if (tr.dataset.actions === actionsOf(model).join(",")) renderState(tr.cells[1], model);
      else renderRow(tr, model);
    }
  } else {
    const model = models.get(change.id);
    const tr = rows.get(change.id);
    if (!model) {
      if (tr) {
        tr.remove();
        rows.delete(change.id);
      }
    } else if (tr) {
      renderRow(tr, model);
      filterRow(tr, model);
    } else {
      const row = newRow(model);
      insertSorted(row, change.id);
      filterRow(row, model);
    }
    updateEngines();
    updateCount();
  }
}

function renderAll() {
  ui.loadError.hidden = true;
  rows.clear();
  const fragment = document.createDocumentFragment();
  for (const id of [...models.keys()].sort(compareIds)) fragment.append(newRow(models.get(id)));
  fill(ui.tbody, fragment);
  updateEngines();
  applyFilter();
}

function compareIds(a, b) {
  return a < b ? -1 : a > b ? 1 : 0;
}

function insertSorted(tr, id) {
  let before = null;
  for (const [other, row] of rows) {
    if (other !== id && compareIds(other, id) > 0 && (!before || compareIds(other, before.dataset.id) < 0)) before = row;
  }
  ui.tbody.insertBefore(tr, before);
}

function newRow(model) {
  const tr = document.createElement("tr");
  tr.dataset.id = model.id;
  for (let i = 0; i < 8; i++) tr.append(document.createElement("td"));
  rows.set(model.id, tr);
  renderRow(tr, model);
  return tr;
}

function engineOf(model) {
  return (model.metadata && model.metadata.engine) || "llamacpp";
}

function sizeOf(model) {
  const meta = model.metadata || {};
  if (typeof meta.size === "number") return meta.size;
  if (Array.isArray(meta.binaries)) {
    const sizes = meta.binaries.map((b) => (b && typeof b.size === "number" ? b.size : null));
    if (sizes.length && sizes.every((s) => s !== null)) return sizes.reduce((a, b) => a + b, 0);
  }
  return null;
}

/** What the model can do (metadata.capabilities: the catalog's, or the object's own), as written. */
function capabilitiesOf(model) {
  const caps = model.metadata && model.metadata.capabilities;
  return Array.isArray(caps) ? caps.filter((c) => typeof c === "string" && c) : [];
}

/** The capabilities as small badges under the model's name; nothing when it has none. */
function capabilityBadges(model) {
  const caps = capabilitiesOf(model);
  if (!caps.length) return null;
  return el(
    "span",
    { class: "capabilities", attrs: { "aria-label": `Can do: ${caps.join(", ")}` } },
    caps.map((c) => el("span", { class: "capability", text: c, dataset: { capability: c } })),
  );
}

/** What can be done with a model now, in order (labels in ACTION_LABELS). */
function actionsOf(model) {
  const job = jobs.get(model.id);
  const out = [];
  if ((job && ACTIVE.has(job.phase)) || model.state === "downloading") out.push("pause", "cancel");
  else if (job && job.phase === "paused") out.push("resume", "cancel");
  else if (model.state === "not-downloaded") out.push("download");
  else if (model.state === "running") out.push("stop", "chat");
  else out.push("start", "chat");
  out.push("settings", "export", "delete");
  return out;
}

function renderRow(tr, model) {
  const [nameCell, stateCell, engineCell, quantCell, sizeCell, ownerCell, fitCell, actionsCell] = tr.cells;
  const focused = tr.contains(document.activeElement) ? document.activeElement.dataset.action : null;
  fill(nameCell,
    el("span", { class: "model-name", text: model.name || model.id }),
    el("code", { class: "model-id", text: model.id }),
    model.description ? el("span", { class: "model-description", text: model.description }) : null,
    capabilityBadges(model),
  );
  renderState(stateCell, model);
  engineCell.textContent = engineOf(model);
  quantCell.textContent = (model.metadata && model.metadata.quantization) || "—";
  sizeCell.textContent = formatBytes(sizeOf(model));
  ownerCell.textContent = model.owned_by || "—";
  renderFit(fitCell, model.id);

  const actions = actionsOf(model);
  tr.dataset.actions = actions.join(",");
  const working = busy.get(model.id);
  const note = notes.get(model.id);
  fill(actionsCell,
    el(
      "div",
      { class: "actions" },
      actions.map((action) =>
        el("button", {
          type: "button",
          text: ACTION_LABELS[action],
          class: action === "delete" ? "danger" : action === "start" || action === "download" ? "primary" : "",
          disabled: Boolean(working),
          dataset: { action },
          attrs: { "aria-label": `${ACTION_LABELS[action]} ${model.id}` },
        }),
      ),
    ),
    working ? el("p", { class: "row-note", text: working }) : null,
    !working && note ? el("p", { class: note.error ? "row-note error" : "row-note", text: note.text }) : null,
  );
  if (focused) {
    const again = actionsCell.querySelector(`button[data-action="${focused}"]`) || actionsCell.querySelector("button:not(:disabled)");
    if (again) again.focus();
  }
}

function renderState(cell, model) {
  const job = jobs.get(model.id);
  const shown = job && job.phase === "paused" ? "paused" : model.state;
  const downloading = job && (ACTIVE.has(job.phase) || job.phase === "paused" || model.state === "downloading");
  // The badge and the bar are updated in place, so progress does not replace what a reader is on.
  let badge = cell.querySelector(".state");
  let bar = cell.querySelector("progress");
  let text = cell.querySelector(".progress-text");
  if (!badge || !downloading || !bar) {
    clear(cell);
    badge = cell.appendChild(el("span"));
    bar = text = null;
  }
  badge.className = `state state-${shown}`;
  badge.textContent = shown;
  if (downloading) {
    if (!bar) {
      bar = cell.appendChild(el("progress", { attrs: { "aria-label": `Download of ${model.id}` } }));
      text = cell.appendChild(el("span", { class: "progress-text" }));
    }
    const total = job.bytes_total || 0;
    if (total) {
      bar.max = total;
      bar.value = Math.min(job.bytes_done, total);
    } else {
      bar.removeAttribute("value"); // an indeterminate bar
    }
    const { speed, eta, stalled } = speedOf(model.id);
    const parts = [total ? `${formatBytes(job.bytes_done)} of ${formatBytes(total)}` : formatBytes(job.bytes_done)];
    if (total) parts.unshift(`${Math.floor((100 * job.bytes_done) / total)}%`);
    if (job.phase === "paused") parts.push("paused");
    else if (job.phase !== "downloading") parts.push(job.phase);
    else if (stalled) parts.push(`no data for ${formatDuration(stalled)}`);
    else {
      if (speed > 0) parts.push(`${formatBytes(speed)}/s`);
      if (eta >= 0) parts.push(`${formatDuration(eta)} left`);
    }
    text.textContent = parts.join(" · ");
  } else if (job && job.phase === "failed" && model.state === "not-downloaded") {
    cell.append(el("span", { class: "error", text: `download failed: ${job.error || job.error_code || "unknown error"}` }));
  }
}

/** The memory-fit badge: the runner's verdict, with its figures in the title; nothing while unknown. */
function renderFit(cell, id) {
  const f = fits.get(id);
  const label = f && FIT_LABELS[f.fit];
  if (!label) {
    clear(cell);
    return;
  }
  const about = fitText(f);
  let badge = cell.querySelector(".fit");
  if (!badge) badge = fill(cell, el("span")).firstChild;
  badge.className = `fit fit-${f.fit}`;
  badge.textContent = label;
  badge.title = about;
  badge.setAttribute("aria-label", `${label}: ${about}`);
}

function fitText(f) {
  const need = formatBytes(f.estimate_bytes);
  const budget = formatBytes(f.budget_bytes);
  const from = f.basis === "size" ? " (from its declared size)" : "";
  const where = f.runner ? ` on runner ${f.runner}` : "";
  if (f.basis === "remote") return `runs remotely: no local memory needed${where}`;
  if (f.loaded) return `loaded${where}: uses ~${need} of ${budget}; ${formatBytes(f.free_bytes)} free`;
  if (f.fit === "wont_fit") return `needs ~${need}${from}: more than the ${budget} budget${where}`;
  const free = `${formatBytes(f.free_bytes)} free`;
  if (f.fit === "tight") return `needs ~${need}${from} of ${budget}; ${free}: idle models are unloaded first${where}`;
  return `needs ~${need}${from} of ${budget}; ${free}${where}`;
}

// --- search and filters -------------------------------------------------------------------------------

function filterRow(tr, model) {
  const q = ui.search.value.trim().toLowerCase();
  const state = ui.stateFilter.value;
  const engine = ui.engineFilter.value;
  const job = jobs.get(model.id);
  const shownState = job && job.phase === "paused" ? "not-downloaded" : model.state;
  const text = [model.id, model.name || "", ...capabilitiesOf(model)].map((t) => t.toLowerCase());
  tr.hidden = Boolean(
    (q && !text.some((t) => t.includes(q))) ||
      (state && shownState !== state) ||
      (engine && engineOf(model) !== engine),
  );
}

function applyFilter() {
  for (const [id, tr] of rows) filterRow(tr, models.get(id));
  updateCount();
}

function updateCount() {
  let shown = 0;
  for (const tr of rows.values()) if (!tr.hidden) shown += 1;
  const total = rows.size;
  ui.count.textContent = shown === total ? `${total} model${total === 1 ? "" : "s"}` : `${shown} of ${total} models`;
  ui.empty.hidden = shown > 0;
  ui.empty.textContent = total ? "No model matches the search and filters." : "No models yet: import one above.";
}

function updateEngines() {
  const engines = new Set([...models.values()].map(engineOf));
  const select = ui.engineFilter;
  const have = new Set([...select.options].slice(1).map((o) => o.value));
  if (engines.size === have.size && [...engines].every((e) => have.has(e))) return;
  const current = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const engine of [...engines].sort()) select.append(el("option", { value: engine, text: engine }));
  select.value = engines.has(current) ? current : "";
}

function renderProblems() {
  const box = ui.problemsBox;
  clear(box);
  box.hidden = problems.length === 0;
  if (!problems.length) return;
  box.append(
    el("summary", { text: `${problems.length} model file${problems.length === 1 ? " is" : "s are"} not valid and left out` }),
    el("ul", null, problems.map((p) => el("li", null, el("code", { text: p.path || p.id }), `: ${p.reason}`))),
  );
}

// --- actions ------------------------------------------------------------------------------------------

function onRowClick(event) {
  const button = event.target.closest("button[data-action]");
  if (!button || button.disabled) return;
  const id = button.closest("tr").dataset.id;
  const model = models.get(id);
  if (!model) return;
  const action = button.dataset.action;
  const handlers = {
    download: () => run(id, "Starting the download…", () => startDownload(id)),
    pause: () => run(id, "Pausing…", async () => setJob(id, await post(`${base(id)}/download/pause`, {}))),
    resume: () =>
      run(id, "Resuming…", async () => {
        setJob(id, await post(`${base(id)}/download/resume`, {}));
        watchDownload(id);
      }),
    cancel: () =>
      run(id, "Cancelling…", async () => {
        setJob(id, await del(`${base(id)}/download`));
        return "Download cancelled";
      }),
    start: () =>
      run(id, "Starting…", async () => {
        updateModel(await post(`${base(id)}/start`, {}));
        return `${id} is running`;
      }),
    stop: () =>
      run(id, "Stopping…", async () => {
        updateModel(await post(`${base(id)}/stop`, {}));
        return `${id} stopped`;
      }),
    chat: () => openChat(id),
    settings: () => openSettings(id),
    export: () => run(id, "Exporting…", () => exportFolder(id)),
    delete: () => confirmDelete(id),
  };
  handlers[action]();
}

const base = (id) => `/v1/models/${modelPath(id)}`;

/** Runs an action of a row: the row says it is busy, then what came of it (an error in place). */
async function run(id, label, fn) {
  busy.set(id, label);
  notes.delete(id);
  redraw(id);
  try {
    const message = await withKey(fn);
    if (message) {
      notes.set(id, { text: message, error: false });
      announce(message);
    }
  } catch (err) {
    const text = err instanceof ApiError ? err.message : String(err);
    notes.set(id, { text, error: true });
    announce(`${id}: ${text}`);
  } finally {
    busy.delete(id);
    redraw(id);
  }
}

function redraw(id) {
  const model = models.get(id);
  const tr = rows.get(id);
  if (model && tr) renderRow(tr, model);
}

/** A model object from an answer (start, stop, PATCH): the row shows it before the event arrives. */
function updateModel(model) {
  if (model && model.id) {
    models.set(model.id, model);
    onChange({ kind: "model", id: model.id });
  }
}

async function startDownload(id) {
  const job = await post(`${base(id)}/download`, {});
  setJob(id, job);
  watchDownload(id);
  return null;
}

function openChat(id) {
  window.dispatchEvent(new CustomEvent("jan:view", { detail: { view: "chat" } }));
  window.dispatchEvent(new CustomEvent("jan:chat", { detail: { model: id } }));
}

/** GET the folder's .tar.gz with the key in a header, then save it from a blob URL. */
async function exportFolder(id) {
  const folder = id.split("/", 1)[0];
  const response = await send("GET", `/v1/folders/${encodeURIComponent(folder)}/export`, { accept: "application/gzip" });
  const blob = await response.blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: `${folder}.tar.gz`, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return `Exported ${folder}.tar.gz (${formatBytes(blob.size)})`;
}

// --- settings -----------------------------------------------------------------------------------------

function openSettings(id) {
  const model = models.get(id);
  const name = el("input", { id: "settings-name", type: "text", value: model.name || "", autocomplete: "off" });
  const description = el("textarea", { id: "settings-description", rows: 2, value: model.description || "" });
  const parameters = el("textarea", {
    id: "settings-parameters",
    rows: 10,
    spellcheck: false,
    value: JSON.stringify(model.parameters || {}, null, 2),
    attrs: { "aria-describedby": "settings-parameters-help" },
  });
  const error = el("p", { class: "field-error", id: "settings-error", attrs: { role: "alert" } });
  const body = [
    el("p", { class: "muted" }, "Model ", el("code", { text: id })),
    el("label", { htmlFor: name.id, text: "Name" }),
    name,
    el("label", { htmlFor: description.id, text: "Description" }),
    description,
    el("label", { htmlFor: parameters.id, text: "Parameters (JSON object)" }),
    parameters,
    el("p", {
      id: "settings-parameters-help",
      class: "muted small",
      text: "Run and sampling parameters (ctx_len, temperature, max_tokens …). A key you remove is deleted; hidden credentials (****) are kept unless you change them.",
    }),
    error,
  ];
  const fail = (message, field) => {
    error.textContent = message;
    for (const f of [name, description, parameters]) f.removeAttribute("aria-invalid");
    if (field) {
      field.setAttribute("aria-invalid", "true");
      field.focus();
    }
    return false;
  };
  return openDialog({
    title: `Settings of ${model.name || id}`,
    body,
    actions: [{ label: "Save", value: "save", class: "primary", ariaLabel: `Save settings of ${id}` }],
    initialFocus: name,
    onAction: async () => {
      let parsed;
      try {
        parsed = JSON.parse(parameters.value.trim() || "{}");
      } catch (err) {
        return fail(`Parameters are not valid JSON: ${err.message}`, parameters);
      }
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) {
        return fail("Parameters must be a JSON object: { \"name\": value, … }", parameters);
      }
      const body = {};
      const current = models.get(id) || model;
      if (name.value !== (current.name || "")) body.name = name.value;
      if (description.value !== (current.description || "")) body.description = description.value;
      const change = mergePatch(current.parameters || {}, parsed);
      if (Object.keys(change).length) body.parameters = change;
      if (!Object.keys(body).length) return true;
      try {
        updateModel(await withKey(() => patch(base(id), body)));
      } catch (err) {
        const field = err.param === "name" ? name : err.param === "description" ? description : err.param ? parameters : null;
        return fail(err instanceof ApiError ? err.message : String(err), field);
      }
      notes.set(id, { text: "Settings saved", error: false });
      redraw(id);
      announce(`Settings of ${id} saved`);
      return true;
    },
  });
}

/** The JSON merge patch (RFC 7386) from `before` to `after` at the top level: changed keys, removed = null. */
function mergePatch(before, after) {
  const out = {};
  for (const key of Object.keys(before)) if (!(key in after)) out[key] = null;
  for (const [key, value] of Object.entries(after)) {
    if (JSON.stringify(value) !== JSON.stringify(before[key])) out[key] = value;
  }
  return out;
}

// --- delete -------------------------------------------------------------------------------------------

async function confirmDelete(id) {
  let meta = null;
  try {
    meta = await withKey(() => get(`${base(id)}/metadata`));
  } catch (err) {
    notes.set(id, { text: err.message || String(err), error: true });
    redraw(id);
    return;
  }
  const folder = id.split("/", 1)[0];
  const sharedNames = new Set();
  for (const other of models.values()) {
    if (other.id === id || !other.id.startsWith(`${folder}/`)) continue;
    for (const b of (other.metadata && other.metadata.binaries) || []) sharedNames.add(typeof b === "string" ? b : b && b.name);
  }
  const binaries = meta.binaries || [];
  const downloaded = /^https?:\/\//i.test(meta.source_url || "") || binaries.some((b) => b.url);
  const deleted = binaries.filter((b) => !b.external_path && !sharedNames.has(b.name) && b.present);
  const kept = binaries.filter((b) => b.external_path || sharedNames.has(b.name));
  const lines = [];
  if (deleted.length) {
    const what = deleted.map((b) => `${b.name} (${formatBytes(b.size)})`).join(", ");
    lines.push(
      downloaded
        ? `Its downloaded files are deleted from disk: ${what}.`
        : `Its file in the model folder is removed: ${what}. Your original file (the one you imported from a local path) is kept: the folder only held a link or copy of it.`,
    );
  }
  for (const b of kept) {
    lines.push(b.external_path ? `Your original file ${b.external_path} is kept (the model used it in place).` : `${b.name} is kept: another model of the folder uses it.`);
  }
  if (!binaries.length || (!deleted.length && !kept.length)) lines.push("It has no files on disk besides its json file.");
  if (!downloaded && !deleted.length && binaries.length) lines.push("Your original files are never deleted.");

  const model = models.get(id);
  const error = el("p", { class: "field-error", attrs: { role: "alert" } });
  const body = [
    el("p", null, "Delete the model ", el("code", { text: id }), model && model.name && model.name !== id ? ` (${model.name})` : "", "? Its json file is removed."),
    lines.map((line) => el("p", { class: "delete-detail", text: line })),
    error,
  ];
  const result = await openDialog({
    title: "Delete model",
    body,
    actions: [{ label: "Delete", value: "delete", class: "danger", ariaLabel: `Delete ${id} now` }],
    closeLabel: "Keep it",
    initialFocus: (dialog) => dialog.querySelector(".dialog-close"),
    onAction: async (value) => {
      try {
        await withKey(() => del(base(id)));
      } catch (err) {
        error.textContent = err instanceof ApiError ? err.message : String(err);
        return false;
      }
      return true;
    },
  });
  if (result === "delete") {
    models.delete(id);
    onChange({ kind: "model", id });
    announce(`${id} deleted`);
    ui.search.focus();
  }
}

// --- import -------------------------------------------------------------------------------------------

async function onImport(event) {
  event.preventDefault();
  const source = ui.source.value.trim();
  if (!source) return;
  const body = { source_url: source };
  const id = ui.importId.value.trim();
  if (id) body.id = id;
  ui.importButton.disabled = true;
  status("Importing…");
  closePicker();
  try {
    const answer = await withKey(() => post("/v1/models", body));
    if (answer && answer.object === "list" && Array.isArray(answer.created)) {
      // A local directory, imported in place: nothing to download, every model is there already.
      for (const m of answer.data) updateModel(m);
      const skipped = answer.skipped || [];
      const folders = answer.folders.length ? ` in ${answer.folders.join(", ")}` : "";
      let text = `Imported ${answer.created.length} new model${answer.created.length === 1 ? "" : "s"} in place${folders} (${answer.data.length - answer.created.length} imported before).`;
      if (skipped.length) text += ` Skipped ${skipped.length}: ${skipped.map((x) => `${x.path} (${x.reason})`).join("; ")}`;
      status(text);
      ui.source.value = "";
      ui.importId.value = "";
    } else if (answer && answer.object === "list") {
      for (const m of answer.data) updateModel(m);
      status(`Found ${answer.data.length} quantization${answer.data.length === 1 ? "" : "s"} in ${answer.folder}: pick one to download.`);
      showPicker(answer.folder, answer.data);
    } else {
      updateModel(answer);
      const done = `Imported ${answer.id} (${answer.state}).`;
      status(done, false, answer.state === "not-downloaded" ? answer.id : null);
      ui.source.value = "";
      ui.importId.value = "";
    }
  } catch (err) {
    status(err instanceof ApiError ? err.message : String(err), true);
    ui.source.focus();
  } finally {
    ui.importButton.disabled = false;
  }
}

function status(text, error = false, downloadId = null) {
  fill(ui.importStatus, el("span", { class: error ? "error" : "", text }));
  if (downloadId) {
    ui.importStatus.append(
      el("button", {
        type: "button",
        class: "primary",
        text: "Download",
        attrs: { "aria-label": `Download ${downloadId}` },
        on: { click: () => run(downloadId, "Starting the download…", () => startDownload(downloadId)).then(() => status("")) },
      }),
    );
  }
}

function closePicker() {
  clear(ui.picker).hidden = true;
}

/** The quantizations of an imported repository, with their sizes; nothing is downloaded until one is picked. */
function showPicker(folder, list) {
  const sorted = [...list].sort((a, b) => (sizeOf(a) || 0) - (sizeOf(b) || 0));
  const radios = sorted.map((m, i) => {
    const quant = (m.metadata && m.metadata.quantization) || m.id;
    const input = el("input", { type: "radio", name: "quantization", value: m.id, id: `quant-${i}`, checked: i === 0 });
    return el(
      "div",
      { class: "quant" },
      input,
      el("label", { htmlFor: input.id }, el("strong", { text: quant }), ` ${formatBytes(sizeOf(m))} `, el("code", { class: "muted", text: m.id }), m.state !== "not-downloaded" ? ` (${m.state})` : ""),
    );
  });
  const removeOthers = el("input", { type: "checkbox", id: "quant-remove-others" });
  const download = el("button", { type: "button", class: "primary", text: "Download", attrs: { "aria-label": "Download the picked quantization" } });
  const close = el("button", { type: "button", text: "Close", attrs: { "aria-label": "Close the quantization picker" } });
  const fieldset = el(
    "fieldset",
    null,
    el("legend", null, "Quantizations of ", el("code", { text: folder })),
    radios,
    el("div", { class: "quant-options" }, removeOthers, el("label", { htmlFor: removeOthers.id, text: "Delete the quantizations I did not pick (else they stay listed, not downloaded)" })),
    el("div", { class: "actions" }, download, close),
  );
  fill(ui.picker, fieldset);
  ui.picker.hidden = false;
  close.addEventListener("click", () => {
    closePicker();
    status("");
    ui.source.focus();
  });
  download.addEventListener("click", async () => {
    const picked = fieldset.querySelector('input[name="quantization"]:checked');
    if (!picked) return;
    const id = picked.value;
    download.disabled = true;
    closePicker();
    ui.source.value = "";
    status(`Downloading ${id}…`);
    const model = models.get(id);
    if (model && model.state === "not-downloaded") await run(id, "Starting the download…", () => startDownload(id));
    status("");
    if (removeOthers.checked) {
      for (const m of list) {
        const current = models.get(m.id);
        if (m.id === id || !current || current.state !== "not-downloaded" || jobs.has(m.id)) continue;
        try {
          await withKey(() => del(base(m.id)));
          models.delete(m.id);
          onChange({ kind: "model", id: m.id });
        } catch (err) {
          notes.set(m.id, { text: err.message || String(err), error: true });
          redraw(m.id);
        }
      }
    }
    const row = rows.get(id);
    if (row) {
      row.scrollIntoView({ block: "center" });
      const button = row.querySelector("button[data-action]");
      if (button) button.focus();
    }
  });
  const first = fieldset.querySelector("input:checked");
  if (first) first.focus();
}
