"""Which basic colour a colour name means ("scarlet" -> red, "navy" -> blue), from named-colour data.

A small LLM trained on the synthetic world reads eleven colour words; people say "crimson", "teal" or
"navy". Sentence-encoder word vectors do not separate hues (all-MiniLM-L6-v2 puts "scarlet" nearest to
"violet" and "emerald" nearest to "orange"), but named-colour lists do: each name comes with the sRGB
colour people mean by it. This module turns such a list into a map from single-word colour names to the
world's basic colour terms, with no hand-made entries:

- labelled examples are the names whose last word is a basic term ("navy blue", "pale green", CSS's
  "darkslategray"), each labelled with that term and placed at its colour in CIELAB;
- every single-word name gets the majority label of its ``k`` nearest labelled examples;
- except words that modify a colour rather than name one: "dark" and "pale" are colour names in the
  survey, but "dark blue", "dark red", "dark green" ... spread over every hue
  (:func:`hue_free_modifiers`), so "the dark blue mug" must not read as "the grey blue mug".

The data are matplotlib's ``XKCD_COLORS`` (the xkcd colour survey: the names some 220k people gave to
colours) and ``CSS4_COLORS``, read at table-build time only (``groma colour-words``); nothing here runs
at inference.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterable, Mapping, Sequence

from .errors import MissingDependencyError

#: sRGB in 0..1
RGB = tuple[float, float, float]

#: spellings of a basic term that name the same colour
ALIASES = {"gray": "grey"}


def hex_to_rgb(code: str) -> RGB:
    """``'#1f77b4'`` -> sRGB in 0..1."""
    code = code.lstrip("#")
    if not re.fullmatch(r"[0-9a-fA-F]{6}", code):
        raise ValueError(f"not a #rrggbb colour: {code!r}")
    return tuple(int(code[i:i + 2], 16) / 255 for i in (0, 2, 4))


def srgb_to_lab(rgb: RGB) -> tuple[float, float, float]:
    """sRGB in 0..1 -> CIELAB (D65 white), where Euclidean distance approximates perceived difference."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in rgb)
    x = (0.4124 * r + 0.3576 * g + 0.1805 * b) / 0.95047
    y = 0.2126 * r + 0.7152 * g + 0.0722 * b
    z = (0.0193 * r + 0.1192 * g + 0.9505 * b) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def _name(raw: str) -> str:
    """A colour list's key as a plain lower-case name: ``'xkcd:Navy Blue '`` -> ``'navy blue'``."""
    return raw.split(":", 1)[-1].strip().lower()


def _head_term(name: str, basic: Sequence[str]) -> str | None:
    """The basic term a name ends with ("navy blue", "darkslategray" -> blue, grey), or None."""
    name = name.lower()
    for term in sorted(list(basic) + list(ALIASES), key=len, reverse=True):
        if name.endswith(term):
            return ALIASES.get(term, term)
    return None


def hue_free_modifiers(named: Mapping[str, str], min_compounds: int = 3, max_resultant: float = 0.4) -> set[str]:
    """First words of compound names ("dark blue", "pale pink") whose compounds spread over the hue circle.

    For each first word with at least ``min_compounds`` chromatic compounds (CIELAB chroma > 5), the hue
    directions ``(a, b) / chroma`` of its compounds are averaged; a mean resultant length below
    ``max_resultant`` (0 = hues evenly spread, 1 = one hue) marks a word that says how light or dull a
    colour is, not which. On the xkcd survey: "dark" 0.17 over 59 names, "pale" 0.25 over 27, "greyish"
    0.06; "reddish" 0.95, "olive" 0.99.
    """
    directions: dict[str, list[tuple[float, float]]] = {}
    for raw, code in named.items():
        words = _name(raw).split()
        if len(words) < 2:
            continue
        _, a, b = srgb_to_lab(hex_to_rgb(code))
        chroma = math.hypot(a, b)
        if chroma > 5:
            directions.setdefault(words[0], []).append((a / chroma, b / chroma))
    return {w for w, d in directions.items() if len(d) >= min_compounds
            and math.hypot(sum(x for x, _ in d), sum(y for _, y in d)) / len(d) < max_resultant}


def basic_colour_map(named: Mapping[str, str], basic: Sequence[str], k: int = 5) -> dict[str, str]:
    """Single-word colour names -> the basic term of ``basic`` they mean.

    ``named``: colour name -> ``'#rrggbb'`` (names may hold spaces; a leading ``'xkcd:'`` is dropped).
    Labelled examples: every name ending in a term of ``basic`` (or its alias). A single-word name
    ``[a-z]+`` gets the term it ends with ("darkblue"), else the majority label of its ``k`` nearest
    examples in CIELAB (ties: the nearest of the tied labels). Basic terms and aliases map to themselves;
    :func:`hue_free_modifiers` are left out.
    """
    examples: list[tuple[tuple[float, float, float], str]] = []
    singles: dict[str, tuple[RGB, str | None]] = {}  # one-word name -> (its colour, the basic term it ends in)
    for raw, code in named.items():
        name = _name(raw)
        rgb = hex_to_rgb(code)
        term = _head_term(name.replace(" ", ""), basic)
        if term is not None:
            examples.append((srgb_to_lab(rgb), term))
        if re.fullmatch(r"[a-z]+", name):
            singles.setdefault(name, (rgb, term))
    if not examples:
        raise ValueError("no colour name ends in a basic term: nothing to learn the terms from")
    out = {term: term for term in basic}
    out.update(ALIASES)
    modifiers = hue_free_modifiers(named)
    for name, (rgb, head) in singles.items():
        if name in out or name in modifiers:
            continue
        if head is None:  # else a compound written as one word ("darkblue") names its own head
            lab = srgb_to_lab(rgb)
            nearest = sorted(examples, key=lambda e: sum((a - b) ** 2 for a, b in zip(lab, e[0])))[:k]
            votes = Counter(term for _, term in nearest)
            top = max(votes.values())
            head = next(term for _, term in nearest if votes[term] == top)
        out[name] = head
    return out


def matplotlib_named_colours() -> dict[str, str]:
    """matplotlib's xkcd survey and CSS4 colour names -> ``'#rrggbb'`` (xkcd first where both name one)."""
    try:
        from matplotlib.colors import CSS4_COLORS, XKCD_COLORS
    except ImportError as e:  # build-time only: the dev extra pins it
        raise MissingDependencyError("the colour-name map reads matplotlib's named colours: pip install "
                                     "matplotlib==3.11.2 (in the dev extra)") from e
    named = {_name(name): code for name, code in XKCD_COLORS.items()}
    for name, code in CSS4_COLORS.items():
        named.setdefault(name, code)
    return named


def words_to_recolour(colour_map: Mapping[str, str], keep: Iterable[str]) -> dict[str, str]:
    """The entries of ``colour_map`` whose word is not its own basic term and not in ``keep``."""
    keep = set(keep)
    return {w: t for w, t in colour_map.items() if w != t and w not in keep}
