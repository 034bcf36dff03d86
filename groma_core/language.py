"""Language drawn from a synthetic scene: referring expressions, robot commands, region captions,
grounded descriptions and expressions that match nothing, in Groma's text formats.

Design
------
The generator is compositional. A referent is first chosen as a *structured* description,
:class:`Ref` (kind, colour, size, spatial relation to an anchor, ordinal, superlative), and
checked against the scene truth with :func:`resolve`, which must return exactly the target
(or nothing, for negatives) with no borderline case. Only then is it *realised* as text, with
words drawn from separate lexicons (kind and colour synonyms, relation phrases, verbs,
politeness, fillers) and grammatical variants (word order, article, relative clauses), casing
and occasional character typos.

Held-out wording (``split``)
----------------------------
Every lexicon entry whose text starts with ``~`` is *evaluation-only*. ``split='train'`` never
uses them; ``split='eval'`` picks an evaluation-only entry, where a slot has one, half of the
time (otherwise any entry). So a model trained on ``'train'`` samples and measured on ``'eval'``
samples meets verbs, synonyms, templates and sentence frames it has never seen.

Answers (what the model should generate) are short. A command names each target with the
command's own words for it (the referent as worded, without the typos the command may carry), so
the LLM copies the phrase and then points at its region, as a REC answer points after the
expression (canonical names instead, "the blue mug" for "the mug left of the red bottle", made the
LLM resolve the referent twice, once to write the name and again to point: ``groma eval --n 500``,
commands 0.25 -> 0.36, two-target 0.02 -> 0.07). A description that matches nothing is answered
in its own words too (``"the azure beaker"`` -> ``"There is no azure beaker in the image."``), so
that canonical wording in a question does not foretell a negative answer. Captions and
descriptions name objects by colour and kind (first lexicon entries: ``"a blue mug"``).

Spatial conventions (from the camera's point of view): *left/right* compare the centres of the
pixel boxes (u); *in front of / behind / closest / farthest* compare the optical-frame depth
``z`` of the 3D centres; *next to* and *between* use the objects' footprints on the table.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field, replace

import numpy as np

from .prompts import BRIEF_REGION_CAPTION_TEMPLATES, GROUNDED_CAPTION_TEMPLATES, GROUNDING_PREFIX, REC_TEMPLATES, REFER_MARKUP
from .world import COLOR_NAMES, KINDS, Scene, SceneObject

__all__ = [
    "Span",
    "LanguageSample",
    "Ref",
    "TASKS",
    "resolve",
    "ref_form",
    "sample_language",
    "eval_samples",
    "realize",
    "render_answer",
]

TASKS: tuple[str, ...] = ("rec", "command", "command2", "caption", "describe", "negative_rec", "negative_command")
#: The task mix of training. Measured alternative (stages 2-3 retrained, `groma eval`, seeds 1e7 n=500 /
#: 2e7 n=300): command2 0.20 (rec 0.20, command 0.22) moved answers towards "not found" (correct 0.48 ->
#: 0.55 on both, but said of present objects 0.09 -> 0.15) and cost REC 0.448 -> 0.41 / 0.473 -> 0.443;
#: two-target both right 0.11 -> 0.15 on one seed set, unchanged (0.10) on the other.
TASK_WEIGHTS: dict[str, float] = {
    "rec": 0.24, "command": 0.26, "command2": 0.12, "caption": 0.12, "describe": 0.08,
    "negative_rec": 0.08, "negative_command": 0.10,
}


@dataclass
class Span:
    """A piece of an answer; ``object_indices`` empty = plain text, else a grounded phrase whose
    boxes are those objects' (rendered ``<p>text</p><roi><rK>…</roi>``; an empty ``text`` with
    objects is the bare ``<roi>…</roi>`` of a REC answer)."""

    text: str
    object_indices: list[int]


@dataclass
class LanguageSample:
    """One user turn and the expected assistant turn for a scene.

    ``query`` is in Groma's text format (``<p>…</p>`` around a REC expression, ``[grounding]``
    prefix for grounded answers, ``<roi><refer_box></roi><refer_feat>`` for a user box whose object
    is ``refer_indices``). ``target_indices`` are the objects the query refers to, in the order
    they are named (empty for negatives). ``split`` tells which wording pool made it; ``meta``
    carries the structured referents (``'refs'``: list of :class:`Ref`) for checking and, for
    commands, ``'referent_texts'``: the text that names each target in the query, in target order
    (before casing and typos, which may change it); for negatives, the absent description's text.
    """

    task: str
    query: str
    answer: list[Span]
    refer_indices: list[int]
    target_indices: list[int]
    split: str = "train"
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Lexicons ('~' = evaluation-only wording)
# --------------------------------------------------------------------------------------------------

KIND_WORDS: dict[str, list[str]] = {
    "mug": ["mug", "coffee mug", "cup with a handle", "~tea mug", "~handled cup"],
    "cup": ["cup", "tumbler", "drinking cup", "~beaker", "~paper cup"],
    "bottle": ["bottle", "flask", "water bottle", "~glass bottle", "~drink bottle"],
    "bowl": ["bowl", "soup bowl", "~cereal bowl", "~basin"],
    "box": ["box", "carton", "package", "crate", "~parcel", "~cardboard box"],
    "ball": ["ball", "sphere", "toy ball", "~orb", "~bouncy ball"],
    "can": ["can", "tin", "soda can", "~tin can", "~drink can"],
    "book": ["book", "notebook", "~hardcover", "~paperback"],
    "plate": ["plate", "dish", "~dinner plate", "~saucer"],
    "remote": ["remote", "remote control", "tv remote", "~controller", "~clicker"],
}
COLOR_WORDS: dict[str, list[str]] = {
    "red": ["red", "~scarlet"],
    "green": ["green", "~emerald"],
    "blue": ["blue", "~azure"],
    "yellow": ["yellow", "~lemon-yellow"],
    "orange": ["orange", "~tangerine"],
    "purple": ["purple", "violet", "~lavender-purple"],
    "white": ["white", "~snow-white"],
    "black": ["black", "~jet-black"],
    "pink": ["pink", "~rose-pink"],
    "brown": ["brown", "~chocolate-brown"],
    "grey": ["grey", "gray", "~silver"],
}
#: a colour said after the noun or as a compound ("{n}" noun, "{c}" colour), now and then
COLOUR_FRAMES: list[str] = ["{n} that is {c}", "{n} which is {c}", "{c} colored {n}", "~{n} in {c}", "~{c}-coloured {n}"]
#: nouns for a description without a kind ("the blue one", "the leftmost object")
GENERIC_NOUNS: list[str] = ["object", "thing", "item", "one", "~article", "~piece"]
SIZE_WORDS: dict[str, list[str]] = {
    "small": ["small", "little", "~tiny", "~mini"],
    "large": ["large", "big", "~huge", "~giant"],
}
#: nouns of things that never appear in the world (negatives)
ABSENT_NOUNS: list[str] = [
    "banana", "apple", "phone", "laptop", "spoon", "fork", "knife", "scissors", "pen", "keyboard",
    "glasses", "vase", "~teddy bear", "~stapler", "~toothbrush", "~candle", "~sponge", "~wallet",
]
# "{np} <phrase> {anchor}"
RELATION_WORDS: dict[str, list[str]] = {
    "left_of": ["left of", "to the left of", "on the left of", "on the left side of", "~just left of", "~leftward of"],
    "right_of": ["right of", "to the right of", "on the right of", "on the right side of", "~just right of", "~rightward of"],
    "in_front_of": ["in front of", "closer to the camera than", "nearer to me than", "~ahead of", "~before"],
    "behind": ["behind", "in back of", "farther away than", "~beyond", "~at the back of"],
    "next_to": ["next to", "beside", "near", "close to", "by", "~adjacent to", "~alongside"],
}
RELATIVE_LINKS: list[str] = ["that is", "which is", "that's", "~sitting", "~located", "~standing"]
BETWEEN_WORDS: list[str] = ["between {a} and {b}", "in between {a} and {b}", "~in the middle of {a} and {b}", "~sandwiched between {a} and {b}"]
ORDINAL_WORDS: list[list[str]] = [
    ["first", "1st"], ["second", "2nd"], ["third", "3rd"], ["fourth", "4th"], ["fifth", "5th"],
]
# "{ord}", "{np}" (no article), "{side}"
ORDINAL_FRAMES: list[str] = [
    "the {ord} {np} from the {side}",
    "the {ord} {np} counting from the {side}",
    "the {ord} {np} when counting from the {side}",
    "~the {np} that is {ord} from the {side}",
    "~the {ord}-from-the-{side} {np}",
    "~the {np} in {ord} place from the {side}",
]
# superlatives: prefix forms "the {w} {np}" and postfix forms "the {np} {w}"
SUPERLATIVE_PRE: dict[str, list[str]] = {
    "leftmost": ["leftmost", "left-most", "~far-left"],
    "rightmost": ["rightmost", "right-most", "~far-right"],
    "closest": ["closest", "nearest", "frontmost", "~foremost"],
    "farthest": ["farthest", "furthest", "~most distant", "~rearmost"],
    "largest": ["largest", "biggest", "~hugest"],
    "smallest": ["smallest", "tiniest", "~littlest"],
}
SUPERLATIVE_POST: dict[str, list[str]] = {
    "leftmost": ["on the far left", "furthest to the left", "~at the extreme left"],
    "rightmost": ["on the far right", "furthest to the right", "~at the extreme right"],
    "closest": ["closest to the camera", "nearest to me", "closest to you", "~nearest the front"],
    "farthest": ["farthest from the camera", "furthest away", "at the back", "~farthest from me"],
    "largest": ["that is the largest", "that is biggest", "~of the greatest size"],
    "smallest": ["that is the smallest", "that is tiniest", "~of the least size"],
}
# single-target commands: "{x}" = the expression
COMMAND_FRAMES: list[str] = [
    "pick up {x}", "pick {x} up", "grab {x}", "take {x}", "fetch {x}", "bring me {x}", "hand me {x}",
    "get {x}", "lift {x}", "move {x}", "push {x}", "point at {x}", "show me {x}", "where is {x}?",
    "find {x}", "look at {x}", "give me {x}", "pass me {x}", "select {x}", "locate {x}", "pick {x}",
    "i want {x}", "go to {x}", "{x}, pick it up", "{x} - grab it", "which one is {x}?", "reach for {x}",
    "get me {x}", "point to {x}",
    "~retrieve {x}", "~snatch {x}", "~collect {x}", "~raise {x}", "~tap {x}", "~touch {x}",
    "~highlight {x}", "~i need {x}", "~get hold of {x}", "~go for {x}", "~seize {x}", "~nudge {x}",
    "~{x} is what i want", "~can i have {x}?", "~where can i find {x}?", "~put your gripper on {x}",
]
# two-target commands, by relation
COMMAND2_FRAMES: dict[str, list[str]] = {
    "in": [
        "put {x} in {y}", "put {x} into {y}", "place {x} in {y}", "drop {x} into {y}", "move {x} into {y}",
        "put {x} inside {y}", "{x} into {y}", "~toss {x} into {y}", "~stick {x} in {y}", "~{x} goes in {y}",
        "~load {x} into {y}",
    ],
    "on": [
        "put {x} on {y}", "place {x} on top of {y}", "set {x} on {y}", "stack {x} on {y}", "put {x} onto {y}",
        "move {x} onto {y}", "~lay {x} on {y}", "~rest {x} on top of {y}", "~{x} goes on {y}",
    ],
    "next_to": [
        "move {x} next to {y}", "put {x} beside {y}", "place {x} next to {y}", "slide {x} over to {y}",
        "bring {x} close to {y}", "~shift {x} alongside {y}", "~park {x} by {y}",
    ],
    "and": [
        "grab {x} and {y}", "bring me {x} and {y}", "pick up {x} and {y}", "hand me {x} and also {y}",
        "get {x} and then {y}", "take {x} and {y}", "~fetch both {x} and {y}", "~collect {x} as well as {y}",
        "~i need {x} plus {y}",
    ],
}
#: Words that may open a description (``realize``'s articles) and that a negative answer drops.
ARTICLES = ("the", "this", "that", "a", "an")
ANSWER_JOIN: dict[str, str] = {"in": " into ", "on": " onto ", "next_to": " next to ", "and": " and "}
CONTAINERS_IN = ("bowl", "mug", "cup", "box")
SUPPORTS_ON = ("plate", "book", "box")
PUTTABLE = ("ball", "can", "remote", "cup", "mug", "bottle", "book")

POLITE_PRE: list[str] = [
    "please", "could you", "can you", "would you", "kindly", "would you mind to", "i'd like you to",
    "robot,", "hey,", "ok,", "now", "hey robot,", "alright,",
    "~be so kind as to", "~i'd appreciate it if you could", "~if possible,", "~yo,", "~listen,",
]
POLITE_POST: list[str] = [
    "please", "for me", "now", "thanks", "thank you", "right away", "quickly",
    "~when you get a chance", "~if you can", "~cheers", "~asap",
]
PREAMBLES: list[str] = [
    "I'm thirsty.", "let's tidy up the table.", "time to clean up.", "next step:", "new task:",
    "~my hands are full.", "~we are setting the table.", "~one more thing:",
]
HESITATIONS: list[str] = ["um", "uh", "just", "like", "~erm", "~hmm"]
REC_EXTRA: list[str] = [
    "Find {} in the image.", "Where is {}?", "Show me {}.", "Point to {}.", "Locate {}.",
    "Which object is {}?", "Give the region of {}.",
    "~Highlight {} in this picture.", "~Could you locate {} for me?", "~Mark the region of {}.",
    "~Where in the picture is {}?", "~Pinpoint {}.",
]
CAPTION_EXTRA: list[str] = [
    "What is this object {}?", "Describe {} briefly.", "What object is shown in {}?", "Name {}.",
    "~Tell me what {} is.", "~What do you see in {}?", "~Identify the object in region {}.",
]
DESCRIBE_EXTRA: list[str] = [
    "Describe the table.", "What is on the table?", "List the objects on the table.", "What do you see?",
    "Tell me what objects are in front of you.", "What objects are there?", "Describe the scene.",
    "~Give me an inventory of the tabletop.", "~Which items can you see on the table?",
    "~Name everything you can see.", "~What's lying around on the table?",
]

ORDINAL_CANON = [w[0] for w in ORDINAL_WORDS]


def _strings(lexicon) -> list[str]:
    if isinstance(lexicon, str):
        return [lexicon]
    values = lexicon.values() if isinstance(lexicon, dict) else lexicon
    return [s for v in values for s in _strings(v)]


#: Every lexicon and template the language draws words from (``training_words`` reads them).
_LEXICONS = (KIND_WORDS, COLOR_WORDS, COLOUR_FRAMES, GENERIC_NOUNS, SIZE_WORDS, ABSENT_NOUNS, RELATION_WORDS, RELATIVE_LINKS,
             BETWEEN_WORDS, ORDINAL_WORDS, ORDINAL_FRAMES, SUPERLATIVE_PRE, SUPERLATIVE_POST, COMMAND_FRAMES,
             COMMAND2_FRAMES, ARTICLES, ANSWER_JOIN, POLITE_PRE, POLITE_POST, PREAMBLES, HESITATIONS, REC_EXTRA,
             CAPTION_EXTRA, DESCRIBE_EXTRA, REC_TEMPLATES, BRIEF_REGION_CAPTION_TEMPLATES, GROUNDED_CAPTION_TEMPLATES,
             KINDS, COLOR_NAMES, GROUNDING_PREFIX, REFER_MARKUP, "<p></p><roi></roi>", "there is no in the image")


def _lexicon_words(evaluation_only: bool) -> set[str]:
    """Lower-case words (``[a-z]+``) of the evaluation-only ('~') lexicon entries, or of all the others."""
    return {w for entry in _strings(_LEXICONS) if entry.startswith("~") == evaluation_only
            for w in re.findall(r"[a-z]+", entry.lower())}


def training_words() -> set[str]:
    """Every lower-case word (``[a-z]+``) that training-split language can contain: the lexicons' entries
    without the evaluation-only ('~') ones, and the templates' words. (Typos aside.)"""
    return _lexicon_words(evaluation_only=False)


def _pick(rng: random.Random, entries: list[str], split: str) -> str:
    """One entry of a lexicon slot for ``split`` (see the module docstring), without its '~'."""
    train = [e for e in entries if not e.startswith("~")]
    held = [e[1:] for e in entries if e.startswith("~")]
    if split == "train":
        return rng.choice(train)
    if split != "eval":
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if held and rng.random() < 0.5:
        return rng.choice(held)
    return rng.choice(train + held)


def _canon(entries: list[str]) -> str:
    return entries[0].lstrip("~")


# --------------------------------------------------------------------------------------------------
# Structured referents and the resolver
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """A structured description of one object.

    ``kind``: a catalogue kind, an absent noun (negatives), or None (any kind: "the blue one",
    "the leftmost object"). ``color``: a colour name or None.
    ``size``: 'small'/'large' or None (for a lone candidate: its size word; among several: the
    clearly smallest/largest). ``relation``: ``(rel, anchor)`` with rel in ``RELATION_WORDS``, or
    ``('between', anchor1, anchor2)``; anchors are Refs. ``ordinal``: ``(n, side)``, 1-based, side
    'left'/'right' (counted by box centre). ``superlative``: a key of ``SUPERLATIVE_PRE``.
    """

    kind: str | None
    color: str | None = None
    size: str | None = None
    relation: tuple | None = None
    ordinal: tuple[int, str] | None = None
    superlative: str | None = None


# thresholds (fractions of the image width for image-space tests; metres otherwise)
LR_TRUE, LR_FALSE = 0.06, 0.01
DEPTH_TRUE, DEPTH_FALSE = 0.06, 0.015
NEXT_TRUE, NEXT_FALSE = 0.08, 0.2
ORDER_GAP = 0.03
SIZE_RATIO, AREA_RATIO = 1.2, 1.3


def _u(o: SceneObject) -> float:
    return o.box_center[0]


def _lin_size(o: SceneObject) -> float:
    w, d, h = o.dimensions_3d
    return float((w * d * h) ** (1 / 3))


def _gap(a: SceneObject, b: SceneObject) -> float:
    """Distance between two footprints on the table (metres; footprints as discs)."""
    ra = max(a.dimensions_3d[0], a.dimensions_3d[1]) / 2
    rb = max(b.dimensions_3d[0], b.dimensions_3d[1]) / 2
    return float(np.hypot(a.base_world[0] - b.base_world[0], a.base_world[1] - b.base_world[1]) - ra - rb)


def _tri(value: float, true_above: float, false_below: float) -> bool | None:
    """Three-valued test: True above ``true_above``, False below ``false_below``, else None."""
    if value > true_above:
        return True
    if value < false_below:
        return False
    return None


def relation_holds(scene: Scene, rel: str, a: SceneObject, anchors: list[SceneObject]) -> bool | None:
    """Whether ``a`` stands in ``rel`` to the anchor object(s): True, False or None (borderline)."""
    W = scene.intrinsics.width
    if rel == "between":
        b, c = anchors
        p = np.array(a.base_world)
        pb, pc = np.array(b.base_world), np.array(c.base_world)
        seg = pc - pb
        s = float(np.dot(p - pb, seg) / max(np.dot(seg, seg), 1e-9))
        perp = float(np.linalg.norm(p - (pb + s * seg)))
        ra = max(a.dimensions_3d[:2]) / 2
        if 0.2 < s < 0.8 and perp < 0.06 + ra:
            return True
        if s < 0.0 or s > 1.0 or perp > 0.2 + ra:
            return False
        return None
    (b,) = anchors
    if rel == "left_of":
        return _tri((_u(b) - _u(a)) / W, LR_TRUE, LR_FALSE)
    if rel == "right_of":
        return _tri((_u(a) - _u(b)) / W, LR_TRUE, LR_FALSE)
    if rel == "in_front_of":
        return _tri(b.center_3d[2] - a.center_3d[2], DEPTH_TRUE, DEPTH_FALSE)
    if rel == "behind":
        return _tri(a.center_3d[2] - b.center_3d[2], DEPTH_TRUE, DEPTH_FALSE)
    if rel == "next_to":
        g = _gap(a, b)
        return True if g < NEXT_TRUE else False if g > NEXT_FALSE else None
    raise ValueError(f"unknown relation {rel!r}")


def _superlative_key(scene: Scene, sup: str):
    """(key, margin): the object with the smallest key wins; it must lead by ``margin``."""
    W = scene.intrinsics.width
    return {
        "leftmost": (lambda o: _u(o), ORDER_GAP * W),
        "rightmost": (lambda o: -_u(o), ORDER_GAP * W),
        "closest": (lambda o: o.center_3d[2], 0.05),
        "farthest": (lambda o: -o.center_3d[2], 0.05),
    }[sup]


def _extreme_size(cands: list[SceneObject], largest: bool) -> SceneObject | None:
    """The clearly largest (smallest) candidate in 3D *and* in the image, or None if unclear."""
    sgn = -1.0 if largest else 1.0
    order = sorted(cands, key=lambda o: sgn * _lin_size(o))
    best, second = order[0], order[1]
    lo_s, hi_s = sorted((_lin_size(best), _lin_size(second)))
    a_best, a_second = best.box_area, second.box_area
    area_ok = (a_best >= AREA_RATIO * a_second) if largest else (a_second >= AREA_RATIO * a_best)
    pix_ok = all((o.box_area < a_best) if largest else (o.box_area > a_best) for o in order[1:])
    if hi_s >= SIZE_RATIO * lo_s and area_ok and pix_ok:
        return best
    return None


def resolve(scene: Scene, ref: Ref) -> tuple[list[int], bool]:
    """Objects of ``scene`` that ``ref`` describes, and whether the answer is *clear* (no
    borderline relation, order or size decided it). A usable referring expression gives
    ``([target], True)``; a usable negative gives ``([], True)``."""
    cands = [o for o in scene.objects if ref.kind in (None, o.kind) and ref.color in (None, o.color)]
    clear = True
    if ref.relation is not None:
        rel, *anchor_refs = ref.relation
        anchors = []
        for ar in anchor_refs:
            idx, ok = resolve(scene, ar)
            if len(idx) != 1 or not ok:
                return [], False
            anchors.append(scene.objects[idx[0]])
        kept = []
        for o in cands:
            if any(o.index == a.index for a in anchors):
                continue
            r = relation_holds(scene, rel, o, anchors)
            if r is None:
                clear = False
            elif r:
                kept.append(o)
        cands = kept
    if ref.size is not None and cands:
        if len(cands) == 1:
            cands = cands if cands[0].size_word == ref.size else []
        else:
            best = _extreme_size(cands, largest=ref.size == "large")
            if best is None:
                return [], False
            cands = [best]
    if ref.superlative is not None and len(cands) > 1:
        if ref.superlative in ("largest", "smallest"):
            best = _extreme_size(cands, largest=ref.superlative == "largest")
            if best is None:
                return [], False
            cands = [best]
        else:
            key, margin = _superlative_key(scene, ref.superlative)
            order = sorted(cands, key=key)
            if key(order[1]) - key(order[0]) < margin:
                return [], False
            cands = [order[0]]
    if ref.ordinal is not None:
        n, side = ref.ordinal
        order = sorted(cands, key=_u, reverse=side == "right")
        us = [_u(o) for o in order]
        if any(abs(b - a) < ORDER_GAP * scene.intrinsics.width for a, b in zip(us, us[1:])):
            return [], False
        cands = [order[n - 1]] if n <= len(order) else []
    return [o.index for o in cands], clear


def _unique(scene: Scene, ref: Ref, target: int) -> bool:
    idx, clear = resolve(scene, ref)
    return clear and idx == [target]


def _nothing(scene: Scene, ref: Ref) -> bool:
    idx, clear = resolve(scene, ref)
    return clear and not idx


# --------------------------------------------------------------------------------------------------
# Choosing referents
# --------------------------------------------------------------------------------------------------


def _simple_refs(scene: Scene, t: int) -> list[Ref]:
    """Attribute-only descriptions of object ``t`` that are unique."""
    o = scene.objects[t]
    size = o.size_word if o.size_word != "medium" else None
    opts = [Ref(o.kind), Ref(o.kind, o.color)]
    if size:
        opts += [Ref(o.kind, size=size), Ref(o.kind, o.color, size=size)]
    else:
        opts += [Ref(o.kind, size=s) for s in ("small", "large")] + [Ref(o.kind, o.color, size=s) for s in ("small", "large")]
    opts.append(Ref(None, o.color))
    seen, out = set(), []
    for r in opts:
        if r not in seen and _unique(scene, r, t):
            seen.add(r)
            out.append(r)
    return out


def candidate_refs(scene: Scene, t: int) -> dict[str, list[Ref]]:
    """All unique descriptions of object ``t`` this generator knows, by type: 'simple'
    (attributes), 'relation', 'between', 'ordinal', 'superlative'. Cached in ``scene.meta``
    (a scene's truth does not change), so drawing many samples from one scene stays cheap."""
    cache = scene.meta.setdefault("language_refs", {})
    if t not in cache:
        cache[t] = _candidate_refs(scene, t)
    return cache[t]


def _candidate_refs(scene: Scene, t: int) -> dict[str, list[Ref]]:
    o = scene.objects[t]
    out: dict[str, list[Ref]] = {"simple": _simple_refs(scene, t)}
    heads = [Ref(o.kind), Ref(o.kind, o.color), Ref(None, o.color), Ref(None)]
    anchors: dict[int, Ref] = {}
    for a in scene.objects:
        if a.index != t:
            simple = [r for r in _simple_refs(scene, a.index) if r.size is None and r.kind is not None]
            if simple:
                anchors[a.index] = simple[-1]  # colour + kind: also informative for the reader
    rels = []
    for ai, aref in anchors.items():
        for rel in RELATION_WORDS:
            for h in heads:
                r = replace(h, relation=(rel, aref))
                if _unique(scene, r, t):
                    rels.append(r)
    out["relation"] = rels
    betw = []
    keys = sorted(anchors)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            for h in heads:
                r = replace(h, relation=("between", anchors[a], anchors[b]))
                if _unique(scene, r, t):
                    betw.append(r)
    out["between"] = betw
    ords, sups = [], []
    for h in heads:
        n_same = sum(1 for x in scene.objects if h.kind in (None, x.kind) and h.color in (None, x.color))
        if n_same < 2:
            continue
        for side in ("left", "right"):
            for n in range(1, min(n_same, 5) + 1):
                r = replace(h, ordinal=(n, side))
                if _unique(scene, r, t):
                    ords.append(r)
        for sup in SUPERLATIVE_PRE:
            r = replace(h, superlative=sup)
            if _unique(scene, r, t):
                sups.append(r)
    out["ordinal"] = ords
    out["superlative"] = sups
    return out


REF_TYPE_WEIGHTS = {"simple": 0.35, "relation": 0.25, "between": 0.07, "ordinal": 0.15, "superlative": 0.18}


def ref_form(ref: Ref) -> str:
    """The form of a description, one of ``REF_TYPE_WEIGHTS``'s keys: 'between' or 'relation' when it
    names an anchor, else 'ordinal', 'superlative' or 'simple' (kind, colour and size only)."""
    if ref.relation is not None:
        return "between" if ref.relation[0] == "between" else "relation"
    if ref.ordinal is not None:
        return "ordinal"
    return "superlative" if ref.superlative is not None else "simple"


def choose_ref(scene: Scene, t: int, rng: random.Random, plain_share: float = 0.0) -> Ref | None:
    """A random unique description of object ``t`` (types weighted by ``REF_TYPE_WEIGHTS``); with chance
    ``plain_share`` its bare colour and kind ("the blue mug") when that singles it out."""
    cands = candidate_refs(scene, t)
    if plain_share and rng.random() < plain_share:
        o = scene.objects[t]
        if Ref(o.kind, o.color) in cands["simple"]:
            return Ref(o.kind, o.color)
    types = [k for k, v in cands.items() if v]
    if not types:
        return None
    k = rng.choices(types, weights=[REF_TYPE_WEIGHTS[x] for x in types])[0]
    return rng.choice(cands[k])


# --------------------------------------------------------------------------------------------------
# Realisation
# --------------------------------------------------------------------------------------------------


def _np_core(ref: Ref, rng: random.Random | None, split: str) -> tuple[str, str]:
    """(adjectives, noun) of a description's head, e.g. ('small blue', 'coffee mug')."""
    if ref.kind is None:
        noun = _canon(GENERIC_NOUNS) if rng is None else _pick(rng, GENERIC_NOUNS, split)
        if noun == "one" and not (ref.color or ref.size or ref.superlative or ref.ordinal):
            noun = "object"
        ref = replace(ref, kind="mug")  # for the adjectives below; the noun is already chosen
    else:
        noun = None
    if rng is None:
        noun = noun or (_canon(KIND_WORDS[ref.kind]) if ref.kind in KIND_WORDS else ref.kind.lstrip("~"))
        adj = [_canon(SIZE_WORDS[ref.size])] if ref.size else []
        adj += [_canon(COLOR_WORDS[ref.color])] if ref.color else []
        return " ".join(adj), noun
    noun = noun or (_pick(rng, KIND_WORDS[ref.kind], split) if ref.kind in KIND_WORDS else ref.kind.lstrip("~"))
    adj = [_pick(rng, SIZE_WORDS[ref.size], split)] if ref.size else []
    adj += [_pick(rng, COLOR_WORDS[ref.color], split)] if ref.color else []
    return " ".join(adj), noun


def _head(ref: Ref, rng: random.Random | None, split: str) -> str:
    """Noun phrase without article for the attribute part: 'blue mug', 'mug that is blue'."""
    adj, noun = _np_core(ref, rng, split)
    if not adj:
        return noun
    if rng is not None and ref.color and not ref.size and rng.random() < 0.15:
        colour = adj
        return _pick(rng, COLOUR_FRAMES, split).format(n=noun, c=colour)
    return f"{adj} {noun}"


def realize(ref: Ref, rng: random.Random | None = None, split: str = "train", article: str | None = None) -> str:
    """Text for ``ref``. Without ``rng``: the canonical wording (first lexicon entries, fixed
    frames), e.g. ``"the second blue mug from the left"``. With ``rng``: varied wording from
    ``split``'s lexicon pool."""
    canon = rng is None
    art = article if article is not None else ("the" if canon or rng.random() < 0.85 else rng.choice(["that", "the", "this"]))
    if ref.ordinal is not None:
        n, side = ref.ordinal
        core_adj, noun = _np_core(ref, rng, split)
        np_ = f"{core_adj} {noun}".strip()
        if canon:
            return f"the {ORDINAL_CANON[n - 1]} {np_} from the {side}"
        ordw = rng.choice(ORDINAL_WORDS[n - 1]) if n > 1 or rng.random() < 0.5 else rng.choice(["first", "1st"])
        return _pick(rng, ORDINAL_FRAMES, split).format(ord=ordw, np=np_, side=side)
    if ref.superlative is not None:
        head = _head(ref, rng, split)
        if canon:
            return f"the {SUPERLATIVE_PRE[ref.superlative][0]} {head}"
        if rng.random() < 0.55:
            return f"the {_pick(rng, SUPERLATIVE_PRE[ref.superlative], split)} {head}"
        return f"the {head} {_pick(rng, SUPERLATIVE_POST[ref.superlative], split)}"
    head = _head(ref, rng, split)
    out = f"{art} {head}" if art else head
    if ref.relation is not None:
        rel, *anchors = ref.relation
        sub = [realize(a, rng, split) for a in anchors]
        if rel == "between":
            frame = BETWEEN_WORDS[0] if canon else _pick(rng, BETWEEN_WORDS, split)
            rel_txt = frame.format(a=sub[0], b=sub[1])
        else:
            rel_txt = _canon(RELATION_WORDS[rel]) if canon else _pick(rng, RELATION_WORDS[rel], split)
            rel_txt = f"{rel_txt} {sub[0]}"
        if not canon and rng.random() < 0.3:
            return f"{out} {_pick(rng, RELATIVE_LINKS, split)} {rel_txt}"
        return f"{out} {rel_txt}"
    return out


# --------------------------------------------------------------------------------------------------
# Surface noise: casing, punctuation, typos
# --------------------------------------------------------------------------------------------------

_KEYS = "qwertyuiopasdfghjklzxcvbnm"


def _typo(word: str, rng: random.Random) -> str:
    """One character-level slip in ``word`` (swap, drop, double or a neighbouring key)."""
    if len(word) < 4 or not word.isalpha():
        return word
    i = rng.randrange(1, len(word) - 1)
    op = rng.randrange(4)
    if op == 0:
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    if op == 1:
        return word[:i] + word[i + 1 :]
    if op == 2:
        return word[:i] + word[i] + word[i:]
    k = _KEYS.find(word[i].lower())
    near = _KEYS[max(k - 1, 0)] if k > 0 and rng.random() < 0.5 else _KEYS[min(k + 1, len(_KEYS) - 1)]
    return word[:i] + near + word[i + 1 :]


def _noisy(text: str, rng: random.Random, typo_p: float = 0.15) -> str:
    """With probability ``typo_p`` one (rarely two) typos; random casing and end punctuation."""
    words = text.split(" ")
    if rng.random() < typo_p:
        long_words = [i for i, w in enumerate(words) if len(w) >= 4]
        for i in rng.sample(long_words, min(len(long_words), 1 if rng.random() < 0.8 else 2)):
            words[i] = _typo(words[i], rng)
    text = " ".join(words)
    r = rng.random()
    if r < 0.45:
        text = text[:1].upper() + text[1:]
    elif r < 0.5:
        text = text.upper()
    if not text.endswith("?"):
        text += rng.choice(["", "", ".", ".", "!"])
    return text


_NOT_IMPERATIVE = ("{", "i ", "where ", "which ", "can i ")


def _command_text(frame: str, core: str, rng: random.Random, split: str) -> str:
    """Wrap a command ``core`` (``'grab the blue mug'``, made from ``frame``) in politeness and
    fillers (a polite prefix only before an imperative verb), then add surface noise."""
    r = rng.random()
    imperative = not frame.startswith(_NOT_IMPERATIVE) and not core.endswith("?")
    if imperative and r < 0.35:
        core = f"{_pick(rng, POLITE_PRE, split)} {core}"
    elif not core.endswith("?") and r < 0.55:
        core = f"{core} {_pick(rng, POLITE_POST, split)}"
    elif imperative and r < 0.62:
        core = f"{_pick(rng, POLITE_PRE, split)} {core} {_pick(rng, POLITE_POST, split)}"
    if rng.random() < 0.06:  # a hesitation somewhere inside
        words = core.split(" ")
        i = rng.randrange(1, len(words)) if len(words) > 1 else 0
        core = " ".join(words[:i] + [_pick(rng, HESITATIONS, split)] + words[i:])
    if rng.random() < 0.06:
        core = re.sub(r"\bthe ", "", core, count=1)  # telegraphic: 'grab blue mug'
    if rng.random() < 0.08:
        core = f"{_pick(rng, PREAMBLES, split)} {core}"
    return _noisy(core, rng)


# --------------------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------------------


def render_answer(answer: list[Span], region_ids: dict[int, int] | None = None) -> str:
    """Groma markup of an answer: grounded spans become ``<p>text</p><roi><rK></roi>`` (bare
    ``<roi><rK></roi>`` when the text is empty), with ``K = region_ids[object index]`` (default:
    the object index). For display and tests; the trainer maps objects to region tokens itself."""
    out = []
    for s in answer:
        if not s.object_indices:
            out.append(s.text)
            continue
        rois = "".join(f"<r{(region_ids or {}).get(i, i)}>" for i in s.object_indices)
        out.append(f"<p>{s.text}</p><roi>{rois}</roi>" if s.text else f"<roi>{rois}</roi>")
    return "".join(out)


def _indefinite(np_: str) -> str:
    """``'a blue mug'``, ``'an orange can'``."""
    return ("an " if np_[:1] in "aeiou" else "a ") + np_


def _negative_text(worded: str) -> str:
    """The answer to a description that matches nothing, in the description's own words (as a command's
    answer names its target), its article dropped: ``'the azure cup'`` -> ``'There is no azure cup in the image.'``."""
    first, _, rest = worded.strip().partition(" ")
    core = rest if first.lower() in ARTICLES and rest else worded.strip()
    return f"There is no {core} in the image."


def _rec_query(expr: str, rng: random.Random, split: str) -> str:
    official = list(REC_TEMPLATES)
    tmpl = rng.choice(official) if rng.random() < 0.5 else _pick(rng, official + REC_EXTRA, split)
    if rng.random() < 0.05:
        expr = _noisy(expr, rng, typo_p=0.3).rstrip(".!")
    return tmpl.format(f"<p>{expr}</p>")


def _negative_ref(scene: Scene, rng: random.Random, split: str) -> Ref | None:
    """A description that matches no object: absent kind, absent colour-kind pair, an ordinal past
    the count ("the third mug from the left" with two mugs) or an impossible relation."""
    present = {o.kind for o in scene.objects}
    mode = rng.random()
    if mode < 0.25:
        absent = [k for k in KINDS if k not in present]
        pool = absent + [n for n in ABSENT_NOUNS if split == "eval" or not n.startswith("~")]
        kind = rng.choice(pool)
        color = rng.choice(list(COLOR_WORDS)) if kind in KIND_WORDS and rng.random() < 0.6 else None
        return Ref(kind, color)
    if mode < 0.65:
        for _ in range(20):
            kind = rng.choice(sorted(present))
            color = rng.choice(list(COLOR_WORDS))
            r = Ref(kind, color)
            if _nothing(scene, r):
                return _dressed_negative(scene, r, rng)
        return None
    if mode < 0.8:  # one or two places past the last object of a kind (or colour and kind) present
        heads = sorted({Ref(o.kind) for o in scene.objects} | {Ref(o.kind, o.color) for o in scene.objects},
                       key=lambda r: (r.kind, r.color or ""))
        rng.shuffle(heads)
        for head in heads:
            count = sum(1 for o in scene.objects if o.kind == head.kind and head.color in (None, o.color))
            n = count + rng.choice((1, 1, 2))
            if n > len(ORDINAL_WORDS):
                continue
            r = replace(head, ordinal=(n, rng.choice(("left", "right"))))
            if _nothing(scene, r):
                return r
        return None
    # impossible relation: an existing kind, a real anchor, no object of that kind in that relation
    objs = list(scene.objects)
    rng.shuffle(objs)
    for o in objs:
        for a in scene.objects:
            if a.index == o.index:
                continue
            aref = _anchor_ref(scene, a.index)
            if aref is None:
                continue
            rels = list(RELATION_WORDS)
            rng.shuffle(rels)
            for rel in rels:
                r = Ref(o.kind, relation=(rel, aref))
                if _nothing(scene, r):
                    return r
    return None


def _dressed_negative(scene: Scene, r: Ref, rng: random.Random) -> Ref:
    """An absent colour-kind pair, at times as a superlative ("the largest purple mug") or between two real
    objects, so that no form of description is always one of something there (positives come in every form)."""
    mode = rng.random()
    if mode < 0.3:
        return replace(r, superlative=rng.choice(list(SUPERLATIVE_PRE)))
    if mode < 0.4:
        anchors = [a for a in (_anchor_ref(scene, o.index) for o in scene.objects) if a is not None]
        if len(anchors) >= 2:
            a, b = rng.sample(anchors, 2)
            dressed = replace(r, relation=("between", a, b))
            if _nothing(scene, dressed):
                return dressed
    return r


def _anchor_ref(scene: Scene, index: int) -> Ref | None:
    """A unique colour-and-kind description of object ``index`` without a size, None if it has none."""
    return next((r for r in _simple_refs(scene, index)[::-1] if r.size is None and r.kind is not None), None)


def _two_targets(scene: Scene, rng: random.Random) -> tuple[int, int, str] | None:
    """(moved, destination, relation) for a two-target command."""
    objs = scene.objects
    pairs = []
    for a in objs:
        for b in objs:
            if a.index == b.index:
                continue
            if a.kind in PUTTABLE and b.kind in CONTAINERS_IN and _lin_size(a) < 0.8 * _lin_size(b) and a.kind != "book":
                pairs.append((a.index, b.index, "in"))
            if a.kind in PUTTABLE and b.kind in SUPPORTS_ON and _lin_size(a) < 1.2 * _lin_size(b):
                pairs.append((a.index, b.index, "on"))
            pairs.append((a.index, b.index, "next_to"))
            pairs.append((a.index, b.index, "and"))
    if not pairs:
        return None
    by_rel: dict[str, list] = {}
    for p in pairs:
        by_rel.setdefault(p[2], []).append(p)
    rel = rng.choice(sorted(by_rel))
    return rng.choice(by_rel[rel])


def sample_language(scene: Scene, rng: random.Random, task: str | None = None, split: str = "train",
                    plain_share: float = 0.0) -> LanguageSample:
    """One sample of ``task`` (random by ``TASK_WEIGHTS`` if None) for ``scene``, worded from the
    ``split`` pool ('train' or 'eval'); ``plain_share``: see :func:`choose_ref`. Falls back to
    another task when the scene cannot support the requested one: 'rec', else 'negative_rec' (e.g.
    'command2' in a one-object scene; the returned ``task`` field tells which was made)."""
    if task is None:
        task = rng.choices(TASKS, weights=[TASK_WEIGHTS[t] for t in TASKS])[0]
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    for fallback in (task, "rec", "negative_rec"):
        for _ in range(8):
            s = _make(scene, rng, fallback, split, plain_share)
            if s is not None:
                return s
    raise RuntimeError(f"could not make a {task!r} sample for scene {scene.seed}")


def _make(scene: Scene, rng: random.Random, task: str, split: str, plain_share: float) -> LanguageSample | None:
    n = len(scene.objects)
    if task in ("rec", "command"):
        t = rng.randrange(n)
        ref = choose_ref(scene, t, rng, plain_share)
        if ref is None:
            return None
        if task == "rec":
            q = _rec_query(realize(ref, rng, split), rng, split)
            return LanguageSample(task, q, [Span("", [t])], [], [t], split, {"refs": [ref]})
        expr = realize(ref, rng, split, article=None if rng.random() < 0.9 else "")
        frame = _pick(rng, COMMAND_FRAMES, split)
        q = GROUNDING_PREFIX + _command_text(frame, frame.format(x=expr), rng, split)
        return LanguageSample(task, q, [Span(expr, [t])], [], [t], split, {"refs": [ref], "referent_texts": [expr]})
    if task == "command2":
        pick = _two_targets(scene, rng)
        if pick is None:
            return None
        a, b, rel = pick
        ra, rb = choose_ref(scene, a, rng, plain_share), choose_ref(scene, b, rng, plain_share)
        if ra is None or rb is None:
            return None
        frame = _pick(rng, COMMAND2_FRAMES[rel], split)
        xa, xb = realize(ra, rng, split), realize(rb, rng, split)
        q = GROUNDING_PREFIX + _command_text(frame, frame.format(x=xa, y=xb), rng, split)
        ans = [Span(xa, [a]), Span(ANSWER_JOIN[rel], []), Span(xb, [b])]
        return LanguageSample(task, q, ans, [], [a, b], split, {"refs": [ra, rb], "relation": rel,
                                                                "referent_texts": [xa, xb]})
    if task == "caption":
        t = rng.randrange(n)
        o = scene.objects[t]
        tmpl = rng.choice(BRIEF_REGION_CAPTION_TEMPLATES) if rng.random() < 0.6 else _pick(
            rng, list(BRIEF_REGION_CAPTION_TEMPLATES) + CAPTION_EXTRA, split)
        size = f"{o.size_word} " if o.size_word != "medium" else ""
        cap = _indefinite(f"{size}{o.color} {o.kind}").capitalize() + "."
        return LanguageSample(task, tmpl.format(REFER_MARKUP), [Span(cap, [])], [t], [t], split, {})
    if task == "describe":
        tmpl = rng.choice(GROUNDED_CAPTION_TEMPLATES) if rng.random() < 0.4 else _pick(
            rng, list(GROUNDED_CAPTION_TEMPLATES) + DESCRIBE_EXTRA, split)
        order = sorted(range(n), key=lambda i: _u(scene.objects[i]))
        ans: list[Span] = []
        for k, i in enumerate(order):
            o = scene.objects[i]
            phrase = _indefinite(f"{o.color} {o.kind}")
            if k == 0:
                phrase = phrase.capitalize()
            elif k == len(order) - 1:
                ans.append(Span(" and ", []))
            else:
                ans.append(Span(", ", []))
            ans.append(Span(phrase, [i]))
        ans.append(Span(".", []))
        return LanguageSample(task, GROUNDING_PREFIX + tmpl, ans, [], order, split, {})
    if task in ("negative_rec", "negative_command"):
        ref = _negative_ref(scene, rng, split)
        if ref is None:
            return None
        text = realize(ref, rng, split)
        if task == "negative_rec":
            q = _rec_query(text, rng, split)
        else:
            if rng.random() < 0.2:  # a two-target command whose second target is missing
                t = rng.randrange(n)
                other = choose_ref(scene, t, rng)
                if other is None:
                    return None
                frame = _pick(rng, COMMAND2_FRAMES["and"] + COMMAND2_FRAMES["next_to"], split)
                core = frame.format(x=realize(other, rng, split), y=text)
            else:
                frame = _pick(rng, COMMAND_FRAMES, split)
                core = frame.format(x=text)
            q = GROUNDING_PREFIX + _command_text(frame, core, rng, split)
        return LanguageSample(task, q, [Span(_negative_text(text), [])], [], [], split,
                              {"refs": [ref], "referent_texts": [text]})
    raise ValueError(task)  # pragma: no cover


def eval_samples(scene: Scene, rng: random.Random, split: str = "eval", per_task: int = 1) -> list[LanguageSample]:
    """``per_task`` samples of every task in ``TASKS`` order, for evaluation (held-out wording by
    default)."""
    return [sample_language(scene, rng, task, split) for task in TASKS for _ in range(per_task)]


# --------------------------------------------------------------------------------------------------
# Word variation for training: other words in the user's slots, echoed by the answer
# --------------------------------------------------------------------------------------------------

def held_out_words() -> set[str]:
    """Every lower-case word of the evaluation-only ('~') lexicon entries that training text never contains."""
    return _lexicon_words(evaluation_only=True) - training_words()


def substitute_words(sample: LanguageSample, replacements: dict[str, str]) -> LanguageSample:
    """``sample`` with whole words replaced (``{"mug": "teacup", "white": "ivory-white"}``) in its query, its
    answer and its referent texts alike, since answers echo the user's words.

    Matching ignores case and keeps a capital first letter; a word inside another word or inside a markup
    token (the ``box`` of ``<refer_box>``) is left alone. Structured referents (``meta['refs']``) are kept.
    """
    if not replacements:
        return sample
    pattern = re.compile(r"(?<![A-Za-z_<])(" + "|".join(map(re.escape, sorted(replacements, key=len, reverse=True)))
                         + r")(?![A-Za-z_>])", re.IGNORECASE)

    def swap(match: re.Match) -> str:
        new = replacements[match.group(1).lower()]
        return new[:1].upper() + new[1:] if match.group(1)[:1].isupper() else new

    def text(value: str) -> str:
        return pattern.sub(swap, value)

    meta = dict(sample.meta)
    if "referent_texts" in meta:
        meta["referent_texts"] = [text(t) for t in meta["referent_texts"]]
    return replace(sample, query=text(sample.query), answer=[Span(text(s.text), s.object_indices) for s in sample.answer],
                   meta=meta)
