"""Wrong arithmetic as it is written: a signal that sees a wrong answer's claim.

Every other signal reads the model (logits, attention, lost mass, state); none marks the token where a
compressed run writes its first wrong number (within SnapKV and ExpectedAttention, where wrong answers are
most catastrophes, the guards flag 4-7% of them within 32 tokens, train/README.md). Many of those claims are
a wrong result of arithmetic the run wrote itself ("1.5 hours + 3 hours + 3 hours = 8 hours"). This module
checks each equation of the generated text as soon as its right side is complete, using only the text up to
that token, so it runs live as well as on stored traces.

The rule, per line: each ``=`` compares the longest arithmetic expression that ends at it (the left side;
unit words after a number are skipped, "40% of 30" is 0.4 * 30, ``\\times`` / ``x`` / ``×`` multiply) with the
longest one that starts after it (the right side; a word ends it). At least one side must hold an operator.
The sides agree within rounding (half a unit of the right side's last decimal, or 1%), also when one is the
other times 100 (percentages) or the floor / ceiling of it (whole items). A side that does not parse (a
variable, a mixed number, prose) is skipped: the signal prefers a miss to a false alarm. A right side is
decided when the character after it cannot continue it (a word, punctuation, the line's end); its
``wrong_equations`` count then includes it.

``arith_wrong`` per token is the number of wrong equations decided in the text so far (a running count: 0
until the first wrong result, whose first token after the number raises it).
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Sequence

import numpy as np

ARITHMETIC_SIGNALS = ("arith_wrong",)

_LATEX = [
    (re.compile(r"\\frac\s*\{([^{}]*)\}\s*\{([^{}]*)\}"), r"((\1)/(\2))"),
    (re.compile(r"\\(?:times|cdot)(?![A-Za-z])"), "*"),
    (re.compile(r"\\div(?![A-Za-z])"), "/"),
    (re.compile(r"\\(?:text|mathrm|mbox|textbf|mathbf)\s*\{([^{}]*)\}?"), r" \1 "),  # units become words
    (re.compile(r"\\(?:left|right)(?![A-Za-z])"), ""),
    (re.compile(r"\\[$]"), ""),
    (re.compile(r"\\%"), "%"),
    (re.compile(r"\\[,;!: ]|\\[()]"), " "),
    (re.compile(r"\\[\[\]]"), ";"),  # display math opens / closes: a boundary
    (re.compile(r"\\[A-Za-z]+"), ";"),  # any other command: a boundary
]
_UNICODE = str.maketrans({"×": "*", "÷": "/", "−": "-", "–": "-", "·": "*", "⋅": "*", "$": " ", "{": " ",
                          "}": " ", "€": " ", "£": " "})
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_TIMES_X = re.compile(r"(?<=[\d)])\s*[xX]\s*(?=[\d(])")
_PERCENT_OF = re.compile(r"%\s*of\b")
_PERCENT = re.compile(r"(\d*\.?\d+)\s*%")
_FRACTION = re.compile(r"(?<![\d.])(\d+)/(\d+)(?![\d.])")
_GLUED = re.compile(r"(\d)[A-Za-z](?![A-Za-z])")
_TIMES_WORD = re.compile(r"(?<=\d)\s+times\s+(?=\d)")
# Endings of a prefix that the next characters may still turn into something else: a LaTeX command or
# fraction being written, "1,2" (1,200?), "5 x" (5 x 3?), "8." (8.5?), "40%" ("40% of"?).
_PENDING = re.compile(r"(?:\\[A-Za-z]*|\\frac\s*(?:\{[^{}]*(?:\}\s*(?:\{[^{}]*)?)?)?|(?<=\d),\d{0,2}"
                      r"|(?<=[\d)])\s*[xX]\s*|(?<=\d)\.|%\s*(?:o|of)?)$")
_LEX = re.compile(r"(?P<num>\d*\.\d+|\d+)|(?P<op>[-+*/])|(?P<lp>\()|(?P<rp>\))|(?P<pct>%)"
                  r"|(?P<eq>(?<![<>!=])=(?!=))|(?P<word>[A-Za-z]+)|(?P<sp>\s+)|(?P<term>.)")
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def normalise(line: str, complete: bool = True) -> str:
    """The line with LaTeX, symbols and thousands separators rewritten. ``complete=False``: the line is a
    prefix, and an ending the next characters may still change ("\\ti", "8.", "1,2") is cut off."""
    s = line
    if not complete and (m := _PENDING.search(s)):
        s = s[:m.start()]
    for pat, rep in _LATEX:
        s = pat.sub(rep, s)
    s = s.translate(_UNICODE)
    s = _THOUSANDS.sub("", s)
    s = _TIMES_X.sub("*", s)
    s = _TIMES_WORD.sub(" * ", s)
    s = _PERCENT_OF.sub("%*", s)
    s = _PERCENT.sub(r"(\1/100)", s)  # "40%/10%" is 0.4 / 0.1
    s = _FRACTION.sub(r"(\1/\2)", s)  # "25 / 1/3": an unspaced fraction binds first
    return _GLUED.sub(r"\1;", s)  # "2a", "3x": a variable ends the expression


def _lex(s: str) -> list[tuple[str, str]]:
    return [(m.lastgroup, m.group()) for m in _LEX.finditer(s) if m.lastgroup != "sp"]


def _eval(node: ast.AST) -> float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.left), _eval(node.right))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    raise ValueError("not arithmetic")


def _value(lexemes: list[tuple[str, str]]) -> float | None:
    """The value of an expression's lexemes (units already dropped), or None if it does not parse."""
    if not any(k == "num" for k, _ in lexemes):
        return None
    src = " ".join("/100" if k == "pct" else v for k, v in lexemes)  # spaced: "30 0.40" must not read 300.40
    try:
        v = _eval(ast.parse(src, mode="eval"))
    except (SyntaxError, ValueError, ZeroDivisionError, RecursionError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _has_op(lexemes: list[tuple[str, str]]) -> bool:
    # a leading minus is a sign, not an operation
    return any(k == "op" and not (i == 0 and v == "-") for i, (k, v) in enumerate(lexemes)) or \
        any(k == "pct" for k, _ in lexemes)


# Words that are prose, not units: a run of words after a number holding one ends the expression there
# ("5 units of 3 candies which is = 15" is no equation; "24 pairs * $12 per pair = 288" is).
_PROSE = frozenset("is are was were be been of which that so and or then to for in on at by from with equals "
                   "gives makes it he she they we you i this there the if when each".split())
MAX_UNIT_WORDS = 3


def _left(seg: list[tuple[str, str]]) -> list[tuple[str, str]] | None:
    """The longest expression that ends the segment before an '=' (unit words after a number dropped), or
    None when there is none or its left end is in doubt (it starts with an operation: "breath * 1440")."""
    out: list[tuple[str, str]] = []
    i = len(seg) - 1
    while i >= 0:
        k, v = seg[i]
        if k == "word":
            j = i
            while j >= 0 and seg[j][0] == "word":
                j -= 1
            words = [w.lower() for _, w in seg[j + 1:i + 1]]
            if j < 0 or seg[j][0] not in ("num", "pct", "rp") or len(words) > MAX_UNIT_WORDS \
                    or any(w in _PROSE for w in words):
                break  # prose before the expression: its left end
            if any(len(w) == 1 and w != "a" for w in words):
                return None  # "2x + 3": a variable, not a unit
            i = j
            continue
        if k in ("num", "op", "lp", "rp", "pct"):
            out.append(seg[i])
            i -= 1
            continue
        break
    out.reverse()
    if out and out[0][0] == "op" and (out[0][1] != "-" or (i >= 0 and seg[i][0] in ("word", "num"))):
        return None  # "bikes + 12 - 18 =": the expression began in the prose
    if _value(out) is None and out and out[0][0] == "lp" and _value(out[1:]) is not None:
        out = out[1:]  # "5 + (3 * 2 =": an unclosed bracket
    return out if _value(out) is not None else None


def _units(words: list[str]) -> bool:
    return len(words) <= MAX_UNIT_WORDS and not any(w.lower() in _PROSE for w in words)


def _right(seg: list[tuple[str, str]], at_end: bool) -> tuple[list[tuple[str, str]] | None, bool]:
    """(the longest expression that starts the segment after an '=', whether it is decided).

    Unit words after a number are skipped when an operation follows them ("24 slices - 15 slices"); any
    other word, punctuation or the next '=' ends the expression. ``at_end``: the segment is where the text
    stops, so an expression (or a unit run, or a last word that may still grow) reaching it is undecided.
    """
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(seg):
        k, v = seg[i]
        if k in ("num", "op", "lp", "rp", "pct"):
            if k == "num" and out and out[-1][0] in ("num", "pct", "rp"):
                return None, True  # "3 000 grams", "1 1/2": not an expression we read
            out.append(seg[i])
            i += 1
            continue
        if k == "word" and out and out[-1][0] in ("num", "pct", "rp"):
            j = i
            while j < len(seg) and seg[j][0] == "word":
                j += 1
            words = [w for _, w in seg[i:j]]
            if j == len(seg) and at_end and (_units(words) or len(words) == 1 or _units(words[:-1])):
                return None, False  # "= 24 slices" (- 15 slices?), "= 8 in" (inches?): not yet decided
            if j < len(seg) and seg[j][0] == "op" and _units(words):
                i = j  # units inside the expression
                continue
        break
    ended = i < len(seg) or not at_end
    if _value(out) is None and out and out[-1][0] == "rp" and _value(out[:-1]) is not None:
        out = out[:-1]  # "= 12 + 3) * 2": the bracket closes an outer expression
    return (out if _value(out) is not None else None), ended


def agree(left: float, right: float, right_text: str, divides: bool = False) -> bool:
    """Whether a stated right side matches the left side's value, within rounding and the usual slack
    (``divides``: the left side divides, so whole items may be rounded down or up: "10 / 3 = 3 boxes")."""
    decimals = len(right_text.split(".")[1]) if "." in right_text else 0
    for a in (left, left * 100, left / 100):
        # rounding: strictly within half a unit of the last decimal (7.5 written as 8 is a wrong sum)
        if abs(a - right) < 0.5 * 10 ** -decimals - 1e-9 or abs(a - right) <= 0.01 * max(abs(a), abs(right)):
            return True
    return divides and right == int(right) and (right == math.floor(left) or right == math.ceil(left))


_EQ = re.compile(r"(?<![<>!=])=(?!=)")
MAX_LEFT_CHARS = 200  # a left side reads at most this far back (a long prose line costs nothing per token)


def _check(text: str, complete: bool) -> tuple[bool, bool]:
    """(wrong, decided) for the one '=' in ``text`` (the line from just after the previous '=' to the next)."""
    lex = _lex(normalise(text, complete))
    eqs = [i for i, (k, _) in enumerate(lex) if k == "eq"]
    if len(eqs) != 1:
        return False, True  # normalising dropped it (a pending ending ate it): nothing to check
    e = eqs[0]
    left = _left(lex[:e])
    right, ended = _right(lex[e + 1:], at_end=not complete)
    if not ended:
        return False, False
    if left is None or right is None or not _has_op(left):
        return False, True  # "Total = 4 * 10" states, it does not compute; prose does not parse
    right_text = right[-1][1] if len(right) == 1 else ""  # a bare number's decimals set the rounding
    return not agree(_value(left), _value(right), right_text, divides=("op", "/") in left), True


def _span(line: str, eqs: list[int], i: int) -> str:
    """The text equation ``i`` of a line reads: from after the previous '=' (at most ``MAX_LEFT_CHARS`` back,
    cut at a space) to the next '=' or the line's end."""
    lo = eqs[i - 1] + 1 if i else 0
    if eqs[i] - lo > MAX_LEFT_CHARS:
        cut = line.find(" ", eqs[i] - MAX_LEFT_CHARS)
        lo = cut if 0 <= cut < eqs[i] else eqs[i]
    return line[lo:eqs[i + 1] if i + 1 < len(eqs) else len(line)]


def wrong_equations(line: str, complete: bool = True) -> int:
    """The number of equations in one line of text whose two sides disagree.

    ``complete=False``: the line is a prefix of what will be written, so an equation whose right side may
    still grow is not counted yet.
    """
    eqs = [m.start() for m in _EQ.finditer(line)]
    return sum(_check(_span(line, eqs, i), complete or i + 1 < len(eqs))[0] for i in range(len(eqs)))


class ArithmeticCheck:
    """The live form: feed each token's text, read ``wrong`` (equations found wrong so far).

    An equation's verdict is final once its right side is decided (the next '=' or the line's end decides
    it at the latest), so each token re-reads at most the open equation's span, never the whole text.
    """

    def __init__(self) -> None:
        self.wrong = 0  # final verdicts so far
        self.wrong_at: list[int] = []  # where each wrong equation's '=' is, in characters of the whole text
        self.ends: list[int] = []  # where each fed token's text ends, in characters of the whole text
        self._offset = 0  # characters of the finished lines (with their newlines)
        self._line = ""
        self._eqs: list[int] = []
        self._final = 0  # equations of the open line with a final verdict

    def _settle(self, complete: bool) -> None:
        for i in range(self._final, len(self._eqs)):
            last = i + 1 == len(self._eqs)
            wrong, decided = _check(_span(self._line, self._eqs, i), complete or not last)
            if not decided:
                return
            if wrong:
                self.wrong += 1
                self.wrong_at.append(self._offset + self._eqs[i])
            self._final = i + 1

    def token_of(self, char: int) -> int:
        """The fed token whose text holds character ``char`` of the whole text (``wrong_at`` -> a token)."""
        return int(np.searchsorted(self.ends, char, side="right"))

    def feed(self, piece: str) -> int:
        self.ends.append((self.ends[-1] if self.ends else 0) + len(piece))
        *ends, rest = piece.split("\n")
        for part in ends:  # each finished line settles every equation in it
            self._add(part)
            self._settle(complete=True)
            self._offset += len(self._line) + 1
            self._line, self._eqs, self._final = "", [], 0
        self._add(rest)
        self._settle(complete=False)
        return self.wrong

    def _add(self, part: str) -> None:
        start = max(len(self._line) - 1, 0)  # a '=' next to the old end may change meaning ("<" + "=")
        self._line += part
        self._eqs = [p for p in self._eqs if p < start] + [m.start() for m in _EQ.finditer(self._line, start)]


def arith_wrong(pieces: Sequence[str]) -> np.ndarray:
    """Per token, the number of wrong equations decided in the text up to and including that token.

    ``pieces[i]`` is token i's text (``token_pieces``); the count at i reads ``"".join(pieces[:i + 1])``
    only, so it is causal (``ArithmeticCheck``, fed token by token).
    """
    check = ArithmeticCheck()
    return np.array([check.feed(p) for p in pieces], dtype=np.float32)


def token_pieces(tokenizer, tokens: Sequence[int], cache: dict[int, str] | None = None) -> list[str]:
    """Each token's own text (a byte-level BPE piece decodes on its own except inside a multi-byte
    character, which arithmetic never is)."""
    cache = {} if cache is None else cache
    out = []
    for t in tokens:
        t = int(t)
        if t not in cache:
            cache[t] = tokenizer.decode([t], skip_special_tokens=True)
        out.append(cache[t])
    return out
