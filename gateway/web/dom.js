// Safe DOM helpers shared by the page's modules (the chat module may import them too).
//
// Exports:
//   el(tag, props?, ...children) -> Element   props: {class, text, attrs: {name: value}, on: {event: fn},
//                                             dataset: {...}, and any DOM property (type, value, hidden,
//                                             disabled, htmlFor, ...)}; children: Nodes, strings (as text
//                                             nodes), null/false (skipped) or arrays of those.
//   clear(node) -> node                       removes every child.
//   fill(node, ...children) -> node           clear(node), then the children as el() takes them.
//   formatBytes(n) -> "1.5 GiB"               ("—" for unknown / non-numbers).
//   formatDuration(seconds) -> "1 min 5 s"    ("—" for unknown / negative).
//   openDialog({title, body, actions, onAction, initialFocus, closeLabel})
//                                             a modal <dialog>; resolves with the value of the action
//                                             picked (null when closed with Escape or Cancel).
//
//   announce(message)                         says message through the page's polite live region
//                                             (#announce), for screen readers.
//
// Everything built here is text: no function of this module parses a string as HTML.

let dialogCount = 0;

/** An element with properties and children; strings become text nodes (never HTML). */
export function el(tag, props = null, ...children) {
  const node = document.createElement(tag);
  if (props) {
    for (const [key, value] of Object.entries(props)) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key === "attrs") for (const [a, v] of Object.entries(value)) node.setAttribute(a, String(v));
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") for (const [event, fn] of Object.entries(value)) node.addEventListener(event, fn);
      else node[key] = value;
    }
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Removes every child of node. */
export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

/** Replaces node's children (strings as text; null and false skipped, unlike Element.append). */
export function fill(node, ...children) {
  clear(node);
  append(node, children);
  return node;
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** Bytes for people: "1.5 GiB" ("—" when unknown). */
export function formatBytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "—";
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(n >= 100 ? 0 : 1)} ${UNITS[i]}`;
}

/** Seconds for people: "45 s", "3 min 5 s", "2 h 10 min" ("—" when unknown). */
export function formatDuration(s) {
  if (typeof s !== "number" || !Number.isFinite(s) || s < 0) return "—";
  s = Math.round(s);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

/**
 * A modal dialog (the native <dialog>: focus stays inside, Escape closes it). `body` is a Node or an
 * array of them; `actions` are [{label, value, class?, ariaLabel?}], followed by a button
 * that closes it (`closeLabel`, "Cancel"). Resolves with the value of the action pressed, or null when
 * closed otherwise (that button, Escape). `onAction(value)` may return false (or a promise of
 * false) to keep the dialog open (e.g. a validation error shown in place).
 */
export function openDialog({ title, body, actions = [], onAction = null, initialFocus = null, closeLabel = "Cancel" }) {
  const heading = el("h2", { text: title, id: `dialog-title-${++dialogCount}` });
  const dialog = el("dialog", { class: "dialog", attrs: { "aria-labelledby": heading.id } });
  const buttons = actions.map((a) =>
    el("button", {
      type: "button",
      text: a.label,
      class: a.class || "",
      value: a.value,
      attrs: a.ariaLabel ? { "aria-label": a.ariaLabel } : {},
    }),
  );
  const close = el("button", { type: "button", class: "dialog-close", text: closeLabel });
  dialog.append(heading, el("div", { class: "dialog-body" }, body), el("div", { class: "dialog-actions" }, buttons, close));
  document.body.append(dialog);
  return new Promise((resolve) => {
    let result = null;
    const finish = (value) => {
      result = value;
      dialog.close();
    };
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(result);
    });
    close.addEventListener("click", () => finish(null));
    for (const button of buttons) {
      button.addEventListener("click", async () => {
        if (onAction) {
          buttons.forEach((b) => (b.disabled = true));
          let keep;
          try {
            keep = (await onAction(button.value)) === false;
          } finally {
            buttons.forEach((b) => (b.disabled = false));
          }
          if (keep) return;
        }
        finish(button.value);
      });
    }
    // Enter in a text field presses the first action (a form without a submit request).
    dialog.addEventListener("keydown", (event) => {
      const t = event.target;
      if (event.key === "Enter" && t instanceof HTMLInputElement && buttons.length) {
        event.preventDefault();
        buttons[0].click();
      }
    });
    dialog.showModal();
    const focus = typeof initialFocus === "function" ? initialFocus(dialog) : initialFocus;
    if (focus) focus.focus();
  });
}

/** Says message through the page's live region (screen readers read it; nothing visible changes). */
export function announce(message) {
  const region = document.getElementById("announce");
  if (!region) return;
  region.textContent = "";
  // A new text node in a later task makes screen readers read the same message twice in a row too.
  setTimeout(() => (region.textContent = message), 30);
}
