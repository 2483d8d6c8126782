// The Chat view: talk to a running or startable model through /v1/chat/completions (streamed), with
// per-chat system prompt, temperature and max tokens, the answer's time to first token and tokens/s, a
// Stop button that keeps the partial answer, and the conversations kept in this browser (localStorage).
// Model output and model names are text: the DOM is built with createElement/textContent (markdown.js).

import { ApiError, events, get } from "./api.js";
import { renderMarkdown } from "./markdown.js";

const STORE = "jan.chats";
const UNTITLED = "New chat";
const OFFERED = new Set(["running", "stopped"]); // a stopped model starts on the first request

/** An element: `props` are properties (className, textContent, type, hidden…) or `on*` listeners. */
function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name.startsWith("aria-") || name === "role") node.setAttribute(name, value);
    else node[name] = value;
  }
  node.append(...children);
  return node;
}

const newId = () => Date.now().toString(36) + Math.random().toString(36).slice(2, 8);
const str = (v) => (typeof v === "string" ? v : "");

function blankChat(from) {
  return {
    id: newId(),
    title: UNTITLED,
    model: from ? from.model : "",
    system: from ? from.system : "",
    temperature: from ? from.temperature : "",
    maxTokens: from ? from.maxTokens : "",
    messages: [],
    updated: Date.now(),
  };
}

/** The stored conversations, each checked field by field (storage is anyone's to edit). */
function load() {
  let raw = null;
  try {
    raw = JSON.parse(localStorage.getItem(STORE) || "null");
  } catch {
    raw = null;
  }
  const chats = (raw && Array.isArray(raw.chats) ? raw.chats : [])
    .filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages))
    .map((c) => ({
      id: c.id,
      title: str(c.title) || UNTITLED,
      model: str(c.model),
      system: str(c.system),
      temperature: str(c.temperature),
      maxTokens: str(c.maxTokens),
      updated: Number(c.updated) || 0,
      messages: c.messages
        .filter((m) => m && (m.role === "user" || m.role === "assistant"))
        .map((m) => ({
          role: m.role,
          content: str(m.content),
          reasoning: str(m.reasoning),
          model: str(m.model),
          stats: m.stats && typeof m.stats === "object" ? m.stats : null,
          error: m.error && typeof m.error === "object" ? { status: Number(m.error.status) || 0, message: str(m.error.message) } : null,
          stopped: m.stopped === true,
        })),
    }));
  return { chats, current: raw && typeof raw.current === "string" ? raw.current : null };
}

const num = (v) => {
  if (typeof v !== "string" || !v.trim()) return null;
  const n = Number(v);
  return Number.isFinite(n) ? n : null;
};

function titleOf(text) {
  const line = text.trim().split("\n")[0].trim();
  return line.length > 48 ? `${line.slice(0, 47)}…` : line || UNTITLED;
}

const describe = (err) => (err instanceof ApiError && err.status ? `Error ${err.status}: ${err.message}` : String((err && err.message) || err));

/** "0.21 s", "1.4 s" */
const seconds = (s) => `${s < 10 ? s.toFixed(2) : s.toFixed(1)} s`;

/** Fills `section` with the chat UI; call once. */
export function mountChat(section) {
  let store = load();
  let models = null; // [{id, state}] once listed
  let modelsKey = "";
  let listedAt = 0;
  let live = null; // the answer being streamed: {chat, msg, el, controller}
  let paintQueued = false;

  // --- the DOM ---------------------------------------------------------------------------------------
  const newButton = h("button", { type: "button", className: "chat-new", textContent: "New chat", onclick: () => startNew() });
  const list = h("ul", { className: "chat-list" });
  const sidebar = h("nav", { className: "chat-sidebar", "aria-label": "Conversations" }, newButton, list);

  const modelSelect = h("select", { className: "chat-model", onchange: () => setting("model", modelSelect.value) });
  modelSelect.addEventListener("focus", () => refreshModels(false));
  const temperature = h("input", {
    className: "chat-temperature",
    type: "number",
    min: "0",
    max: "5",
    step: "0.1",
    placeholder: "model default",
    oninput: () => setting("temperature", temperature.value),
  });
  const maxTokens = h("input", {
    className: "chat-max-tokens",
    type: "number",
    min: "1",
    step: "1",
    placeholder: "model default",
    oninput: () => setting("maxTokens", maxTokens.value),
  });
  const system = h("textarea", {
    className: "chat-system",
    rows: 2,
    placeholder: "Optional instructions sent before the conversation",
    oninput: () => setting("system", system.value),
  });
  const field = (label, control, cls) => h("label", { className: `chat-field ${cls}` }, h("span", { textContent: label }), control);
  const settings = h(
    "div",
    { className: "chat-settings" },
    field("Model", modelSelect, "chat-field-model"),
    field("Temperature", temperature, "chat-field-number"),
    field("Max tokens", maxTokens, "chat-field-number"),
    field("System prompt", system, "chat-field-system"),
  );
  const notice = h("p", { className: "chat-notice", role: "status", hidden: true });
  const log = h("div", { className: "chat-log", role: "log", "aria-label": "Messages" });
  const input = h("textarea", {
    className: "chat-input",
    rows: 3,
    placeholder: "Message — Enter sends, Shift+Enter starts a new line",
    "aria-label": "Message",
  });
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    } else if (e.key === "Escape" && live) {
      e.preventDefault();
      stop();
    }
  });
  const sendButton = h("button", { type: "button", className: "chat-send", textContent: "Send", onclick: () => send() });
  const stopButton = h("button", { type: "button", className: "chat-stop", textContent: "Stop", hidden: true, onclick: () => stop() });
  const composer = h("div", { className: "chat-composer" }, input, sendButton, stopButton);
  const main = h("div", { className: "chat-main" }, settings, notice, log, composer);
  const heading = h("h2", { className: "chat-heading", textContent: "Chat" });
  section.replaceChildren(heading, h("div", { className: "chat" }, sidebar, main));

  // --- conversations ---------------------------------------------------------------------------------
  const current = () => store.chats.find((c) => c.id === store.current);

  function save() {
    try {
      localStorage.setItem(STORE, JSON.stringify(store));
    } catch (err) {
      say(`The conversation could not be saved in this browser: ${err && err.message ? err.message : err}`);
    }
  }

  function ensureCurrent() {
    if (!current()) {
      const latest = [...store.chats].sort((a, b) => b.updated - a.updated)[0];
      if (latest) store.current = latest.id;
      else {
        const chat = blankChat(null);
        store.chats.push(chat);
        store.current = chat.id;
      }
    }
    return current();
  }

  function startNew(model) {
    const chat = current();
    if (chat && !chat.messages.length) {
      if (model) chat.model = model; // an empty chat is new enough
    } else {
      const fresh = blankChat(chat);
      if (model) fresh.model = model;
      store.chats.push(fresh);
      store.current = fresh.id;
    }
    save();
    renderAll();
    input.focus();
  }

  function open(id) {
    store.current = id;
    save();
    renderAll();
  }

  function remove(id) {
    if (live && live.chat.id === id) live.controller.abort();
    store.chats = store.chats.filter((c) => c.id !== id);
    if (store.current === id) store.current = null;
    ensureCurrent();
    save();
    renderAll();
    newButton.focus();
  }

  function setting(name, value) {
    const chat = current();
    chat[name] = value;
    save();
    if (name === "model") fillModels();
  }

  function say(text) {
    notice.textContent = text || "";
    notice.hidden = !text;
  }

  // --- rendering -------------------------------------------------------------------------------------
  function renderList() {
    const items = [...store.chats].sort((a, b) => b.updated - a.updated);
    list.replaceChildren(
      ...items.map((chat) => {
        const openButton = h("button", { type: "button", className: "chat-open", textContent: chat.title, title: chat.title, onclick: () => open(chat.id) });
        if (chat.id === store.current) openButton.setAttribute("aria-current", "true");
        const deleteButton = h("button", {
          type: "button",
          className: "chat-delete",
          textContent: "×",
          title: "Delete chat",
          "aria-label": `Delete chat ${chat.title}`,
          onclick: () => remove(chat.id),
        });
        return h("li", { className: chat.id === store.current ? "chat-item current" : "chat-item" }, openButton, deleteButton);
      }),
    );
  }

  function renderChat() {
    const chat = ensureCurrent();
    temperature.value = chat.temperature;
    maxTokens.value = chat.maxTokens;
    system.value = chat.system;
    fillModels();
    if (!chat.messages.length) {
      log.replaceChildren(h("p", { className: "chat-empty", textContent: "Choose a model and send a message. Conversations stay in this browser." }));
      return;
    }
    log.replaceChildren(
      ...chat.messages.map((msg) => {
        const article = messageElement(msg);
        const streaming = live && live.msg === msg;
        if (streaming) live.el = article;
        paint(article, msg, streaming);
        return article;
      }),
    );
    log.scrollTop = log.scrollHeight;
  }

  function renderAll() {
    ensureCurrent();
    renderList();
    renderChat();
  }

  function fillModels() {
    const chat = current();
    const offered = (models || []).filter((m) => OFFERED.has(m.state));
    const options = [];
    if (!chat.model) {
      const empty = models && !offered.length;
      options.push(new Option(empty ? "No model ready — download one in the Hub" : "Choose a model…", "", true, true));
      options[0].disabled = !!empty;
    }
    for (const m of offered) options.push(new Option(m.state === "running" ? `${m.id} (running)` : m.id, m.id));
    if (chat.model && !offered.some((m) => m.id === chat.model)) {
      options.push(new Option(models ? `${chat.model} (not available)` : chat.model, chat.model));
    }
    modelSelect.replaceChildren(...options);
    modelSelect.value = chat.model;
  }

  async function refreshModels(force) {
    if (!force && Date.now() - listedAt < 2000) return;
    listedAt = Date.now();
    try {
      const answer = await get("/v1/models");
      const listed = (answer && Array.isArray(answer.data) ? answer.data : []).map((m) => ({ id: str(m.id), state: str(m.state) }));
      const key = JSON.stringify(listed);
      if (key !== modelsKey || models === null) {
        models = listed;
        modelsKey = key;
        fillModels();
      }
      if (notice.dataset.kind === "models") {
        notice.dataset.kind = "";
        say("");
      }
    } catch (err) {
      listedAt = 0;
      say(`The models could not be listed: ${describe(err)}`);
      notice.dataset.kind = "models";
    }
  }

  function messageElement(msg) {
    const user = msg.role === "user";
    const article = h("article", { className: user ? "msg msg-user" : "msg msg-assistant" });
    const who = h("div", { className: "msg-who", textContent: user ? "You" : msg.model || "Assistant" });
    const thinking = h(
      "details",
      { className: "msg-thinking", hidden: true },
      h("summary", { textContent: "Thinking" }),
      h("div", { className: "msg-thought md" }),
    );
    const body = h("div", { className: user ? "msg-body msg-text" : "msg-body md" });
    const stats = h("div", { className: "msg-stats", hidden: true });
    const error = h("p", { className: "msg-error", role: "alert", hidden: true });
    article.append(who, thinking, body, stats, error);
    return article;
  }

  /** Draws `msg` into its article (cheap enough to run on every frame of a stream). */
  function paint(article, msg, streaming) {
    const [, thinking, body, stats, error] = article.children;
    article.setAttribute("aria-busy", streaming ? "true" : "false");
    if (msg.role === "user") {
      body.textContent = msg.content;
      return;
    }
    if (msg.reasoning) {
      thinking.hidden = false;
      thinking.firstChild.textContent = streaming && !msg.content ? "Thinking…" : "Thought";
      thinking.lastChild.replaceChildren(renderMarkdown(msg.reasoning));
    }
    body.replaceChildren(renderMarkdown(msg.content));
    if (streaming && !msg.content && !msg.reasoning) body.append(h("span", { className: "msg-pending", textContent: "…", "aria-label": "Waiting for the answer" }));
    const s = msg.stats;
    const parts = [];
    if (s && typeof s.ttft === "number") parts.push(h("span", { className: "stat-ttft", textContent: `TTFT ${seconds(s.ttft)}` }));
    if (s && typeof s.tps === "number") parts.push(h("span", { className: "stat-tps", textContent: `${s.tps.toFixed(1)} tokens/s` }));
    if (s && typeof s.tokens === "number") parts.push(h("span", { className: "stat-tokens", textContent: `${s.tokens} tokens` }));
    if (s && s.finish === "length") parts.push(h("span", { className: "stat-finish", textContent: "max tokens reached" }));
    if (msg.stopped) parts.push(h("span", { className: "stat-stopped", textContent: "stopped" }));
    stats.replaceChildren(...parts);
    stats.hidden = !parts.length;
    error.hidden = !msg.error;
    error.textContent = msg.error ? `Error${msg.error.status ? ` ${msg.error.status}` : ""}: ${msg.error.message}` : "";
  }

  function paintLive() {
    paintQueued = false;
    if (!live || !live.el || !live.el.isConnected) return;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 48;
    paint(live.el, live.msg, true);
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  // --- talking ---------------------------------------------------------------------------------------
  function busy(on) {
    const focused = document.activeElement;
    sendButton.hidden = on;
    stopButton.hidden = !on;
    if (on && focused === sendButton) stopButton.focus();
    if (!on && focused === stopButton) input.focus();
  }

  function stop() {
    if (live) live.controller.abort();
  }

  async function send() {
    const chat = current();
    const text = input.value;
    if (live || !text.trim()) return;
    if (!chat.model) {
      say("Choose a model first.");
      modelSelect.focus();
      return;
    }
    if (notice.dataset.kind !== "models") say("");
    input.value = "";
    const history = chat.messages.filter((m) => m.content).map((m) => ({ role: m.role, content: m.content }));
    const messages = [...(chat.system.trim() ? [{ role: "system", content: chat.system }] : []), ...history, { role: "user", content: text }];
    const user = { role: "user", content: text, reasoning: "", model: "", stats: null, error: null, stopped: false };
    const msg = { role: "assistant", content: "", reasoning: "", model: chat.model, stats: null, error: null, stopped: false };
    if (!chat.messages.length) chat.title = titleOf(text);
    chat.messages.push(user, msg);
    chat.updated = Date.now();
    save();
    renderList();
    if (log.querySelector(".chat-empty")) log.replaceChildren();
    const userEl = messageElement(user);
    paint(userEl, user, false);
    const article = messageElement(msg);
    log.append(userEl, article);
    log.scrollTop = log.scrollHeight;

    const body = { model: chat.model, messages, stream: true, stream_options: { include_usage: true } };
    const t = num(chat.temperature);
    if (t !== null) body.temperature = t;
    const max = num(chat.maxTokens);
    if (max !== null) body.max_tokens = max;

    live = { chat, msg, el: article, controller: new AbortController() };
    busy(true);
    paint(article, msg, true);
    const started = performance.now();
    let first = null;
    let usage = null;
    let finish = null;
    try {
      for await (const { data } of events("POST", "/v1/chat/completions", { body, signal: live.controller.signal })) {
        if (data === "[DONE]") break;
        if (!data || typeof data !== "object") continue;
        if (data.error) {
          const e = typeof data.error === "object" ? data.error : { message: String(data.error) };
          throw new ApiError(0, str(e.message) || "the answer broke off", e.code || null, e.param || null);
        }
        const choice = Array.isArray(data.choices) ? data.choices[0] : null;
        if (choice && choice.delta) {
          const piece = str(choice.delta.content);
          const thought = str(choice.delta.reasoning_content);
          if ((piece || thought) && first === null) first = performance.now();
          msg.content += piece;
          msg.reasoning += thought;
          if (!paintQueued && (piece || thought)) {
            paintQueued = true;
            requestAnimationFrame(paintLive);
          }
        }
        if (choice && choice.finish_reason) finish = choice.finish_reason;
        if (data.usage && typeof data.usage === "object") usage = data.usage;
      }
    } catch (err) {
      if (err && err.name === "AbortError") msg.stopped = true;
      else msg.error = { status: err instanceof ApiError ? err.status : 0, message: err && err.message ? err.message : String(err) };
      // (a 401 also opens the page's key prompt: api.js dispatches jan:unauthorized)
    }
    const ended = performance.now();
    const tokens = usage && Number.isFinite(usage.completion_tokens) ? usage.completion_tokens : null;
    // tokens/s: from the first token to the last; the whole time when they all came in one piece.
    const span = first !== null && ended - first >= 50 ? ended - first : ended - started;
    msg.stats = {
      ttft: first === null ? null : (first - started) / 1000,
      tps: tokens !== null && tokens > 0 && span > 0 ? tokens / (span / 1000) : null,
      tokens,
      finish,
    };
    const el = live.el;
    live = null;
    chat.updated = Date.now();
    save();
    if (el && el.isConnected) paint(el, msg, false);
    busy(false);
  }

  // --- outside events --------------------------------------------------------------------------------
  window.addEventListener("jan:chat", (e) => {
    const model = e.detail && typeof e.detail.model === "string" ? e.detail.model : "";
    if (!model) return;
    const chat = current();
    if (chat.model === model || !chat.messages.length) {
      chat.model = model;
      save();
      renderAll();
    } else {
      startNew(model);
    }
    refreshModels(true);
    input.focus();
    requestAnimationFrame(() => input.focus()); // the view may only now be shown
  });
  window.addEventListener("jan:key", () => refreshModels(true)); // a key was entered
  window.addEventListener("pagehide", () => {
    if (live) {
      live.msg.stopped = true; // leaving mid-answer: keep what came
      save();
    }
  });
  window.addEventListener("storage", (e) => {
    if (e.key === STORE && !live) {
      store = load();
      renderAll();
    }
  });

  renderAll();
  refreshModels(true);
}
