// The page's picture of the catalog: every model, the download jobs, the catalog's problems; kept up to
// date by GET /v1/events (reconnected with a backoff) and one progress stream per running download.
//
// Exports: models (Map id -> model), jobs (Map id -> job), problems (array), fits (Map id -> the memory fit
// of GET /v1/models/fit), subscribe(fn) -> unsubscribe (fn({kind: "reset" | "model" | "job" | "problems" |
// "fits", id?})), load(), connect(), watchDownload(id), setJob(id, job), speedOf(id) -> {speed, eta},
// ACTIVE (job phases of a download in progress).

import { ApiError, events, get, modelPath } from "./api.js";
import { withKey } from "./auth.js";

export const models = new Map();
export const jobs = new Map();
export let problems = [];
// id -> {fit, estimate_bytes, budget_bytes, free_bytes, runner, basis, loaded}: the runners' own answer.
export const fits = new Map();
export const ACTIVE = new Set(["queued", "connecting", "downloading", "verifying", "storing"]);

const listeners = new Set();
const watching = new Set();
const samples = new Map(); // id -> [{t, bytes}]: speed and ETA when a job does not say them
const moved = new Map(); // id -> when its bytes_done last changed
const FIT_DELAY = 500; // ms: a burst of model events asks for the fits once
const fitInputs = new Map(); // id -> what its fit was last asked with (state, parameters, metadata)
let fitTimer = null;
let fitAsked = 0; // the latest request: an older answer arriving late is dropped

export function subscribe(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

function emit(change) {
  for (const fn of listeners) {
    try {
      fn(change);
    } catch (err) {
      console.warn("listener failed", err);
    }
  }
}

/** Everything anew: the models, the jobs (paused and running downloads), the problems. */
export async function load() {
  const [list, downloads] = await Promise.all([
    withKey(() => get("/v1/models")),
    withKey(() => get("/v1/downloads")).catch(() => ({ data: [] })),
  ]);
  models.clear();
  for (const m of list.data || []) models.set(m.id, m);
  jobs.clear();
  for (const job of downloads.data || []) {
    if (job.phase === "paused" || job.phase === "failed" || ACTIVE.has(job.phase)) jobs.set(job.model_id, job);
  }
  emit({ kind: "reset" });
  for (const [id, m] of models) if (m.state === "downloading" || ACTIVE.has((jobs.get(id) || {}).phase)) watchDownload(id);
  loadProblems();
  loadFits();
}

/** The memory fit of every model (GET /v1/models/fit). Nothing is shown for a model without one. */
export async function loadFits() {
  clearTimeout(fitTimer);
  fitTimer = null;
  fitInputs.clear();
  for (const [id, m] of models) fitInputs.set(id, fitInput(m));
  const asked = ++fitAsked;
  let answer;
  try {
    answer = await withKey(() => get("/v1/models/fit"));
  } catch (err) {
    console.warn("cannot get the memory fit of the models", err);
    return;
  }
  if (asked !== fitAsked) return;
  fits.clear();
  for (const f of answer.data || []) if (f && f.fit) fits.set(f.id, f);
  emit({ kind: "fits" });
}

function fitInput(model) {
  return JSON.stringify([model.state, model.parameters || {}, model.metadata || {}]);
}

/** Asks for the fits again soon when a model changed in a way that moves them (started, stopped,
 * downloaded, re-parameterised, added or removed): one model loaded changes what is free for all. */
function refreshFits(id) {
  const model = models.get(id);
  if ((model ? fitInput(model) : undefined) === fitInputs.get(id)) return;
  if (fitTimer === null) fitTimer = setTimeout(loadFits, FIT_DELAY);
}

export async function loadProblems() {
  try {
    const answer = await withKey(() => get("/v1/catalog/problems"));
    problems = answer.data || [];
    emit({ kind: "problems" });
  } catch (err) {
    console.warn("cannot list the catalog's problems", err);
  }
}

/** Applies one catalog change of /v1/events. */
function apply(change) {
  const { type, id, model } = change;
  if ((type === "added" || type === "updated") && model) {
    const before = models.get(id);
    models.set(id, model);
    if (model.state === "downloading") watchDownload(id);
    else if (before && before.state === "downloading" && model.state !== "downloading" && !watching.has(id)) {
      const job = jobs.get(id);
      if (job && ACTIVE.has(job.phase)) jobs.delete(id);
    }
    emit({ kind: "model", id });
  } else if (type === "removed" || type === "invalid") {
    if (models.delete(id)) emit({ kind: "model", id });
    jobs.delete(id);
    if (type === "invalid" || problems.some((p) => p.id === id)) loadProblems();
  }
  refreshFits(id);
}

let connected = false;

/** Follows GET /v1/events for good: after an error it waits (1 s, doubling to 30 s) and loads anew. */
export async function connect() {
  if (connected) return;
  connected = true;
  let delay = 1000;
  let first = true;
  for (;;) {
    try {
      if (!first) await load();
      first = false;
      const stream = events("GET", "/v1/events");
      for await (const { event, data } of stream) {
        delay = 1000;
        if (event === "model" && data && typeof data === "object") apply(data);
        else if (event === "error") break;
      }
    } catch (err) {
      if (err instanceof ApiError && err.status === 401) {
        // The key prompt is up (jan:unauthorized); try again once a key is entered.
        await new Promise((resolve) => window.addEventListener("jan:key", resolve, { once: true }));
        delay = 0;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(Math.max(delay * 2, 1000), 30000);
  }
}

export function setJob(id, job) {
  if (job && job.phase !== "done" && job.phase !== "cancelled") jobs.set(id, job);
  else jobs.delete(id);
  if (!job || !ACTIVE.has(job.phase)) {
    samples.delete(id);
    moved.delete(id);
  }
  emit({ kind: "job", id });
}

/** Follows a download's progress (GET .../download as Server-Sent Events) until it ends or pauses. */
export async function watchDownload(id) {
  if (watching.has(id)) return;
  watching.add(id);
  let last = null;
  try {
    const path = `/v1/models/${modelPath(id)}/download`;
    for await (const { data } of events("GET", path)) {
      if (data === "[DONE]") break;
      if (data && data.error) {
        last = { ...(last || { model_id: id }), phase: "failed", error: data.error.message || "progress stream broke" };
        setJob(id, last);
        break;
      }
      if (data && typeof data === "object") {
        last = data;
        sample(id, data);
        setJob(id, data);
      }
    }
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 404)) console.warn(`progress of ${id}`, err);
  } finally {
    watching.delete(id);
  }
  // The stream ended without a final phase (a broken connection): look again in a moment.
  const model = models.get(id);
  if ((!last || ACTIVE.has(last.phase)) && model && model.state === "downloading") {
    setTimeout(() => watchDownload(id), 1000);
  }
}

function sample(id, job) {
  const list = samples.get(id) || [];
  const now = performance.now();
  if (!list.length || list[list.length - 1].bytes !== job.bytes_done) moved.set(id, now);
  list.push({ t: now, bytes: job.bytes_done });
  while (list.length > 2 && list[list.length - 1].t - list[1].t > 5000) list.shift();
  samples.set(id, list);
}

/**
 * Bytes per second and seconds left of a download: the job's own figures, else from its recent progress;
 * `stalled` is how long (seconds) no byte arrived, when that is 3 s or more (the job's figures are stale).
 */
export function speedOf(id) {
  const job = jobs.get(id);
  if (!job) return { speed: 0, eta: -1, stalled: 0 };
  let speed = job.bytes_per_second || 0;
  let eta = typeof job.eta_seconds === "number" ? job.eta_seconds : -1;
  const list = samples.get(id) || [];
  const last = list[list.length - 1];
  const stalled = moved.has(id) ? (performance.now() - moved.get(id)) / 1000 : 0;
  if (stalled >= 3) return { speed: 0, eta: -1, stalled };
  if (!speed && list.length > 1) {
    const a = list[0];
    if (last.t > a.t) speed = ((last.bytes - a.bytes) * 1000) / (last.t - a.t);
  }
  if (eta < 0 && speed > 0 && job.bytes_total > 0) eta = Math.max(0, (job.bytes_total - job.bytes_done) / speed);
  return { speed, eta, stalled: 0 };
}
