"""AUTOMATIC1111's prompt parsing, restated from its source as an oracle for ``webui/prompts/parser.py``.

Source: AUTOMATIC1111/stable-diffusion-webui, ``modules/prompt_parser.py`` (commit 28bd8e142d5f, the
1.10 line): the grammar A1111 hands to lark's Earley parser for prompt editing and alternation, the
step rules of ``get_learned_conditioning_prompt_schedules`` (including the hires-pass offsets and
``use_old_scheduling``), the emphasis tokenizer and weight arithmetic of ``parse_prompt_attention``
and the ``AND`` / ``:weight`` split of ``get_multicond_prompt_list``. The rules are re-implemented
here (same grammar, driven by the real ``lark`` package with A1111's parser options; our own tree
walk and tokenizer loop); nothing here imports the product. The product's parser is hand-written
and does not use lark, so agreement is evidence, not a tautology.

Where A1111 itself raises (``float(".")`` for the weight in ``(a:.)``, ``int(inf)`` for
``[a:b:1e999]``), the oracle raises the same exception: the tests treat those inputs as deliberate
deviations of the product (listed in tests/test_prompt_parser.py) and check our answer separately.
"""

from __future__ import annotations

import re

import lark

# --- prompt editing and alternation ------------------------------------------------------------------
#
# The grammar, rule by rule as in A1111 (rule names matter: the walk below keys on them; the order of
# the alternatives is kept because Earley's ambiguity resolution follows it):
#   start      -- prompts, or runs of stray brackets / colons, in any order ("!": keep the punctuation)
#   prompt     -- any mix of emphasis, editing, alternation, plain text and whitespace
#   emphasized -- (x), (x:y) or [x]: kept verbatim by the schedule (emphasis is parsed later)
#   scheduled  -- [before:after:N] or [after:N]; optional whitespace around the number
#   alternate  -- [a|b|...], options may be empty
#   plain      -- characters other than backslash, brackets, parentheses, ":" and "|", or a backslash
#                 escaping any one character (but a newline, as "." does not match it)
_GRAMMAR = r"""
!start: (prompt | /[][():]/+)*
prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
!emphasized: "(" prompt ")"
        | "(" prompt ":" prompt ")"
        | "[" prompt "]"
scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
alternate: "[" prompt ("|" [prompt])+ "]"
WHITESPACE: /\s+/
plain: /([^\\\[\]():|]|\\.)+/
%import common.SIGNED_NUMBER -> NUMBER
"""

_PARSER = lark.Lark(_GRAMMAR)  # A1111's options: the defaults (Earley, dynamic lexer, ambiguity="resolve")


def _end_step(number: str, steps: int, int_offset: int, flt_offset: float, old: bool) -> int:
    """The last step of the "before" text of ``[before:after:number]`` (A1111's CollectSteps.scheduled)."""
    value = float(number)
    if old:  # before 1.6: below 1 a fraction of the steps, else a step
        value = value * steps if value < 1 else value
    elif "." in number:  # a fraction; in the hires pass 1.0 is where it starts
        value = (value - flt_offset) * steps
    else:  # a step; in the hires pass counted on from the first pass's steps
        value = value - int_offset
    return min(steps, int(value))  # int() of inf / nan raises, as in A1111


def _subtrees(tree: lark.Tree):
    seen = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, lark.Tree) and id(node) not in seen:
            seen.add(id(node))
            yield node
            stack.extend(node.children)


def _text_at(node, step: int, ends: dict[int, int]) -> str:
    """The text of ``node`` at ``step`` (A1111's AtStep transformer)."""
    if node is None:  # an absent optional part ([after:N]'s before, an empty alternative)
        return ""
    if isinstance(node, lark.Token):
        return str(node)
    if node.data == "scheduled":
        before, after = node.children[0], node.children[1]
        return _text_at(before if step <= ends[id(node)] else after, step, ends)
    if node.data == "alternate":
        options = node.children
        return _text_at(options[(step - 1) % len(options)], step, ends)
    return "".join(_text_at(child, step, ends) for child in node.children)


def prompt_schedule(prompt: str, base_steps: int, hires_steps: int | None = None,
                    use_old_scheduling: bool = False) -> list[list]:
    """``[[end_step, text], ...]`` for one prompt, as A1111's ``get_learned_conditioning_prompt_schedules``."""
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps
    try:
        tree = _PARSER.parse(prompt)
    except lark.exceptions.LarkError:  # not A1111 syntax: the prompt as it is, for every step
        return [[steps, prompt]]
    boundaries = {steps}
    ends: dict[int, int] = {}
    for node in _subtrees(tree):
        if node.data == "scheduled":
            end = _end_step(str(node.children[-2]), steps, int_offset, flt_offset, use_old_scheduling)
            ends[id(node)] = end
            if end >= 1:
                boundaries.add(end)
        elif node.data == "alternate":
            boundaries.update(range(1, steps + 1))
    return [[step, _text_at(tree, step, ends)] for step in sorted(boundaries)]


def prompt_schedules(prompts: list[str], base_steps: int, hires_steps: int | None = None,
                     use_old_scheduling: bool = False) -> list[list[list]]:
    return [prompt_schedule(p, base_steps, hires_steps, use_old_scheduling) for p in prompts]


# --- emphasis -------------------------------------------------------------------------------------------

# A1111's tokens, tried in this order at each position (re_attention): the five escapes, a lone backslash,
# the two openers, ":" weight ")" (the weight: signs, digits and dots, any mix), the two closers, a run of
# text without backslashes, brackets or colons, a lone colon.
_TOKENS = [
    r"\\[()\[\]\\]",
    r"\\",
    r"[(\[]",
    r":\s*(?P<weight>[+-]?[.\d]+)\s*\)",
    r"[)\]]",
    r"[^\\()\[\]:]+",
    r":",
]
_TOKEN = re.compile("|".join(_TOKENS))
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_UP, _DOWN = 1.1, 1 / 1.1


def attention(text: str) -> list[list]:
    """``[[piece, weight], ...]`` as A1111's ``parse_prompt_attention`` (raises where it raises)."""
    pieces: list[list] = []
    opened: dict[str, list[int]] = {"(": [], "[": []}

    def scale(since: int, factor: float) -> None:
        for piece in pieces[since:]:
            piece[1] *= factor

    for m in _TOKEN.finditer(text):
        token, weight = m.group(0), m.group("weight")
        if token[0] == "\\":
            pieces.append([token[1:], 1.0])
        elif token in opened:
            opened[token].append(len(pieces))
        elif weight is not None and opened["("]:
            scale(opened["("].pop(), float(weight))
        elif token == ")" and opened["("]:
            scale(opened["("].pop(), _UP)
        elif token == "]" and opened["["]:
            scale(opened["["].pop(), _DOWN)
        else:  # text (stray closers and colons included), split at BREAK
            for k, part in enumerate(_BREAK.split(token)):
                if k:
                    pieces.append(["BREAK", -1])
                pieces.append([part, 1.0])
    for since in opened["("]:  # unclosed brackets reach to the end
        scale(since, _UP)
    for since in opened["["]:
        scale(since, _DOWN)
    if not pieces:
        return [["", 1.0]]
    merged = [pieces[0]]
    for piece in pieces[1:]:
        if piece[1] == merged[-1][1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged


# --- composable prompts ---------------------------------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_PART_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def multicond(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """As A1111's ``get_multicond_prompt_list``: per prompt ``[(index, weight), ...]``, the distinct part
    texts, and text -> index."""
    flat: list[str] = []
    index: dict[str, int] = {}
    out = []
    for prompt in prompts:
        parts = []
        for sub in _AND.split(prompt):
            m = _PART_WEIGHT.search(sub)
            text, weight = (m.group(1), m.group(2)) if m else (sub, None)
            if text not in index:
                index[text] = len(flat)
                flat.append(text)
            parts.append((index[text], 1.0 if weight is None else float(weight)))
        out.append(parts)
    return out, flat, index
