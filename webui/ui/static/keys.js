// Keyboard habits of A1111 users, the progress in the page title and the dismissible default-model notice:
//  * in a prompt or negative prompt box of txt2img / img2img: Ctrl+Enter or Alt+Enter clicks that tab's
//    Generate; Ctrl+ArrowUp / Ctrl+ArrowDown change the attention weight of the selection (or, with none, of
//    the (...) / [...] / <...> block or the word at the caret); Alt+ArrowLeft / Alt+ArrowRight move the
//    comma-separated prompt element(s) at the selection (A1111's option keyedit_move);
//  * Esc anywhere on the page clicks the Interrupt of each tab whose generation runs;
//  * while a generation runs the page title starts with "[42%] " (the last percentage Gradio's progress showed),
//    restored when it ends;
//  * the default-model notice (#model_notice) gets a × button; dismissed, it stays hidden in this browser
//    (localStorage).
// The step sizes and word delimiters are A1111's options keyedit_* (window.webuiPage.keyedit, from
// /webui-page.json; their A1111 defaults until it arrives). A value set here is followed by an "input" event so
// Gradio takes it.
(() => {
  "use strict";
  if (window.webuiKeys) return;

  const MODES = ["txt2img", "img2img"];
  const PROMPTS = ["prompt", "neg_prompt", "hr_prompt", "hr_neg_prompt"];
  const DEFAULTS = {
    keyedit_precision_attention: 0.1,
    keyedit_precision_extra: 0.05,
    keyedit_delimiters: ".,\\/!?%^*;:{}=`~() ",
    keyedit_delimiters_whitespace: ["Tab", "Carriage Return", "Line Feed"],
    keyedit_move: true,
  };
  const WHITESPACE = { "Tab": "\t", "Carriage Return": "\r", "Line Feed": "\n" };
  const NOTICE_KEY = "webui.model_notice.dismissed";
  const TITLE_PREFIX = /^\[\d+%\] /;

  function option(name) {
    const value = window.webuiPage?.keyedit?.[name];
    return value === undefined || value === null ? DEFAULTS[name] : value;
  }

  function step(name) {
    const value = Number(option(name));
    return Number.isFinite(value) && value > 0 ? value : DEFAULTS[name];
  }

  // -- which prompt box an event is in ------------------------------------------------------------------------

  function promptMode(target) {
    if (!(target instanceof HTMLTextAreaElement)) return null;
    for (const mode of MODES) {
      for (const name of PROMPTS) {
        if (target.closest(`#${mode}_${name}`)) return mode;
      }
    }
    return null;
  }

  function setText(textarea, text, start, end) {
    textarea.focus();
    textarea.value = text;
    textarea.setSelectionRange(start, end);
    textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }

  // -- attention weight: Ctrl+Up / Ctrl+Down --------------------------------------------------------------------

  // the text between `open` and `close` around the caret, when no other bracket of the kind lies between the
  // caret and them; "name:1.2" inside gives the range of "name" (up to the last colon)
  function blockAround(text, caret, open, close) {
    const left = text.lastIndexOf(open, caret - 1);
    if (left < 0 || text.lastIndexOf(close, caret - 1) > left) return null;
    const right = text.indexOf(close, caret);
    if (right < 0) return null;
    const nextOpen = text.indexOf(open, caret);
    if (nextOpen >= 0 && nextOpen < right) return null;
    const inner = text.slice(left + 1, right);
    const colon = inner.lastIndexOf(":");
    const weighted = colon >= 0 && /^\s*-?[\d.]+\s*$/.test(inner.slice(colon + 1));
    return [left + 1, weighted ? left + 1 + colon : right];
  }

  function wordAround(text, caret) {
    let delimiters = String(option("keyedit_delimiters"));
    const whitespace = option("keyedit_delimiters_whitespace");
    for (const name of Array.isArray(whitespace) ? whitespace : []) delimiters += WHITESPACE[name] ?? "";
    let start = caret;
    let end = caret;
    while (start > 0 && !delimiters.includes(text[start - 1])) start--;
    while (end < text.length && !delimiters.includes(text[end])) end++;
    while (start < end && text[start] === " ") start++;
    while (end > start && text[end - 1] === " ") end--;
    return [start, end];
  }

  function formatWeight(value) {
    const rounded = Number(value.toPrecision(12));
    return Number.isInteger(rounded) ? rounded.toFixed(1) : String(rounded);
  }

  // the new [text, selectionStart, selectionEnd], or null when there is nothing to change
  function reweigh(text, start, end, up) {
    if (start === end) {
      const found = blockAround(text, start, "<", ">") || blockAround(text, start, "(", ")")
        || blockAround(text, start, "[", "]") || wordAround(text, start);
      [start, end] = found;
    }
    const attention = step("keyedit_precision_attention");
    const before = start > 0 ? text[start - 1] : "";
    const after = text[end];
    let close = ")";
    let delta = attention;
    if (before === "<") { // an extra network, <lora:name:0.8>: its own step
      close = ">";
      delta = step("keyedit_precision_extra");
    } else if ((before === "(" && after === ")") || (before === "[" && after === "]")) {
      // old-style emphasis, ((word)) or [word]: written as (word:weight) with the weight it stood for
      let levels = 0;
      while (text[start - levels - 1] === before && text[end + levels] === after) levels++;
      const weight = Math.round((before === "(" ? 1.1 : 1 / 1.1) ** levels / attention) * attention;
      text = `${text.slice(0, start - levels)}(${text.slice(start, end)}:${formatWeight(weight)})${text.slice(end + levels)}`;
      start += 1 - levels;
      end += 1 - levels;
    } else if (before !== "(") { // plain text: (text:1.0) first, trailing spaces left out
      while (end > start && text[end - 1] === " ") end--;
      if (start === end) return null;
      text = `${text.slice(0, start)}(${text.slice(start, end)}:1.0)${text.slice(end)}`;
      start++;
      end++;
    }
    if (text[end] !== ":") return null;
    const closeAt = text.indexOf(close, end + 1);
    if (closeAt < 0) return null;
    let weight = parseFloat(text.slice(end + 1, closeAt));
    if (Number.isNaN(weight)) return null;
    weight = Number((weight + (up ? delta : -delta)).toPrecision(12));
    if (close === ")" && weight === 1) { // weight 1: the parentheses go
      return [text.slice(0, start - 1) + text.slice(start, end) + text.slice(closeAt + 1), start - 1, end - 1];
    }
    return [text.slice(0, end + 1) + formatWeight(weight) + text.slice(closeAt), start, end];
  }

  // -- moving prompt elements: Alt+Left / Alt+Right -------------------------------------------------------------

  // the comma-separated elements at the selection swap places with their neighbour; the spaces around each
  // element stay where they were, so "a, b, c" becomes "b, a, c"
  function move(text, start, end, left) {
    const parts = text.split(",").map((part) => {
      const core = part.trim();
      const lead = core ? part.indexOf(core) : part.length;
      return { lead: part.slice(0, lead), core, trail: part.slice(lead + core.length) };
    });
    const count = (s) => (s.match(/,/g) || []).length;
    const first = count(text.slice(0, start));
    const last = count(text.slice(0, end));
    if (left ? first === 0 : last >= parts.length - 1) return null;
    const cores = parts.map((p) => p.core);
    const moved = cores.splice(first, last - first + 1);
    const at = left ? first - 1 : first + 1;
    cores.splice(at, 0, ...moved);
    let out = "";
    let selStart = 0;
    let selEnd = 0;
    parts.forEach((p, i) => {
      if (i) out += ",";
      out += p.lead;
      if (i === at) selStart = out.length;
      out += cores[i];
      if (i === at + moved.length - 1) selEnd = out.length;
      out += p.trail;
    });
    return [out, selStart, selEnd];
  }

  // -- running generations: Esc, the title --------------------------------------------------------------------

  // Gradio's status tracker of the tab's output: shown (no "hide" class) while its event is queued or runs
  function tracker(mode) {
    return document.querySelector(`#${mode}_gallery [data-testid=status-tracker]`)
      || document.querySelector(`#${mode}_info [data-testid=status-tracker]`);
  }

  function running(mode) {
    const status = tracker(mode);
    return !!status && !status.classList.contains("hide");
  }

  const percent = {}; // mode -> the last percentage its progress showed during this run

  function updateTitle() {
    let shown = null;
    for (const mode of MODES) {
      if (!running(mode)) {
        delete percent[mode];
        continue;
      }
      const found = /(\d+(?:\.\d+)?)\s*%/.exec(tracker(mode).textContent || "");
      if (found) percent[mode] = Math.min(100, Math.floor(parseFloat(found[1])));
      if (percent[mode] !== undefined) shown = Math.max(shown ?? 0, percent[mode]);
    }
    const base = document.title.replace(TITLE_PREFIX, "");
    const title = shown === null ? base : `[${shown}%] ${base}`;
    if (title !== document.title) document.title = title;
  }

  // -- the default-model notice ----------------------------------------------------------------------------------

  function dismissed() {
    try {
      return window.localStorage.getItem(NOTICE_KEY) === "1";
    } catch {
      return false;
    }
  }

  function showNoticeState() {
    document.documentElement.classList.toggle("webui-model-notice-dismissed", dismissed());
    const notice = document.getElementById("model_notice");
    if (!notice || notice.querySelector(".webui-notice-dismiss")) return;
    if (!(notice.textContent || "").trim()) return;
    const button = document.createElement("button");
    button.type = "button";
    button.className = "webui-notice-dismiss";
    button.textContent = "\u00d7";
    const label = window.webuiPage?.translate ? window.webuiPage.translate("Dismiss") : "Dismiss";
    button.setAttribute("aria-label", label);
    button.setAttribute("title", label);
    button.addEventListener("click", () => {
      try {
        window.localStorage.setItem(NOTICE_KEY, "1");
      } catch { /* no storage: hidden for this page only */ }
      document.documentElement.classList.add("webui-model-notice-dismissed");
    });
    notice.appendChild(button);
  }

  // -- the keys ------------------------------------------------------------------------------------------------

  function onKey(event) {
    if (event.defaultPrevented || event.isComposing) return;
    const target = event.composedPath ? event.composedPath()[0] : event.target;
    if (event.key === "Escape") {
      for (const mode of MODES) {
        if (running(mode)) document.getElementById(`${mode}_interrupt`)?.click();
      }
      return;
    }
    const mode = promptMode(target);
    if (!mode) return;
    const ctrl = event.ctrlKey || event.metaKey;
    if (event.key === "Enter" && (ctrl || event.altKey) && !event.shiftKey) {
      event.preventDefault();
      document.getElementById(`${mode}_generate`)?.click();
      return;
    }
    if (ctrl && !event.altKey && (event.key === "ArrowUp" || event.key === "ArrowDown")) {
      event.preventDefault();
      const done = reweigh(target.value, target.selectionStart, target.selectionEnd, event.key === "ArrowUp");
      if (done) setText(target, ...done);
      return;
    }
    if (event.altKey && !ctrl && (event.key === "ArrowLeft" || event.key === "ArrowRight")) {
      if (!option("keyedit_move")) return;
      event.preventDefault();
      const done = move(target.value, target.selectionStart, target.selectionEnd, event.key === "ArrowLeft");
      if (done) setText(target, ...done);
    }
  }

  window.webuiKeys = { reweigh, move };
  if (dismissed()) document.documentElement.classList.add("webui-model-notice-dismissed"); // before it shows
  document.addEventListener("keydown", onKey, true);
  setInterval(() => {
    updateTitle();
    showNoticeState();
  }, 250);
})();
