"""List every string the UI shows, for translators (a template in A1111's localization format) and for the test
that checks the shipped localizations cover them (tests/test_localization.py).

Usage:
    .venv/bin/python tools/ui_strings.py                             # {"English": "English", ...} on stdout
    .venv/bin/python tools/ui_strings.py --missing localizations/zh_CN.json   # what that file lacks

Where the strings come from:

* the Gradio Blocks of a server with the built-in plugins and the example extensions: every component's
  label, info and placeholder, choices (except the data and identifiers listed in :func:`data_names`),
  button texts, Markdown, tab and accordion titles, and the text of HTML values (outside ``.no-l10n``,
  ``<pre>`` and ``<code>``). The Settings tab is part of it (its sections are accordions, its options'
  labels the controls' labels);
* the messages the UI's handlers show: the literal or f-string argument of ``gr.Error`` / ``gr.Warning`` /
  ``gr.Info`` and of ``progress(..., desc=...)`` in ``webui/ui/`` and the plugins' sections; an f-string
  becomes a template with ``{}`` for each value (the page's script translates such keys with the values
  put back unchanged);
* :func:`runtime_strings`: what the handlers put into the page otherwise (status lines, the default model's
  help text, the Extensions table's words, the Extra networks panel's).

Not listed (they stay as they are in every language): file and folder names, checkpoint titles and the other
names of things a user has (styles, LoRAs, embeddings, extensions, localizations), sampler names, ControlNet
preprocessor names, image file formats and optimizer names (identifiers that also appear in infotexts and
the API), and the text Gradio itself draws (its own translations follow the browser's language).
"""

from __future__ import annotations

import ast
import html.parser
import json
import re
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
#: the source files whose handlers' messages are listed
MESSAGE_SOURCES = ("webui/ui/*.py", "webui/controlnet/section.py", "webui/scripts_builtin/*.py", "extensions/*/*.py")
_LETTER = re.compile(r"[^\W\d_]")


def _add(out: dict[str, str], text: Any, where: str) -> None:
    if isinstance(text, str) and _LETTER.search(text):
        out.setdefault(text.strip(), where)


class _TextOf(html.parser.HTMLParser):
    """The text nodes of an HTML fragment that the page's script translates (not below .no-l10n/pre/code)."""

    SKIP = {"pre", "code", "script", "style", "textarea"}
    VOID = {"br", "img", "hr", "input", "meta", "link", "wbr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[bool] = []
        self.texts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.VOID:
            return
        classes = (dict(attrs).get("class") or "").split()
        self.stack.append(tag in self.SKIP or "no-l10n" in classes or (bool(self.stack) and self.stack[-1]))

    def handle_endtag(self, tag: str) -> None:
        if tag not in self.VOID and self.stack:
            self.stack.pop()

    def handle_data(self, data: str) -> None:
        if not (self.stack and self.stack[-1]) and data.strip():
            self.texts.append(data.strip())


def html_texts(fragment: str) -> list[str]:
    parser = _TextOf()
    parser.feed(fragment)
    return parser.texts


def data_names(ctx: Any) -> set[str]:
    """Choices that are data or identifiers, shown as they are in every language (see the module docstring)."""
    from webui.models.vae_files import list_vae_files
    from webui.settings import IMAGE_FORMATS

    names: set[str] = set(ctx.samplers.samplers) | set(IMAGE_FORMATS)
    names |= {ctx.models.title(i) for i in ctx.models.checkpoints()}
    names |= {f.name for f in list_vae_files(ctx.settings.vae_dirs())}
    names |= {f.model_name for f in ctx.models.module_choice_files()}
    names |= set(ctx.styles.names()) | set(ctx.loras.names()) | set(ctx.embeddings.loaded)
    names |= {r.name for r in ctx.plugins.reports} | set(ctx.localizations.names())
    names |= {u for u in ctx.upscalers.names() if u not in ("None", "Lanczos", "Nearest")}
    names |= set(ctx.face_restorers.names())
    try:
        from webui.finetune.dataset import list_templates
        from webui.finetune.optimizers import OPTIMIZERS

        names |= set(list_templates((ctx.settings.data_dir / "textual_inversion_templates",))) | set(OPTIMIZERS)
    except ImportError:  # pragma: no cover - training not installed
        pass
    for report in ctx.plugins.reports:  # ControlNet's preprocessor names (sd-webui-controlnet's identifiers)
        plugin = ctx.plugins.pm.get_plugin(report.name)
        preprocessors = getattr(plugin, "preprocessors", None)
        if preprocessors is not None:
            names |= set(preprocessors.names())
        models = getattr(plugin, "models", None)
        if models is not None and hasattr(models, "titles"):
            names |= set(models.titles())
    return names


def component_strings(ctx: Any, demo: Any) -> dict[str, str]:
    """The strings of the Blocks' components (see the module docstring)."""
    import gradio as gr

    skip = data_names(ctx)
    out: dict[str, str] = {}
    for block in demo.blocks.values():
        kind = type(block).__name__
        where = f"{kind} {getattr(block, 'elem_id', None) or ''}".strip()
        if isinstance(block, gr.LinePlot) or kind == "Api":  # chart text; gr.api's endpoints (never shown)
            continue
        for attr in ("label", "info", "placeholder"):
            _add(out, getattr(block, attr, None), f"{where} {attr}")
        for choice in getattr(block, "choices", None) or ():
            shown = choice[0] if isinstance(choice, (list, tuple)) else choice
            if str(shown) not in skip:
                _add(out, str(shown), f"{where} choice")
        if isinstance(block, (gr.Button, gr.Markdown)):
            _add(out, block.value, where)
        if isinstance(block, gr.HTML) and isinstance(block.value, str):
            for text in html_texts(block.value):
                _add(out, text, f"{where} text")
    return out


def _template(node: ast.AST) -> str | None:
    """A string literal's text, or an f-string as a template with ``{}`` for each value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("{}")
        text = "".join(parts)
        return text if _LETTER.search(re.sub(r"\{\}", "", text)) else None
    return None


def message_strings(root: Path = ROOT) -> dict[str, str]:
    """The handlers' messages (see the module docstring)."""
    out: dict[str, str] = {}
    for pattern in MESSAGE_SOURCES:
        for path in sorted(root.glob(pattern)):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            where = str(path.relative_to(root))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name in ("Error", "Warning", "Info") and node.args:
                    _add(out, _template(node.args[0]), f"{where}:{node.lineno} {name}")
                for keyword in node.keywords:
                    if keyword.arg == "desc":
                        _add(out, _template(keyword.value), f"{where}:{node.lineno} progress")
    return out


def runtime_strings() -> dict[str, str]:
    """What the handlers put into the page besides their errors."""
    from webui.models.default import EXAMPLE_PROMPT, HOW_TO_ADD
    from webui.ui.app import LOADING_LABEL
    from webui.ui.extensions_tab import MESSAGES, STATUS_WORDS
    from webui.ui.networks_panel import PANEL_STRINGS
    from webui.ui.page import DISMISS_LABEL, SKIPPED_HEADING
    from webui.ui.settings_tab import NOTHING_CHANGED, SETTINGS_CHANGED, SHOWING_SAVED

    texts = [LOADING_LABEL, HOW_TO_ADD, f"Prompt, e.g. {EXAMPLE_PROMPT}", SHOWING_SAVED, NOTHING_CHANGED,
             SETTINGS_CHANGED, SKIPPED_HEADING, DISMISS_LABEL, "Waiting in queue", "Preparing",
             "Waiting for the queue…", "Stable Diffusion web UI", *STATUS_WORDS, *MESSAGES, *PANEL_STRINGS]
    return {t: "runtime" for t in texts}


def ui_strings(ctx: Any, demo: Any) -> dict[str, str]:
    """Every string of the UI -> where it was found first."""
    out = component_strings(ctx, demo)
    for more in (message_strings(), runtime_strings()):
        for text, where in more.items():
            out.setdefault(text, where)
    return out


def build(tmp: Path) -> tuple[Any, Any]:
    """A context (built-in plugins, the example extensions, no checkpoint loaded) and its Blocks."""
    sys.path.insert(0, str(ROOT))
    from webui.context import build_context
    from webui.plugins import make_plugin_manager
    from webui.settings import Settings
    from webui.ui.app import build_ui

    plugins = make_plugin_manager(extensions_dir=ROOT / "extensions", load_entrypoints=False)
    ctx = build_context(Settings(data_dir=tmp, use_cpu=True), plugins=plugins)
    return ctx, build_ui(ctx)


def main(argv: list[str]) -> int:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        ctx, demo = build(Path(tmp))
        strings = ui_strings(ctx, demo)
    if argv[:1] == ["--missing"] and len(argv) == 2:
        have = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
        strings = {k: v for k, v in strings.items() if k not in have}
        print(json.dumps(strings, ensure_ascii=False, indent=1, sort_keys=True))
        return 1 if strings else 0
    print(json.dumps({k: k for k in sorted(strings)}, ensure_ascii=False, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
