// The page: a header with the title and the three views (Models, Running, Chat) switched by the buttons of
// the <nav> (and the URL's #models / #running / #chat, so Back and Forward work); the key prompt on a 401;
// the catalog loaded once and followed live (store.js).

import { apiKey, setApiKey } from "./api.js";
import { askForKey } from "./auth.js";
import { announce } from "./dom.js";
import { mountHub, showLoadError } from "./hub.js";
import { mountRunning } from "./running.js";
import { connect, load } from "./store.js";

const VIEWS = ["models", "running", "chat"];
const sections = Object.fromEntries(VIEWS.map((v) => [v, document.getElementById(`${v}-view`)]));
const buttons = Object.fromEntries(VIEWS.map((v) => [v, document.getElementById(`nav-${v}`)]));

mountHub(sections.models);
const running = mountRunning(sections.running);
let chatMounted = false;

/** The chat module is loaded on its own: a failure there leaves the models and running views working. */
async function mountChatView() {
  if (chatMounted) return;
  chatMounted = true;
  try {
    const { mountChat } = await import("./chat.js");
    mountChat(sections.chat);
  } catch (err) {
    console.warn("the chat view cannot load", err);
    sections.chat.textContent = "The chat view cannot load.";
  }
}

function show(view, { focus = false, push = true } = {}) {
  if (!VIEWS.includes(view)) view = "models";
  for (const v of VIEWS) {
    sections[v].hidden = v !== view;
    buttons[v].setAttribute("aria-current", v === view ? "page" : "false");
  }
  if (push && location.hash !== `#${view}`) history.pushState(null, "", `#${view}`);
  if (view === "running") running.shown();
  if (focus) {
    const heading = sections[view].querySelector("h2");
    (heading || sections[view]).setAttribute("tabindex", "-1");
    (heading || sections[view]).focus({ preventScroll: true });
  }
}

for (const v of VIEWS) buttons[v].addEventListener("click", () => show(v, { focus: true }));
window.addEventListener("popstate", () => show(location.hash.slice(1), { push: false }));
window.addEventListener("jan:view", (event) => show(event.detail && event.detail.view, { push: true }));

const keyButton = document.getElementById("key-button");
function keyLabel() {
  keyButton.textContent = apiKey() ? "Forget API key" : "API key";
  keyButton.setAttribute("aria-label", apiKey() ? "Forget the API key of this tab" : "Enter an API key");
}
keyButton.addEventListener("click", async () => {
  if (apiKey()) {
    setApiKey("");
    announce("The API key is forgotten");
  } else if (await askForKey()) {
    load().catch(showLoadError);
  }
  keyLabel();
});
window.addEventListener("jan:key", keyLabel);
keyLabel();

mountChatView();
show(location.hash.slice(1) || "models", { push: false });
load().catch(showLoadError);
connect();
