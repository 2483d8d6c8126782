// The Running view: the models loaded on the runners (GET /v1/running) with their memory, when they unload
// if idle (keep-alive), their active and queued requests, and Stop. Refreshed when the view is shown, on
// model events (a start or stop anywhere, the CLI included), and every few seconds while it is shown.
//
// Exports: mountRunning(section) -> {refresh()}.

import { ApiError, get, modelPath, post } from "./api.js";
import { withKey } from "./auth.js";
import { announce, el, fill, formatBytes, formatDuration } from "./dom.js";
import { models, subscribe } from "./store.js";

const EVERY_MS = 5000;

export function mountRunning(section) {
  const tbody = el("tbody");
  const table = el(
    "table",
    { class: "running", attrs: { "aria-labelledby": "running-title" } },
    el(
      "thead",
      null,
      el("tr", null, ["Model", "Runner", "Engine", "Memory", "Unloads when idle", "Active", "Queued", "Actions"].map((h) => el("th", { scope: "col", text: h }))),
    ),
    tbody,
  );
  const empty = el("p", { class: "empty muted", text: "No model is loaded. Start one in Models.", hidden: true });
  const message = el("p", { class: "error", hidden: true, attrs: { role: "alert" } });
  const refreshButton = el("button", { type: "button", text: "Refresh", attrs: { "aria-label": "Refresh the running models" } });
  fill(section,
    el("div", { class: "view-head" }, el("h2", { id: "running-title", text: "Running" }), refreshButton),
    message,
    el("div", { class: "table-wrap" }, table),
    empty,
  );

  let timer = null;
  let inFlight = null;
  let again = false;
  let data = [];
  const stopping = new Set();

  async function refresh() {
    if (inFlight) {
      again = true;
      return inFlight;
    }
    inFlight = (async () => {
      try {
        const answer = await withKey(() => get("/v1/running"));
        data = answer.data || [];
        message.hidden = true;
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) clearInterval(timer); // no prompt every 5 s
        message.textContent = `The running models cannot be listed: ${err instanceof ApiError ? err.message : err}`;
        message.hidden = false;
      }
      render();
    })();
    try {
      await inFlight;
    } finally {
      inFlight = null;
    }
    if (again) {
      again = false;
      return refresh();
    }
  }

  function render() {
    const focusedId = tbody.contains(document.activeElement) ? document.activeElement.dataset.id : null;
    const fragment = document.createDocumentFragment();
    const now = Date.now() / 1000;
    for (const r of [...data].sort((a, b) => (a.model_id < b.model_id ? -1 : 1))) {
      const model = models.get(r.model_id);
      const expiry = !r.expires_at ? (r.active || r.queued ? "busy: not while it works" : "never") : r.expires_at <= now ? "now" : `in ${formatDuration(r.expires_at - now)} (${new Date(r.expires_at * 1000).toLocaleTimeString()})`;
      const stop = el("button", {
        type: "button",
        text: stopping.has(r.model_id) ? "Stopping…" : "Stop",
        disabled: stopping.has(r.model_id),
        dataset: { id: r.model_id },
        attrs: { "aria-label": `Stop ${r.model_id}` },
      });
      const tr = el(
        "tr",
        { dataset: { id: r.model_id } },
        el("td", null, model && model.name && model.name !== r.model_id ? el("span", { class: "model-name", text: model.name }) : null, el("code", { class: "model-id", text: r.model_id })),
        el("td", { text: r.runner || "—" }),
        el("td", { text: r.engine || "—" }),
        el("td", { text: formatBytes(r.memory_bytes) }),
        el("td", { text: expiry }),
        el("td", { class: "num", text: String(r.active || 0) }),
        el("td", { class: "num", text: String(r.queued || 0) }),
        el("td", null, stop),
      );
      fragment.append(tr);
    }
    fill(tbody, fragment);
    empty.hidden = data.length > 0;
    if (focusedId) {
      const button = tbody.querySelector(`button[data-id="${CSS.escape(focusedId)}"]`);
      (button || refreshButton).focus();
    }
  }

  tbody.addEventListener("click", async (event) => {
    const button = event.target.closest("button[data-id]");
    if (!button || button.disabled) return;
    const id = button.dataset.id;
    stopping.add(id);
    render();
    try {
      await withKey(() => post(`/v1/models/${modelPath(id)}/stop`, {}));
      announce(`${id} stopped`);
    } catch (err) {
      message.textContent = `${id}: ${err instanceof ApiError ? err.message : err}`;
      message.hidden = false;
    } finally {
      stopping.delete(id);
    }
    await refresh();
  });
  refreshButton.addEventListener("click", () => refresh());

  // A model event that changes a state (started, stopped, removed) refreshes the list, once per burst.
  const states = new Map();
  let pending = null;
  subscribe((change) => {
    if (change.kind !== "model" && change.kind !== "reset") return;
    const m = change.id ? models.get(change.id) : null;
    if (change.kind === "model") {
      const state = m ? m.state : "gone";
      if (states.get(change.id) === state) return;
      states.set(change.id, state);
    }
    if (section.hidden || pending) return;
    pending = setTimeout(() => {
      pending = null;
      refresh();
    }, 150);
  });

  function shown() {
    refresh();
    clearInterval(timer);
    timer = setInterval(() => {
      if (section.hidden) clearInterval(timer);
      else refresh();
    }, EVERY_MS);
  }
  return { refresh, shown };
}
