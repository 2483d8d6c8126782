// Every call the page makes to the gateway: the API key (kept in session storage, sent as a Bearer
// header, never put in a URL), JSON in and out, errors as ApiError, and Server-Sent Events read from a
// fetch() body (EventSource cannot send a header).

const KEY = "jan.apiKey";

export function apiKey() {
  return sessionStorage.getItem(KEY) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY, key);
  else sessionStorage.removeItem(KEY);
}

/** An error answer of the API: its HTTP status, message and code (e.g. "invalid_api_key"). */
export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

function headers(extra = {}) {
  const out = { ...extra };
  const key = apiKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

async function failure(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  let param = null;
  try {
    const body = await response.json();
    const error = body && body.error;
    if (error && typeof error === "object") {
      message = error.message || message;
      code = error.code || null;
      param = error.param || null;
    } else if (typeof error === "string") {
      message = error;
    }
  } catch {
    // not JSON: the status line says it
  }
  if (response.status === 401) window.dispatchEvent(new CustomEvent("jan:unauthorized", { detail: { message } }));
  return new ApiError(response.status, message, code, param);
}

/** A raw fetch with the key; throws ApiError for an error status. */
export async function send(method, path, { body, signal, accept = "application/json", raw = false } = {}) {
  const init = { method, signal, headers: headers({ Accept: accept }) };
  if (body !== undefined) {
    if (raw) {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    throw new ApiError(0, `the gateway cannot be reached (${err && err.message ? err.message : err})`, "unreachable");
  }
  if (!response.ok) throw await failure(response);
  return response;
}

/** A JSON call: the parsed answer (null for an empty one). */
export async function call(method, path, body, options = {}) {
  const response = await send(method, path, { ...options, body });
  const text = await response.text();
  return text ? JSON.parse(text) : null;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body, options) => call("POST", path, body, options);
export const patch = (path, body, options) => call("PATCH", path, body, options);
export const del = (path, options) => call("DELETE", path, undefined, options);

/**
 * The Server-Sent Events of a call, as {event, data} (data parsed as JSON when it is JSON; "[DONE]"
 * stays a string). Ends when the stream ends; throws ApiError for an error status; abort with `signal`.
 */
export async function* events(method, path, { body, signal } = {}) {
  const response = await send(method, path, { body, signal, accept: "text/event-stream" });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.search(/\r?\n\r?\n/)) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end).replace(/^\r?\n\r?\n/, "");
        const parsed = parseEvent(block);
        if (parsed) yield parsed;
      }
    }
  } finally {
    reader.releaseLock();
  }
}

function parseEvent(block) {
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  const text = data.join("\n");
  try {
    return { event, data: JSON.parse(text) };
  } catch {
    return { event, data: text };
  }
}

/** A model id as a path: `<folder>/<file>`, each part encoded. */
export function modelPath(id) {
  return id.split("/").map(encodeURIComponent).join("/");
}
