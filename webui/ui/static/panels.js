// The page's panels (webui/ui/networks_panel.py, webui/ui/settings_tab.py, the output galleries):
//  * Extra networks cards: a click inserts the card's text (<lora:name:1>, an embedding's name) at the caret of
//    the tab's prompt box last used (the prompt, or the negative prompt), with a space on either side where
//    the neighbouring text needs one; the caret ends after it and Gradio gets an "input" event;
//  * the Settings search box: settings whose label, help line, key or section hold every word typed stay
//    shown (sections without one are hidden, those with one are opened); an empty box shows all again. The
//    English words come from the index the tab writes (#settings_index), the shown (translated) ones from
//    the page;
//  * output galleries: in a gallery's preview (Gradio's, opened by clicking a picture) a click on the large
//    picture shows it full screen (Gradio's Fullscreen button); ArrowLeft / ArrowRight move to the previous /
//    next picture wherever the focus is (outside text fields; Gradio's own keys need it inside the gallery).
(() => {
  "use strict";
  if (window.webuiPanels) return;

  // -- Extra networks cards ------------------------------------------------------------------------------------

  const lastPrompt = {}; // mode -> the prompt textarea used last

  document.addEventListener("focusin", (event) => {
    const target = event.target;
    if (!(target instanceof HTMLTextAreaElement)) return;
    const box = target.closest("[id$='_prompt'], [id$='_neg_prompt']");
    const found = box && /^(txt2img|img2img)_(prompt|neg_prompt)$/.exec(box.id);
    if (found) lastPrompt[found[1]] = target;
  }, true);

  function promptOf(mode) {
    const last = lastPrompt[mode];
    if (last && last.isConnected) return last;
    return document.querySelector(`#${mode}_prompt textarea`);
  }

  // ``text`` at the selection of ``textarea`` (it replaces a selected text), with a space where a word touches it
  function insertAtCaret(textarea, text) {
    const value = textarea.value;
    const start = Math.min(textarea.selectionStart ?? value.length, value.length);
    const end = Math.max(start, Math.min(textarea.selectionEnd ?? start, value.length));
    const before = value.slice(0, start);
    const after = value.slice(end);
    const head = before && !/[\s([<]$/.test(before) ? " " : "";
    const tail = after && !/^[\s,.;:)\]>]/.test(after) ? " " : "";
    const caret = before.length + head.length + text.length;
    textarea.focus();
    textarea.value = before + head + text + tail + after;
    textarea.setSelectionRange(caret, caret);
    textarea.dispatchEvent(new Event("input", { bubbles: true }));
  }

  document.addEventListener("click", (event) => {
    const card = event.target instanceof Element ? event.target.closest(".webui-network-card") : null;
    if (!card) return;
    const panel = card.closest(".webui-networks");
    const textarea = panel ? promptOf(panel.dataset.mode) : null;
    if (!textarea) return;
    event.preventDefault();
    insertAtCaret(textarea, card.dataset.insert || "");
  });

  // -- the Settings search -------------------------------------------------------------------------------------

  let settingsIndex = null;

  function readIndex() {
    if (settingsIndex) return settingsIndex;
    const holder = document.querySelector("#settings_index [data-settings-index]");
    if (!holder) return null;
    try {
      settingsIndex = JSON.parse(holder.dataset.settingsIndex);
    } catch {
      settingsIndex = null;
    }
    return settingsIndex;
  }

  function searchStyle() {
    let style = document.getElementById("webui_settings_search_style");
    if (!style) {
      style = document.createElement("style");
      style.id = "webui_settings_search_style";
      document.head.appendChild(style);
    }
    return style;
  }

  // the shown (maybe translated) label and help of a setting, or the title of a section
  function shownText(id, title) {
    const element = document.getElementById(id);
    const part = element && title ? element.querySelector("button.label-wrap") : element;
    return part ? part.innerText || "" : "";
  }

  function sectionOpen(section) {
    const content = section.querySelector("[data-testid=accordion-content]");
    return !!content && content.style.display !== "none";
  }

  function filterSettings(query) {
    const index = readIndex();
    const style = searchStyle();
    const words = query.toLowerCase().split(/\s+/).filter(Boolean);
    if (!index || !words.length) {
      style.textContent = "";
      document.documentElement.dataset.webuiSettingsMatches = "";
      return;
    }
    const hidden = [];
    const sections = new Map(); // section element id -> whether a setting in it matched
    let matches = 0;
    for (const entry of index) {
      const text = [entry.label, entry.help, entry.key, entry.section, shownText(entry.id),
                    shownText(entry.section_id, true)].join(" ").toLowerCase();
      const match = words.every((word) => text.includes(word));
      if (match) matches++;
      sections.set(entry.section_id, (sections.get(entry.section_id) || false) || match);
      if (!match) hidden.push(`#${entry.id}`, `#${entry.id}_refresh`, `#${entry.id}_notes`);
    }
    for (const [id, found] of sections) {
      if (!found) {
        hidden.push(`#${id}`);
        continue;
      }
      const section = document.getElementById(id);
      if (section && !sectionOpen(section)) section.querySelector("button.label-wrap")?.click();
    }
    style.textContent = hidden.length ? `${hidden.join(",\n")} { display: none !important; }` : "";
    document.documentElement.dataset.webuiSettingsMatches = String(matches);
  }

  document.addEventListener("input", (event) => {
    const target = event.target;
    if (target instanceof HTMLElement && target.closest("#settings_search")) filterSettings(target.value || "");
  });

  // -- output galleries ----------------------------------------------------------------------------------------

  function fullscreenButton(gallery) {
    return gallery.querySelector("button[aria-label='Fullscreen']");
  }

  // the galleries whose preview is open and shown (a hidden tab's is not)
  function openPreviews() {
    return [...document.querySelectorAll(".gallery-container > .preview")].map((preview) => preview.closest(".block"))
      .filter((block) => block && (block.classList.contains("fullscreen") || block.offsetParent !== null));
  }

  document.addEventListener("click", (event) => {
    const picture = event.target instanceof Element ? event.target.closest(".gallery-container .media-button") : null;
    const gallery = picture ? picture.closest(".block") : null;
    if (!gallery || gallery.classList.contains("fullscreen")) return;
    const button = fullscreenButton(gallery);
    if (!button) return;
    event.preventDefault();
    event.stopPropagation();
    button.click();
  }, true);

  function editable(target) {
    return target instanceof HTMLElement && (target.isContentEditable || target.matches("input, textarea, select"));
  }

  document.addEventListener("keydown", (event) => {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || editable(event.target)) return;
    const galleries = openPreviews();
    const gallery = galleries.find((g) => g.classList.contains("fullscreen")) || galleries[0];
    if (!gallery) return;
    if (event.key !== "ArrowLeft" && event.key !== "ArrowRight") return;
    const thumbnails = [...gallery.querySelectorAll(".thumbnails .thumbnail-item")];
    if (thumbnails.length < 2) return;
    const at = Math.max(0, thumbnails.findIndex((t) => t.classList.contains("selected")));
    const next = (at + (event.key === "ArrowRight" ? 1 : thumbnails.length - 1)) % thumbnails.length;
    event.preventDefault();
    thumbnails[next].click();
  });

  window.webuiPanels = { insertAtCaret, filterSettings };
})();
