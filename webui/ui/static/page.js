// The product's own page script (webui/ui/page.py serves its data):
//  * the chosen localization (A1111's format: {"English text": "translation"}) applied to every text a
//    person reads -- text, placeholders, tooltips, aria-labels, the shown value of dropdowns -- at load and
//    whenever Gradio renders more (a tab opened later, an accordion, an update from the server). Only what
//    is shown changes: the values the components send stay English. Text inside textareas, code, <pre> and
//    elements with the class "no-l10n" is never touched, nor is text without letters (numbers);
//  * the tooltip and accessible name of icon buttons (class "webui-icon"): their (translated) text;
//  * the colour theme chosen in Settings (unless the address says ?__theme=...);
//  * window.webuiPage.keyedit: A1111's prompt-editing options (keyedit_*), read by static/keys.js.
(() => {
  "use strict";
  if (window.webuiPage) return;

  const NO_TEXT = "textarea, pre, code, script, style, svg, [contenteditable=''], [contenteditable=true], .no-l10n";
  const ATTRIBUTES = ["placeholder", "title", "aria-label"];
  const strings = new Map();
  const written = new WeakMap(); // text node or input -> the text this script put there
  const writtenAttributes = new WeakMap(); // element -> {attribute: the text this script put there}
  const shownEnglish = new WeakMap(); // dropdown input -> the English text it showed before
  const page = { localization: "None", error: null, ready: false, keyedit: {},
                 translate: (text) => translation(text) ?? text };
  window.webuiPage = page;

  // Keys holding "{}" are templates (ours, for messages with names or numbers in them): each "{}" matches
  // any text, which goes into the translation's "{}" in the same order, untranslated.
  const templates = [];

  function addStrings(entries) {
    for (const [key, value] of entries) {
      if (typeof value !== "string") continue;
      strings.set(key, value);
      if (key.includes("{}") && /\p{L}/u.test(key.replaceAll("{}", ""))) {
        const escaped = key.split("{}").map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
        templates.push([new RegExp("^" + escaped.join("(.+?)") + "$", "s"), value]);
      }
    }
  }

  function translation(text) {
    if (!strings.size || typeof text !== "string") return null;
    const key = text.trim();
    if (!key || !/\p{L}/u.test(key)) return null;
    let found = strings.get(key);
    if (found === undefined) found = strings.get(key.replace(/\s+/g, " "));
    if (found !== undefined) return found;
    for (const [pattern, value] of templates) {
      const match = pattern.exec(key);
      if (match) {
        let i = 1;
        return value.replace(/\{\}/g, () => match[i++] ?? "");
      }
    }
    return null;
  }

  function keepSpaces(original, translated) {
    const lead = original.length - original.trimStart().length;
    return original.slice(0, lead) + translated + original.slice(original.trimEnd().length);
  }

  function translateText(node) {
    const text = node.nodeValue;
    if (written.get(node) === text) return;
    const parent = node.parentElement;
    if (!parent || parent.closest(NO_TEXT)) return;
    const found = translation(text);
    if (found === null) return;
    const out = keepSpaces(text, found);
    written.set(node, out);
    if (out !== text) node.nodeValue = out;
  }

  function translateAttribute(element, name) {
    const text = element.getAttribute(name);
    if (text === null) return;
    const mine = writtenAttributes.get(element) || {};
    if (mine[name] === text || element.closest(".no-l10n")) return;
    const found = translation(text);
    if (found === null) return;
    mine[name] = found;
    writtenAttributes.set(element, mine);
    if (found !== text) element.setAttribute(name, found);
  }

  function labelIconButton(button) {
    const label = (button.textContent || "").trim();
    if (!label) return;
    if (button.getAttribute("aria-label") !== label) button.setAttribute("aria-label", label);
    if (button.getAttribute("title") !== label) button.setAttribute("title", label);
  }

  // A dropdown shows its value in an <input>: show the translation while it is not being edited; Gradio
  // keeps the value it sends in its own state, and gets the English text back while the input has focus.
  function translateDropdown(input) {
    if (input === document.activeElement || input.closest(".no-l10n")) return;
    const text = input.value;
    if (written.get(input) === text) return;
    const found = translation(text);
    if (found === null) return;
    shownEnglish.set(input, text);
    written.set(input, found);
    input.value = found;
  }

  function translateDropdowns() {
    if (!strings.size) return;
    for (const input of document.querySelectorAll("input[role=combobox]")) translateDropdown(input);
  }

  // attributes are translated on every element met; text below NO_TEXT elements is left alone
  function enter(element) {
    for (const name of ATTRIBUTES) if (element.hasAttribute(name)) translateAttribute(element, name);
    return element.matches(NO_TEXT) ? NodeFilter.FILTER_REJECT : NodeFilter.FILTER_SKIP;
  }

  function visit(node) {
    if (!strings.size) return;
    if (node.nodeType === Node.TEXT_NODE) {
      translateText(node);
      return;
    }
    if (node.nodeType !== Node.ELEMENT_NODE || enter(node) === NodeFilter.FILTER_REJECT) return;
    const walker = document.createTreeWalker(node, NodeFilter.SHOW_ELEMENT | NodeFilter.SHOW_TEXT, {
      acceptNode: (n) => (n.nodeType === Node.TEXT_NODE ? NodeFilter.FILTER_ACCEPT : enter(n)),
    });
    for (let n = walker.nextNode(); n; n = walker.nextNode()) translateText(n);
  }

  function iconButtonOf(node) {
    const element = node.nodeType === Node.ELEMENT_NODE ? node : node.parentElement;
    return element ? element.closest("button.webui-icon") : null;
  }

  function onMutations(records) {
    const icons = new Set();
    for (const record of records) {
      if (record.type === "characterData") translateText(record.target);
      else if (record.type === "attributes") translateAttribute(record.target, record.attributeName);
      else record.addedNodes.forEach(visit);
      const button = iconButtonOf(record.target);
      if (button) icons.add(button);
      for (const node of record.addedNodes) {
        if (node.nodeType === Node.ELEMENT_NODE) node.querySelectorAll("button.webui-icon").forEach((b) => icons.add(b));
        const own = iconButtonOf(node);
        if (own) icons.add(own);
      }
    }
    icons.forEach(labelIconButton);
    translateDropdowns();
  }

  function translateTitle() {
    const title = translation(document.title);
    if (title !== null && title !== document.title) document.title = title;
  }

  function translatePage() {
    visit(document.body);
    translateTitle();
    document.querySelectorAll("button.webui-icon").forEach(labelIconButton);
    translateDropdowns();
  }

  document.addEventListener("focusin", (event) => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.getAttribute("role") === "combobox"
        && written.get(input) === input.value && shownEnglish.has(input)) {
      input.value = shownEnglish.get(input);
      written.delete(input);
    }
  }, true);
  document.addEventListener("focusout", (event) => {
    const input = event.target;
    if (input instanceof HTMLInputElement && input.getAttribute("role") === "combobox") {
      setTimeout(() => translateDropdown(input), 0);
    }
  }, true);

  function applyTheme(mode) {
    if (new URLSearchParams(window.location.search).has("__theme")) return; // the address wins
    if (mode !== "Dark" && mode !== "Light") return; // Auto: Gradio follows the browser
    const dark = mode === "Dark";
    const apply = () => document.body.classList.toggle("dark", dark);
    apply();
    // Gradio follows a change of the system's preference; the chosen theme stays
    window.matchMedia?.("(prefers-color-scheme: dark)")?.addEventListener?.("change", () => setTimeout(apply, 0));
  }

  function notice(text) {
    const box = document.createElement("div");
    box.id = "webui_page_notice";
    box.className = "no-l10n";
    box.setAttribute("role", "status");
    box.textContent = text;
    const close = document.createElement("button");
    close.type = "button";
    close.textContent = "\u00d7";
    close.setAttribute("aria-label", "Close");
    close.addEventListener("click", () => box.remove());
    box.appendChild(close);
    document.body.appendChild(box);
  }

  function start(data) {
    page.localization = data.localization || "None";
    page.error = data.error || null;
    page.keyedit = data.keyedit || {}; // A1111's prompt-editing options, for static/keys.js
    addStrings(Object.entries(data.strings || {}));
    window.localization = Object.fromEntries(strings); // A1111's global, for extensions that read it
    // the page's language, so the browser picks the right fonts (zh_CN -> zh-CN)
    if (strings.size && /^[a-z]{2,3}([_-][A-Za-z0-9]{2,8})?$/.test(page.localization)) {
      document.documentElement.lang = page.localization.replace("_", "-");
    }
    applyTheme(data.theme);
    if (page.error) {
      console.warn("Localization:", page.error);
      notice(page.error);
    }
    translatePage();
    new MutationObserver(onMutations).observe(document.body, {
      childList: true, subtree: true, characterData: true, attributes: true, attributeFilter: ATTRIBUTES,
    });
    new MutationObserver(translateTitle).observe(document.head, { childList: true, subtree: true, characterData: true });
    setInterval(translateDropdowns, 700); // values Gradio sets without changing the DOM's structure
    page.ready = true;
    document.documentElement.dataset.webuiLocalization = page.localization;
  }

  function whenBody(fn) {
    if (document.body) fn();
    else document.addEventListener("DOMContentLoaded", fn, { once: true });
  }

  const root = String((window.gradio_config && window.gradio_config.root) || ".").replace(/\/+$/, "");
  fetch(root + "/webui-page.json", { cache: "no-store", credentials: "same-origin" })
    .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`))))
    .catch((error) => ({ localization: "None", strings: {}, theme: "Auto", error: null, failed: String(error) }))
    .then((data) => whenBody(() => {
      if (data.failed) console.warn("The page settings could not be read:", data.failed);
      start(data);
    }));
})();
