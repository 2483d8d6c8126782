// A small Markdown renderer for model answers that builds DOM nodes only (createElement, textContent):
// the text it is given is never parsed as HTML, so `<script>` or `<img onerror>` in an answer stays text.
// It knows paragraphs, ATX headings, emphasis and strong, strikethrough, inline code, fenced code blocks
// (with a Copy button), lists (nested), blockquotes, tables, rules and links. A link is made only for an http:,
// https: or mailto: address (opened in a new tab, no opener, no referrer); any other link stays text.
// Half-written input (a stream in progress) renders as far as it goes: an unclosed fence is a code block.

const MAX_DEPTH = 12; // nested blocks and spans deeper than this stay text
const MAX_LABEL = 500; // the longest link label looked for (bounds the work per "[")
const MAX_LINK = 2000; // the longest link address
const SAFE_PROTOCOLS = new Set(["http:", "https:", "mailto:"]);
const PUNCT = /[!-/:-@[-`{-~]/;
const FENCE = /^( {0,3})(`{3,}|~{3,})(.*)$/;
const HEADING = /^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$/;
const RULE = /^ {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])([ \t]+|$)(.*)$/;
const TABLE_RULE = /^ {0,3}\|?[ \t]*:?-+:?[ \t]*(\|[ \t]*:?-+:?[ \t]*)*\|?[ \t]*$/;

/** The DOM of `source` (Markdown) as a DocumentFragment. */
export function renderMarkdown(source) {
  const out = document.createDocumentFragment();
  const lines = String(source ?? "").replace(/\r\n?/g, "\n").split("\n");
  blocks(lines, out, 0, false);
  return out;
}

/** An address that may be a link: the URL when its protocol is http, https or mailto; null otherwise. */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(String(raw).trim());
  } catch {
    return null; // relative or malformed: nowhere we can vouch for
  }
  return SAFE_PROTOCOLS.has(url.protocol) ? url.href : null;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// --- blocks -------------------------------------------------------------------------------------------

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line) || ITEM.test(line);
}

function blocks(lines, parent, depth, tight) {
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i++;
      continue;
    }
    if (depth >= MAX_DEPTH) {
      parent.append(el("p", null, lines.slice(i).join("\n")));
      return;
    }
    let m;
    if ((m = FENCE.exec(line)) && !(m[2][0] === "`" && m[3].includes("`"))) {
      i = fence(lines, i, m, parent);
    } else if ((m = HEADING.exec(line))) {
      const level = m[1].length;
      const h = el(`h${Math.min(6, level + 2)}`, `md-h md-h${level}`);
      inline(m[2] || "", h, depth);
      parent.append(h);
      i++;
    } else if (RULE.test(line)) {
      parent.append(el("hr"));
      i++;
    } else if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length) {
        const l = lines[i];
        if (QUOTE.test(l)) inner.push(l.replace(QUOTE, ""));
        else if (l.trim() && inner.length && inner[inner.length - 1].trim() && !startsBlock(l)) inner.push(l);
        else break;
        i++;
      }
      const quote = el("blockquote");
      blocks(inner, quote, depth + 1, false);
      parent.append(quote);
    } else if (ITEM.test(line)) {
      i = list(lines, i, parent, depth);
    } else if (tableAt(lines, i)) {
      i = table(lines, i, parent, depth);
    } else {
      const text = [];
      while (i < lines.length && lines[i].trim() && !(text.length && (startsBlock(lines[i]) || tableAt(lines, i)))) {
        text.push(lines[i].trim());
        i++;
      }
      if (tight) {
        inline(text.join("\n"), parent, depth);
      } else {
        const p = el("p");
        inline(text.join("\n"), p, depth);
        parent.append(p);
      }
    }
  }
}

/** Whether a table starts at line i: a row with "|", then a delimiter row of as many cells. */
function tableAt(lines, i) {
  const line = lines[i];
  const rule = lines[i + 1];
  return line.includes("|") && rule !== undefined && TABLE_RULE.test(rule) && cells(rule).length === cells(line).length;
}

/** The cells of a table row: split at each "|" that is not escaped (an outer "|" starts or ends it). */
function cells(line) {
  let row = line.trim();
  if (row.startsWith("|")) row = row.slice(1);
  if (row.endsWith("|") && !row.endsWith("\\|")) row = row.slice(0, -1);
  const out = [""];
  for (let i = 0; i < row.length; i++) {
    if (row[i] === "\\" && row[i + 1] === "|") {
      out[out.length - 1] += "|";
      i++;
    } else if (row[i] === "|") out.push("");
    else out[out.length - 1] += row[i];
  }
  return out.map((c) => c.trim());
}

function table(lines, i, parent, depth) {
  const head = cells(lines[i]);
  const align = cells(lines[i + 1]).map((c) => (c.endsWith(":") ? (c.startsWith(":") ? "center" : "right") : ""));
  const node = el("table", "md-table");
  const row = (values, tag) => {
    const tr = el("tr");
    head.forEach((_, k) => {
      const cell = el(tag, align[k] ? `md-${align[k]}` : null);
      inline(values[k] || "", cell, depth + 1);
      tr.append(cell);
    });
    return tr;
  };
  node.append(el("thead"));
  node.firstChild.append(row(head, "th"));
  const body = el("tbody");
  for (i += 2; i < lines.length && lines[i].trim() && lines[i].includes("|"); i++) body.append(row(cells(lines[i]), "td"));
  node.append(body);
  const box = el("div", "md-table-box"); // scrolls sideways when wide
  box.append(node);
  parent.append(box);
  return i;
}

function fence(lines, i, open, parent) {
  const indent = open[1].length;
  const marker = open[2];
  const lang = open[3].trim().split(/\s+/)[0] || "";
  const body = [];
  i++;
  while (i < lines.length) {
    const close = /^ {0,3}(`{3,}|~{3,})[ \t]*$/.exec(lines[i]);
    if (close && close[1][0] === marker[0] && close[1].length >= marker.length) {
      i++;
      break;
    }
    body.push(lines[i].replace(new RegExp(`^ {0,${indent}}`), ""));
    i++;
  }
  parent.append(codeBlock(body.join("\n"), lang));
  return i;
}

function codeBlock(text, lang) {
  const box = el("div", "md-code");
  const head = el("div", "md-code-head");
  head.append(el("span", "md-code-lang", lang || "code"));
  const copy = el("button", "md-copy", "Copy");
  copy.type = "button";
  copy.setAttribute("aria-label", lang ? `Copy ${lang} code` : "Copy code");
  copy.addEventListener("click", () => copyText(text, copy));
  head.append(copy);
  const pre = el("pre");
  const code = el("code", lang ? `language-${lang.replace(/[^\w+-]/g, "")}` : null, text);
  pre.append(code);
  box.append(head, pre);
  return box;
}

async function copyText(text, button) {
  let done = false;
  try {
    if (navigator.clipboard && window.isSecureContext) {
      await navigator.clipboard.writeText(text);
      done = true;
    }
  } catch {
    // denied: fall back below
  }
  if (!done) {
    const area = el("textarea", "md-copy-buffer");
    area.value = text;
    area.setAttribute("readonly", "");
    document.body.append(area);
    area.select();
    try {
      done = document.execCommand("copy");
    } catch {
      done = false;
    }
    area.remove();
  }
  button.textContent = done ? "Copied" : "Copy failed";
  setTimeout(() => {
    button.textContent = "Copy";
  }, 1500);
}

function list(lines, i, parent, depth) {
  const first = ITEM.exec(lines[i]);
  const ordered = /\d/.test(first[2]);
  const bullet = first[2].slice(-1);
  const node = el(ordered ? "ol" : "ul");
  if (ordered) {
    const start = parseInt(first[2], 10);
    if (start !== 1) node.start = start;
  }
  const items = [];
  let loose = false;
  while (i < lines.length) {
    const m = ITEM.exec(lines[i]);
    if (!m || /\d/.test(m[2]) !== ordered || m[2].slice(-1) !== bullet || RULE.test(lines[i])) break;
    const spaces = m[3].length;
    const width = m[1].length + m[2].length + (spaces > 4 || !m[4] ? 1 : spaces);
    const body = [m[4]];
    i++;
    while (i < lines.length) {
      const l = lines[i];
      const indent = l.length - l.trimStart().length;
      if (!l.trim()) {
        // A blank line: the item goes on only when an indented line follows.
        let j = i + 1;
        while (j < lines.length && !lines[j].trim()) j++;
        if (j < lines.length && lines[j].length - lines[j].trimStart().length >= width) {
          for (; i < j; i++) body.push("");
          loose = true;
          continue;
        }
        break;
      }
      if (indent >= width) body.push(l.slice(width));
      else if (body[body.length - 1].trim() && !startsBlock(l)) body.push(l.trim()); // lazy continuation
      else break;
      i++;
    }
    items.push(body);
    // A blank line between two items makes the list loose (its items hold paragraphs).
    let j = i;
    while (j < lines.length && !lines[j].trim()) j++;
    if (j > i && j < lines.length && ITEM.test(lines[j])) {
      const next = ITEM.exec(lines[j]);
      if (/\d/.test(next[2]) === ordered && next[2].slice(-1) === bullet) {
        loose = true;
        i = j;
      }
    }
  }
  for (const body of items) {
    const li = el("li");
    blocks(body, li, depth + 1, !loose);
    node.append(li);
  }
  parent.append(node);
  return i;
}

// --- spans --------------------------------------------------------------------------------------------

function inline(text, parent, depth, inLink = false) {
  if (depth >= MAX_DEPTH) {
    parent.append(text);
    return;
  }
  let plain = "";
  const failed = {}; // "<char><count>" -> the first position from which no closer exists
  const flush = () => {
    if (plain) parent.append(plain);
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    if (c === "\\" && i + 1 < text.length && PUNCT.test(text[i + 1])) {
      plain += text[i + 1];
      i += 2;
    } else if (c === "\n") {
      flush();
      parent.append(el("br"));
      i++;
    } else if (c === "`") {
      const span = codeSpan(text, i);
      if (span) {
        flush();
        parent.append(el("code", null, span.text));
        i = span.end;
      } else {
        const run = /^`+/.exec(text.slice(i))[0];
        plain += run;
        i += run.length;
      }
    } else if (c === "[" && !inLink) {
      const link = linkAt(text, i);
      if (!link) {
        plain += c;
        i++;
        continue;
      }
      const href = safeHref(link.dest);
      if (href) {
        flush();
        const a = el("a");
        a.href = href;
        a.target = "_blank";
        a.rel = "noopener noreferrer";
        if (link.title) a.title = link.title;
        inline(link.label, a, depth + 1, true);
        parent.append(a);
      } else {
        plain += text.slice(i, link.end); // not a safe address: the source, as text
      }
      i = link.end;
    } else if (c === "<" && !inLink) {
      const m = /^<([a-zA-Z][a-zA-Z0-9+.-]{1,31}:[^\s<>]*)>/.exec(text.slice(i));
      const href = m && safeHref(m[1]);
      if (href) {
        flush();
        parent.append(anchor(href, m[1]));
        i += m[0].length;
      } else {
        plain += c;
        i++;
      }
    } else if (c === "h" && !inLink && (i === 0 || !/[\w/]/.test(text[i - 1])) && /^https?:\/\//.test(text.slice(i, i + 8))) {
      let url = /^https?:\/\/[^\s<>`]*/.exec(text.slice(i))[0];
      url = trimUrl(url);
      const href = url.length > 8 ? safeHref(url) : null;
      if (href) {
        flush();
        parent.append(anchor(href, url));
      } else {
        plain += url;
      }
      i += url.length;
    } else if (c === "*" || c === "_" || c === "~") {
      const span = emphasis(text, i, failed);
      if (span) {
        flush();
        const node = el(span.tag);
        inline(span.inner, node, depth + 1, inLink);
        parent.append(node);
        i = span.end;
      } else {
        let n = 1;
        while (text[i + n] === c) n++;
        plain += text.slice(i, i + n);
        i += n;
      }
    } else {
      plain += c;
      i++;
    }
  }
  flush();
}

function anchor(href, text) {
  const a = el("a", null, text);
  a.href = href;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}

/** A bare URL without the punctuation that ends the sentence around it (and an unmatched ")"). */
function trimUrl(url) {
  for (;;) {
    const last = url[url.length - 1];
    if (/[.,:;!?'"*_~]/.test(last)) url = url.slice(0, -1);
    else if (last === ")" && (url.match(/\(/g) || []).length < (url.match(/\)/g) || []).length) url = url.slice(0, -1);
    else return url;
  }
}

function codeSpan(text, i) {
  let n = 0;
  while (text[i + n] === "`") n++;
  let j = i + n;
  for (;;) {
    j = text.indexOf("`", j);
    if (j < 0) return null;
    let m = 0;
    while (text[j + m] === "`") m++;
    if (m === n) {
      let inner = text.slice(i + n, j).replace(/\n/g, " ");
      if (inner.length > 2 && inner.startsWith(" ") && inner.endsWith(" ") && inner.trim()) inner = inner.slice(1, -1);
      return { text: inner, end: j + n };
    }
    j += m;
  }
}

/** `[label](destination "title")` at i: its parts and where it ends, or null. */
function linkAt(text, i) {
  let depth = 0;
  let j = i;
  const limit = Math.min(text.length, i + MAX_LABEL);
  for (; j < limit; j++) {
    const c = text[j];
    if (c === "\\") j++;
    else if (c === "`") {
      const span = codeSpan(text, j);
      if (span) j = span.end - 1;
    } else if (c === "[") depth++;
    else if (c === "]" && --depth === 0) break;
  }
  if (j >= limit || text[j + 1] !== "(") return null;
  const label = text.slice(i + 1, j);
  let k = j + 2;
  while (text[k] === " ") k++;
  let dest = "";
  if (text[k] === "<") {
    const close = text.indexOf(">", k);
    if (close < 0 || text.slice(k, close).includes("\n")) return null;
    dest = text.slice(k + 1, close);
    k = close + 1;
  } else {
    let parens = 0;
    const start = k;
    for (; k < Math.min(text.length, start + MAX_LINK); k++) {
      const c = text[k];
      if (c === "\\") k++;
      else if (/\s/.test(c)) break;
      else if (c === "(") parens++;
      else if (c === ")" && parens-- === 0) break;
    }
    dest = text.slice(start, k).replace(/\\([!-/:-@[-`{-~])/g, "$1");
  }
  while (text[k] === " ") k++;
  let title = "";
  const quote = text[k];
  if (quote === '"' || quote === "'") {
    const close = text.indexOf(quote, k + 1);
    if (close < 0) return null;
    title = text.slice(k + 1, close);
    k = close + 1;
    while (text[k] === " ") k++;
  }
  if (text[k] !== ")") return null;
  return { label, dest, title, end: k + 1 };
}

/** A `*em*`, `**strong**`, `_em_`, `__strong__` or `~~del~~` span starting at i, or null. */
function emphasis(text, i, failed) {
  const c = text[i];
  let n = 1;
  while (text[i + n] === c) n++;
  const after = text[i + n];
  if (after === undefined || /\s/.test(after)) return null; // cannot open
  if (c === "_" && i > 0 && /[\p{L}\p{N}]/u.test(text[i - 1])) return null; // snake_case stays text
  if (c === "~") {
    if (n !== 2) return null;
    const end = closer(text, i + 2, c, 2, failed);
    return end < 0 ? null : { tag: "del", inner: text.slice(i + 2, end), end: end + 2 };
  }
  if (n >= 2) {
    const end = closer(text, i + 2, c, 2, failed);
    if (end >= 0 && end > i + 2) return { tag: "strong", inner: text.slice(i + 2, end), end: end + 2 };
  }
  const end = closer(text, i + 1, c, 1, failed);
  if (end >= 0 && end > i + 1) return { tag: "em", inner: text.slice(i + 1, end), end: end + 1 };
  return null;
}

/** Where a closing run of `want` delimiters `c` starts (searching from `from`), or -1. A search that
 * failed from some position fails from any later one: `failed` remembers it (no quadratic rescans). */
function closer(text, from, c, want, failed) {
  const key = c + want;
  if (failed[key] !== undefined && from >= failed[key]) return -1;
  let j = from;
  while ((j = text.indexOf(c, j)) >= 0) {
    let m = 1;
    while (text[j + m] === c) m++;
    const before = text[j - 1];
    const canClose = before !== undefined && !/\s/.test(before) && !(c === "_" && /[\p{L}\p{N}]/u.test(text[j + m] || ""));
    if (canClose && (m === want || (want === 2 && m > 2) || (want === 1 && m === 3))) {
      return want === 2 ? j + m - 2 : j + m - 1;
    }
    j += m;
  }
  failed[key] = Math.min(failed[key] ?? Infinity, from);
  return -1;
}
