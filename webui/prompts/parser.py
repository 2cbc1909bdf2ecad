"""Prompt syntax with AUTOMATIC1111's semantics and output shapes.

* :func:`parse_prompt_attention` -- emphasis: ``(a)`` x1.1, ``[a]`` /1.1, ``(a:1.5)``, escapes,
  ``BREAK``. Returns ``[[text, weight], ...]``.
* :func:`get_learned_conditioning_prompt_schedules` -- prompt editing ``[from:to:when]``,
  ``[to:when]``, ``[from::when]`` and alternation ``[a|b]``. Returns ``[[end_step, text], ...]``
  per prompt.
* :func:`get_multicond_prompt_list` -- composable prompts (``AND`` with optional ``:weight``).
* :func:`parse_extra_networks` -- ``<kind:arg1:arg2>`` tags such as ``<lora:name:0.8>``.

The schedule grammar is the one A1111 hands to an Earley parser::

    start:       (prompt | stray "[", "]", "(", ")" or ":")*
    prompt:      (emphasized | scheduled | alternate | plain | WHITESPACE)*
    emphasized:  "(" prompt ")" | "(" prompt ":" prompt ")" | "[" prompt "]"
    scheduled:   "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate:   "[" prompt ("|" [prompt])+ "]"
    plain:       ([^\\[]():|] | \\ followed by any character but a newline)+

Inside a bracket every nested bracket must itself be well formed, and there the grammar is
deterministic: which construct a ``[`` opens, and where it ends, follows from the text after
it. Only the top level is ambiguous (any bracket or colon there may also be a stray
character). The parser below uses every top-level construct that can be formed, as A1111 does
for ordinary prompts. Known difference: A1111's Earley parser settles the ambiguity by its
internal item order, and reads a construct directly followed by some runs of stray brackets or
colons as plain text (``[a:b:3]]]`` or ``([a:b:3]))`` stay unscheduled there, ``[a:b:3]]``
does not); here such constructs are scheduled too. A ``|`` outside any alternation, or a
backslash at the end of the text or before a newline, makes the whole prompt unparseable; it
is then used verbatim for every step.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Union

__all__ = [
    "ExtraNetworkTag",
    "get_learned_conditioning_prompt_schedules",
    "get_multicond_prompt_list",
    "parse_extra_networks",
    "parse_prompt_attention",
]

# --------------------------------------------------------------------------- emphasis

_RE_ATTENTION = re.compile(
    r"""
    \\\(|
    \\\)|
    \\\[|
    \\]|
    \\\\|
    \\|
    \(|
    \[|
    :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)|
    \)|
    ]|
    [^\\()\[\]:]+|
    :
    """,
    re.X,
)
# A1111's weight pattern is ``[+-]?[.\d]+``; digit/dot runs that float() rejects ("." or
# "1.2.3") made it raise. Such a run now fails the weight alternative, so ``(a:.)`` reads as
# the text "a:." inside an ordinary round bracket. Every valid weight tokenizes as before.

_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)

_ROUND_MULTIPLIER = 1.1
_SQUARE_MULTIPLIER = 1 / 1.1


def parse_prompt_attention(text: str) -> list[list]:
    """Split ``text`` into ``[[piece, weight], ...]`` following A1111's emphasis rules.

    ``(a)`` multiplies by 1.1, ``[a]`` divides by 1.1, ``(a:w)`` multiplies by ``w``; nesting
    multiplies. ``\\(``, ``\\)``, ``\\[``, ``\\]`` and ``\\\\`` are literal characters. An unclosed
    bracket applies to the rest of the text, a stray closer is plain text. ``BREAK`` becomes
    ``["BREAK", -1]``. Neighbours with equal weights are merged; empty input gives
    ``[["", 1.0]]``.

    >>> parse_prompt_attention("an (important) word")
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if token.startswith("\\"):
            res.append([token[1:], 1.0])
        elif token == "(":
            round_brackets.append(len(res))
        elif token == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), _ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), _SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append(["BREAK", -1])
                res.append([part, 1.0])

    for pos in round_brackets:
        multiply_range(pos, _ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, _SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0]]

    merged: list[list] = [res[0]]
    for entry in res[1:]:
        if entry[1] == merged[-1][1]:
            merged[-1][0] += entry[0]
        else:
            merged.append(entry)
    return merged


# --------------------------------------------------------------------------- prompt editing


@dataclass(frozen=True)
class _Scheduled:
    """``[before:after:when]``; ``before`` is None for ``[after:when]``."""

    before: tuple | None
    after: tuple
    when: str


@dataclass(frozen=True)
class _Alternate:
    """``[a|b|...]``; an empty option is an empty tuple."""

    options: tuple


# A node is a piece of text, a sequence (tuple) of nodes, or one of the two classes above.
_Node = Union[str, tuple, _Scheduled, _Alternate]

# lark's ``common.SIGNED_NUMBER``, matched the way lark's dynamic lexer matches a terminal.
_RE_NUMBER = re.compile(
    r"[+-]?(?:(?:[0-9]+[eE][+-]?[0-9]+|(?:[0-9]+\.(?:[0-9]+)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)|[0-9]+)"
)
_RE_WHITESPACE = re.compile(r"\s*")
_RE_CLOSE = re.compile(r"\s*\]")
_RE_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_STRAY = frozenset("[]():")

# frame kinds of the nested parser
_ROUND, _ROUND2, _SQUARE, _ALT, _SCHED2 = range(5)


def _escapes_ok(text: str) -> bool:
    """Whether every backslash escapes a following character other than a newline."""
    i, n = 0, len(text)
    while True:
        i = text.find("\\", i)
        if i < 0:
            return True
        if i + 1 >= n or text[i + 1] == "\n":
            return False
        i += 2


def _schedule_tail(text: str, pos: int) -> tuple[str, int] | None:
    """Match ``[WHITESPACE] NUMBER [WHITESPACE] "]"`` at ``pos``: (number, end) or None."""
    pos = _RE_WHITESPACE.match(text, pos).end()
    number = _RE_NUMBER.match(text, pos)
    if number is None:
        return None
    close = _RE_CLOSE.match(text, number.end())
    if close is None:
        return None
    return number.group(0), close.end()


def _parse_bracket(text: str, start: int, memo: dict[int, tuple[_Node, int] | None]) -> tuple[_Node, int] | None:
    """Parse the construct opened by ``text[start] == "["`` with the nested (strict) grammar.

    Returns ``(node, end)`` or None when it is not well formed. Results are memoized per
    opening position: the nested grammar is deterministic, so a ``[`` inside a failed construct
    fails on its own too, and a successful one is the same construct wherever it is reached.
    """
    if start in memo:
        return memo[start]
    n = len(text)
    # frame: [kind, start, finished parts, items of the part being read]
    stack: list[list] = [[_SQUARE, start, [], []]]
    i = start + 1
    while True:
        if i >= n:
            break
        c = text[i]
        frame = stack[-1]
        kind, items = frame[0], frame[3]
        node: _Node | None = None
        if c == "[":  # (never memoized yet: every "[" a parse visits is memoized when it ends, and a parse only
            # starts to the right of the positions earlier parses visited -- so no lookup here)
            stack.append([_SQUARE, i, [], []])
            i += 1
            continue
        if c == "(":
            stack.append([_ROUND, i, [], []])
            i += 1
            continue
        if c == ")":
            if kind == _ROUND:
                node = ("(", tuple(items), ")")
            elif kind == _ROUND2:
                node = ("(", tuple(frame[2][0]), ":", tuple(items), ")")
            else:
                break
            i += 1
        elif c == ":":
            if kind == _ROUND:
                frame[0] = _ROUND2
                frame[2].append(items)
                frame[3] = []
                i += 1
                continue
            if kind not in (_SQUARE, _SCHED2):
                break
            tail = _schedule_tail(text, i + 1)
            if tail is not None:
                before = None if kind == _SQUARE else tuple(frame[2][0])
                node = _Scheduled(before, tuple(items), tail[0])
                i = tail[1]
            elif kind == _SQUARE:
                frame[0] = _SCHED2
                frame[2].append(items)
                frame[3] = []
                i += 1
                continue
            else:
                break
        elif c == "|":
            if kind not in (_SQUARE, _ALT):
                break
            frame[0] = _ALT
            frame[2].append(items)
            frame[3] = []
            i += 1
            continue
        elif c == "]":
            if kind == _SQUARE:
                node = ("[", tuple(items), "]")
            elif kind == _ALT:
                node = _Alternate(tuple(tuple(p) for p in frame[2]) + (tuple(items),))
            else:
                break
            i += 1
        else:
            m = _RE_PLAIN.match(text, i)
            if m is None:  # a backslash that escapes nothing
                break
            items.append(m.group(0))
            i = m.end()
            continue

        stack.pop()
        if frame[0] not in (_ROUND, _ROUND2):
            memo[frame[1]] = (node, i)
        if not stack:
            return node, i
        stack[-1][3].append(node)

    for frame in stack:
        if frame[0] not in (_ROUND, _ROUND2):
            memo[frame[1]] = None
    return None


def _parse_schedule_tree(text: str) -> tuple | None:
    """Parse a whole prompt; None when A1111's grammar rejects it."""
    if not _escapes_ok(text):
        return None
    memo: dict[int, tuple[_Node, int] | None] = {}
    items: list[_Node] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "[":
            done = _parse_bracket(text, i, memo)
            if done is not None:
                items.append(done[0])
                i = done[1]
                continue
        if c in _STRAY:
            # a round bracket at the top level reads the same as text whether or not it is
            # a well-formed emphasis; what is inside is parsed the same way in either case.
            items.append(c)
            i += 1
        elif c == "|":
            return None
        else:
            m = _RE_PLAIN.match(text, i)
            items.append(m.group(0))
            i = m.end()
    return tuple(items)


def _when_to_step(when: str, steps: int, int_offset: int, flt_offset: float, use_old_scheduling: bool) -> int:
    """The last step of the ``before`` text, clamped to ``steps`` (A1111's rule)."""
    v = float(when)
    if use_old_scheduling:
        v = v * steps if v < 1 else v
    elif "." in when:
        v = (v - flt_offset) * steps
    else:
        v = v - int_offset
    if math.isnan(v):
        return 0
    if math.isinf(v):
        return steps if v > 0 else min(steps, -1)
    return min(steps, int(v))


def _iter_nodes(tree: tuple):
    stack: list[_Node] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, tuple):
            stack.extend(node)
        elif isinstance(node, _Scheduled):
            yield node
            stack.append(node.after)
            if node.before is not None:
                stack.append(node.before)
        elif isinstance(node, _Alternate):
            yield node
            stack.extend(node.options)


def _render(tree: tuple, step: int, when_of) -> str:
    out: list[str] = []
    stack: list[_Node] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, tuple):
            stack.extend(reversed(node))
        elif isinstance(node, _Scheduled):
            stack.append((node.before or ()) if step <= when_of(node.when) else node.after)
        else:
            stack.append(node.options[(step - 1) % len(node.options)])
    return "".join(out)


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list]]:
    """For each prompt, ``[[end_step, text], ...]``: ``text`` is used while ``step <= end_step``.

    ``when`` in ``[a:b:when]``: a number with a decimal point is a fraction of the steps, an
    integer is a step. For the hires pass (``hires_steps`` given) the steps are the hires
    steps, integers count from the end of the first pass (``base_steps + k``) and fractions
    from 1.0 (``1.5`` is half the hires pass). ``use_old_scheduling``: values below 1 are
    fractions, others steps, always over ``base_steps``. Alternation ``[a|b]`` switches every
    step. An entry is made at every step where some construct may change, plus the last step;
    entries are not merged even when their texts are equal (as in A1111).

    >>> get_learned_conditioning_prompt_schedules(["a [b:3]"], 10)
    [[[3, 'a '], [10, 'a b']]]
    """
    if hires_steps is None or use_old_scheduling:
        int_offset, flt_offset, steps = 0, 0.0, base_steps
    else:
        int_offset, flt_offset, steps = base_steps, 1.0, hires_steps

    when_cache: dict[str, int] = {}

    def when_of(raw: str) -> int:
        if raw not in when_cache:
            when_cache[raw] = _when_to_step(raw, steps, int_offset, flt_offset, use_old_scheduling)
        return when_cache[raw]

    def schedule(prompt: str) -> list[list]:
        tree = _parse_schedule_tree(prompt)
        if tree is None:
            return [[steps, prompt]]
        boundaries = {steps}
        for node in _iter_nodes(tree):
            if isinstance(node, _Scheduled):
                w = when_of(node.when)
                if w >= 1:
                    boundaries.add(w)
            else:
                boundaries.update(range(1, steps + 1))
        return [[t, _render(tree, t, when_of)] for t in sorted(boundaries)]

    cache: dict[str, list[list]] = {}
    result = []
    for prompt in prompts:
        if prompt not in cache:
            cache[prompt] = schedule(prompt)
        result.append(cache[prompt])
    return result


# --------------------------------------------------------------------------- composable prompts

_RE_AND = re.compile(r"\bAND\b")
_RE_WEIGHT = re.compile(r"^((?:\s|.)*?)(?:\s*:\s*([-+]?(?:\d+\.?|\d*\.\d+)))?\s*$")


def get_multicond_prompt_list(prompts: list[str]) -> tuple[list[list[tuple[int, float]]], list[str], dict[str, int]]:
    """Split each prompt on ``AND`` into weighted parts (``text :weight``, default 1.0).

    Returns, per prompt, ``[(index into the flat list, weight), ...]``, the flat list of
    distinct part texts and the text -> index mapping. As in A1111 the weight and the
    whitespace after a part are removed; whitespace before it is kept.

    >>> get_multicond_prompt_list(["a cat AND a dog :1.2"])
    ([[(0, 1.0), (1, 1.2)]], ['a cat', ' a dog'], {'a cat': 0, ' a dog': 1})
    """
    res_indexes: list[list[tuple[int, float]]] = []
    flat: list[str] = []
    index_of: dict[str, int] = {}
    for prompt in prompts:
        indexes = []
        for subprompt in _RE_AND.split(prompt):
            # the pattern matches every string (its weight part is optional), so there is always a match
            text, number = _RE_WEIGHT.search(subprompt).groups()  # type: ignore[union-attr]
            weight = float(number) if number is not None else 1.0
            index = index_of.get(text)
            if index is None:
                index = len(flat)
                flat.append(text)
                index_of[text] = index
            indexes.append((index, weight))
        res_indexes.append(indexes)
    return res_indexes, flat, index_of


# --------------------------------------------------------------------------- extra networks

_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")


@dataclass(frozen=True)
class ExtraNetworkTag:
    """One ``<kind:arg1:arg2...>`` tag, e.g. ``ExtraNetworkTag("lora", ("name", "0.8"))``."""

    kind: str
    args: tuple[str, ...]


def parse_extra_networks(text: str) -> tuple[str, list[ExtraNetworkTag]]:
    """Remove ``<kind:args>`` tags from ``text``; returns the text and the tags in order.

    >>> parse_extra_networks("a cat <lora:film:0.8>")
    ('a cat ', [ExtraNetworkTag(kind='lora', args=('film', '0.8'))])
    """
    tags: list[ExtraNetworkTag] = []

    def found(m: re.Match) -> str:
        tags.append(ExtraNetworkTag(m.group(1), tuple(m.group(2).split(":"))))
        return ""

    return _RE_EXTRA_NETWORK.sub(found, text), tags
