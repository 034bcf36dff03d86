"""Language from scenes: formats, unique referents (checked by an independent resolver),
negatives that match nothing, every task produced, held-out wording only in the eval split."""

from __future__ import annotations

import random
import re
from difflib import SequenceMatcher

import numpy as np
import pytest

from groma_core import language as L
from groma_core.language import TASKS, Ref, Span, eval_samples, render_answer, resolve, sample_language
from groma_core.prompts import GROUNDING_PREFIX, REFER_MARKUP
from groma_core.world import render_scene

SEEDS = list(range(10))


@pytest.fixture(scope="module")
def scenes():
    return [render_scene(s) for s in SEEDS]


# ---------------------------------------------------------------- an independent checker
# Deliberately written differently from language.resolve: plain loops, and each test splits the
# difference between the generator's "clearly true" and "clearly false" margins, so anything
# the generator calls unique must also be unique here.


def _matches(scene, ref: Ref) -> list[int]:
    W = scene.intrinsics.width
    objs = scene.objects

    def u(o):
        return (o.box_xyxy[0] + o.box_xyxy[2]) / 2

    def z(o):
        return o.center_3d[2]

    def size(o):
        return float(np.prod(o.dimensions_3d)) ** (1 / 3)

    def gap(a, b):
        ra, rb = max(a.dimensions_3d[:2]) / 2, max(b.dimensions_3d[:2]) / 2
        return float(np.hypot(*(np.subtract(a.base_world, b.base_world)))) - ra - rb

    pool = [o for o in objs if ref.kind in (None, o.kind) and ref.color in (None, o.color)]
    if ref.relation:
        rel = ref.relation[0]
        anchors = []
        for ar in ref.relation[1:]:
            m = _matches(scene, ar)
            assert len(m) == 1, "anchor must be unique"
            anchors.append(objs[m[0]])
        kept = []
        for o in pool:
            if o.index in [a.index for a in anchors]:
                continue
            a = anchors[0]
            if rel == "left_of":
                ok = u(a) - u(o) > 0.035 * W
            elif rel == "right_of":
                ok = u(o) - u(a) > 0.035 * W
            elif rel == "in_front_of":
                ok = z(a) - z(o) > 0.0375
            elif rel == "behind":
                ok = z(o) - z(a) > 0.0375
            elif rel == "next_to":
                ok = gap(o, a) < 0.14
            else:  # between: the footprint centre projects inside the segment and near it
                p, b, c = (np.array(x.base_world) for x in (o, anchors[0], anchors[1]))
                s = np.dot(p - b, c - b) / np.dot(c - b, c - b)
                ok = 0.1 < s < 0.9 and np.linalg.norm(p - (b + s * (c - b))) < 0.13 + max(o.dimensions_3d[:2]) / 2
            if ok:
                kept.append(o)
        pool = kept
    if ref.size and pool:
        if len(pool) == 1:
            pool = [o for o in pool if o.size_word == ref.size]
        else:
            pool = [max(pool, key=size) if ref.size == "large" else min(pool, key=size)]
    if ref.superlative and len(pool) > 1:
        key = {
            "leftmost": u, "rightmost": lambda o: -u(o), "closest": z, "farthest": lambda o: -z(o),
            "largest": lambda o: -size(o), "smallest": size,
        }[ref.superlative]
        pool = [min(pool, key=key)]
    if ref.ordinal:
        n, side = ref.ordinal
        pool = sorted(pool, key=u, reverse=side == "right")
        pool = pool[n - 1 : n]
    return [o.index for o in pool]


def _samples(scenes, split="train", per=40):
    rng = random.Random(1)
    out = []
    for sc in scenes:
        for _ in range(per):
            out.append((sc, sample_language(sc, rng, split=split)))
    return out


# ---------------------------------------------------------------- tests


def test_every_task_is_produced(scenes):
    seen = {s.task for _, s in _samples(scenes)}
    assert seen == set(TASKS)
    rng = random.Random(0)
    for sc in scenes:
        got = eval_samples(sc, rng)
        assert [s.task for s in got] == list(TASKS)
        assert all(s.split == "eval" for s in got)


def test_formats(scenes):
    for sc, s in _samples(scenes):
        n = len(sc.objects)
        assert all(0 <= i < n for i in s.target_indices + s.refer_indices)
        assert all(isinstance(sp, Span) for sp in s.answer)
        if s.task in ("rec", "negative_rec"):
            assert re.search(r"<p>[^<>]+</p>", s.query) and not s.query.startswith(GROUNDING_PREFIX)
        if s.task == "rec":
            assert len(s.answer) == 1 and s.answer[0].text == "" and s.answer[0].object_indices == s.target_indices
            assert render_answer(s.answer) == f"<roi><r{s.target_indices[0]}></roi>"
        if s.task in ("command", "command2", "describe", "negative_command"):
            assert s.query.startswith(GROUNDING_PREFIX) and "<p>" not in s.query
        if s.task == "command":
            assert len(s.answer) == 1 and s.answer[0].object_indices == s.target_indices
        if s.task == "command2":
            assert [sp.object_indices for sp in s.answer] == [[s.target_indices[0]], [], [s.target_indices[1]]]
            assert s.target_indices[0] != s.target_indices[1]
        if s.task in ("command", "command2"):  # each target is named by the command's own words for it
            phrases = [sp.text for sp in s.answer if sp.object_indices]
            assert phrases == s.meta["referent_texts"]
            for phrase in phrases:  # (the command itself may carry typos and other casing)
                assert SequenceMatcher(None, phrase.lower(), s.query.lower()).find_longest_match().size >= min(
                    len(phrase) // 3, 8), (phrase, s.query)
        if s.task == "caption":
            o = sc.objects[s.refer_indices[0]]
            assert s.query.count(REFER_MARKUP) == 1 and s.target_indices == s.refer_indices
            text = s.answer[0].text
            assert o.kind in text and o.color in text and text.endswith(".") and not s.answer[0].object_indices
        if s.task == "describe":
            grounded = [sp.object_indices[0] for sp in s.answer if sp.object_indices]
            assert sorted(grounded) == list(range(n)) and grounded == s.target_indices
        if s.task.startswith("negative"):
            assert s.target_indices == [] and all(not sp.object_indices for sp in s.answer)
            assert s.answer[0].text.startswith("There is no ")
        # answers stay short: a tiny LLM generates them
        if s.task != "describe":
            assert len(render_answer(s.answer)) < (200 if s.task == "command2" else 120)


def test_expressions_refer_uniquely(scenes):
    n_rel = n_ord = n_sup = 0
    for sc, s in _samples(scenes, per=60):
        if s.task not in ("rec", "command", "command2"):
            continue
        for ref, t in zip(s.meta["refs"], s.target_indices):
            assert resolve(sc, ref) == ([t], True)
            assert _matches(sc, ref) == [t], (ref, t)
            n_rel += ref.relation is not None
            n_ord += ref.ordinal is not None
            n_sup += ref.superlative is not None
    assert n_rel > 20 and n_ord > 5 and n_sup > 10, (n_rel, n_ord, n_sup)


def test_negatives_match_nothing(scenes):
    n = 0
    for sc, s in _samples(scenes, per=60):
        if not s.task.startswith("negative"):
            continue
        for ref in s.meta["refs"]:
            assert resolve(sc, ref) == ([], True)
            if ref.kind in L.KIND_WORDS:
                assert _matches(sc, ref) == [], ref
            n += 1
    assert n > 30


def test_negatives_in_every_form(scenes):
    """Absent kinds, absent colours, impossible relations, ordinals past the count, superlatives and 'between'
    of absent things all occur, each answered in the question's own words."""
    forms = set()
    for sc, s in _samples(scenes, per=80):
        if not s.task.startswith("negative"):
            continue
        ref = s.meta["refs"][0]
        worded = s.meta["referent_texts"][0]
        assert s.answer[0].text.startswith("There is no ") and s.answer[0].text.endswith(" in the image.")
        assert s.answer[0].text[len("There is no "):-len(" in the image.")] in worded
        forms.add(L.ref_form(ref))
        if ref.ordinal:
            n, side = ref.ordinal
            assert n > sum(1 for o in sc.objects if o.kind == ref.kind and ref.color in (None, o.color))
        elif ref.relation is None and ref.superlative is None:
            forms.add("kind" if ref.kind not in {o.kind for o in sc.objects} else "colour")
    assert forms == {"ordinal", "relation", "between", "superlative", "simple", "kind", "colour"}


def test_deterministic_given_rng(scenes):
    a = [sample_language(scenes[0], random.Random(5)) for _ in range(1)]
    b = [sample_language(scenes[0], random.Random(5)) for _ in range(1)]
    assert a == b


def _held_out_words() -> set[str]:
    words = set()
    lex = [L.COMMAND_FRAMES, L.REC_EXTRA, L.POLITE_PRE, *L.KIND_WORDS.values(), *L.COLOR_WORDS.values()]
    for entries in lex:
        for e in entries:
            if e.startswith("~"):
                words.add(e[1:].replace("{x}", "").replace("{}", "").strip(" ,?.").lower())
    return {w for w in words if w}


def test_eval_wording_is_held_out(scenes):
    held = _held_out_words()
    train_text = " ".join(s.query.lower() for _, s in _samples(scenes, "train", 60))
    eval_text = " ".join(s.query.lower() for _, s in _samples(scenes, "eval", 60))
    # single-word held-out entries never occur as whole words in train queries
    for w in held:
        if " " not in w and "-" not in w:
            assert not re.search(rf"\b{re.escape(w)}\b", train_text), w
    hits = sum(1 for w in held if w in eval_text)
    assert hits > len(held) // 3, (hits, len(held))
    with pytest.raises(ValueError):
        sample_language(scenes[0], random.Random(0), split="test")


def test_wording_varies(scenes):
    queries = [s.query for _, s in _samples(scenes, per=30) if s.task == "command"]
    assert len(set(queries)) > 0.9 * len(queries)
    verbs = {q.removeprefix(GROUNDING_PREFIX).split(" ")[0].lower().strip(",") for q in queries}
    assert len(verbs) > 15


def test_one_object_scene_falls_back():
    sc = render_scene(3, min_objects=1, max_objects=1)
    assert len(sc.objects) == 1
    rng = random.Random(0)
    got = {sample_language(sc, rng, task).task for task in TASKS for _ in range(3)}
    assert "command2" not in got and {"rec", "caption", "describe", "negative_rec"} <= got
