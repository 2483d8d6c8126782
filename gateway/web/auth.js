// The API key prompt: shown when a call is refused with 401 (the `jan:unauthorized` event of api.js, or
// an ApiError with status 401). The key goes to setApiKey (this tab's session storage) and travels as an
// Authorization header; it is never put in a URL.
//
// Exports: askForKey(message?) -> Promise<boolean> (true once a key was entered; one prompt at a time),
//          withKey(fn) -> fn's result, calling fn again after a 401 once the user entered a key.

import { ApiError, setApiKey } from "./api.js";
import { el, openDialog } from "./dom.js";

let pending = null;

/** Opens the key prompt (or joins the one open); true when a key was entered, false when dismissed. */
export function askForKey(message = "") {
  if (pending) return pending;
  const input = el("input", {
    id: "api-key-input",
    type: "password",
    autocomplete: "off",
    spellcheck: false,
    required: true,
  });
  const error = el("p", { class: "field-error", attrs: { role: "alert" } });
  const body = [
    el("p", {
      text: "The server asks for an API key. It is kept in this browser tab only (session storage) and sent as an Authorization header.",
    }),
    message ? el("p", { class: "muted", text: `Server: ${message}` }) : null,
    el("label", { htmlFor: input.id, text: "API key" }),
    input,
    error,
  ];
  pending = openDialog({
    title: "API key needed",
    body,
    actions: [{ label: "Use key", value: "save", class: "primary" }],
    initialFocus: input,
    onAction: () => {
      const key = input.value.trim();
      if (!key || /\s/.test(key)) {
        error.textContent = "Enter the key: one word, no spaces.";
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return false;
      }
      setApiKey(key);
      return true;
    },
  }).then((value) => {
    pending = null;
    if (value === "save") window.dispatchEvent(new CustomEvent("jan:key"));
    return value === "save";
  });
  return pending;
}

/** Runs fn; after a 401 asks for a key and runs it again (a few times at most: a wrong key asks again). */
export async function withKey(fn) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof ApiError && err.status === 401 && attempt < 3 && (await askForKey(err.message))) continue;
      throw err;
    }
  }
}

window.addEventListener("jan:unauthorized", (event) => {
  askForKey(event.detail && event.detail.message);
});
