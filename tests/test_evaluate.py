"""``groma eval`` on the embedded model: every task counted once per scene, rates consistent with each other."""

from __future__ import annotations

import pytest

from groma_core.evaluate import MISS_KINDS, NEGATIVE_FORMS, box_iou, evaluate, miss_kind, negative_form
from groma_core import language
from groma_core.language import Ref, ref_form
from groma_core.pipeline import GromaPipeline
from groma_core.train import EVAL_SEED_START
from groma_core.world import render_scene


@pytest.fixture(scope="module")
def pipe():
    return GromaPipeline.from_pretrained(None)


def test_eval_counts_every_task_and_its_rates_agree(pipe):
    n = 3
    result = evaluate(pipe, n, EVAL_SEED_START, progress=False)
    scenes = [render_scene(EVAL_SEED_START + i) for i in range(n)]
    with_unique = sum(any(sum((x.kind, x.color) == (o.kind, o.color) for x in sc.objects) == 1 for o in sc.objects)
                      for sc in scenes)
    assert result["counts"] == {"rec": n, "command": n, "command2": n, "command2_first": n, "command2_second": n,
                                "command2_same": n, "not_found": 2 * n, "false_not_found": 3 * n, "caption": n,
                                "plain_command": with_unique, "proposer_recall": sum(len(sc.objects) for sc in scenes)}
    # a query answered "not found" names no box, so it is no REC or command hit
    assert result["false_not_found"] * 3 + result["rec_acc_at_0.5"] + result["command_acc_at_0.5"] <= 3 + 1e-6
    both = result["two_target_both_right"]
    assert both <= min(result["two_target_first_right"], result["two_target_second_right"])
    # proposer recall, recomputed here from the same scenes
    found = total = 0
    for scene in scenes:
        regions = [r.box_xyxy for r in pipe.encode(scene.image).regions]
        for obj in scene.objects:
            total += 1
            found += max(box_iou(obj.box_xyxy, r) for r in regions) >= 0.5
    assert result["proposer_recall_at_0.5"] == round(found / total, 4)
    assert result["split"] == "eval" and result["scenes"] == n
    # REC and one-target commands, by the form of their description: each query counted once
    forms = result["grounding_by_form"]
    assert sum(f["n"] for f in forms.values()) == 2 * n
    right = sum(f["acc_at_0.5"] * f["n"] for f in forms.values() if f["n"])
    assert right == pytest.approx((result["rec_acc_at_0.5"] + result["command_acc_at_0.5"]) * n, abs=1e-3)
    # every miss counted once, by what was named instead
    misses = result["misses_by_what_was_named"]
    assert set(misses) == set(MISS_KINDS)
    assert sum(misses.values()) == pytest.approx(1 - (result["rec_acc_at_0.5"] + result["command_acc_at_0.5"]) / 2,
                                                 abs=1e-3)
    # every "not found" query counted once, by why nothing matches
    negatives = result["not_found_by_form"]
    assert set(negatives) == set(NEGATIVE_FORMS) and sum(f["n"] for f in negatives.values()) == 2 * n
    right = sum(f["correct"] * f["n"] for f in negatives.values() if f["n"])
    assert right == pytest.approx(result["not_found_correct"] * 2 * n, abs=1e-3)


def test_eval_counts_a_sample_only_under_the_task_it_was_made_for(pipe, monkeypatch):
    """sample_language falls back to another task when a scene cannot support the one asked for:
    a positive 'rec' sample made in place of a "not found" one must not count as a "not found"."""
    made = language.sample_language

    def no_negative_commands(scene, rng, task=None, split="train", plain_share=0.0):
        return made(scene, rng, "rec" if task == "negative_command" else task, split, plain_share)

    monkeypatch.setattr(language, "sample_language", no_negative_commands)
    result = evaluate(pipe, 2, EVAL_SEED_START, progress=False)
    assert result["counts"]["not_found"] == 2  # the negative_rec ones only
    assert sum(f["n"] for f in result["not_found_by_form"].values()) == 2
    assert result["counts"]["rec"] == result["counts"]["command"] == 2


@pytest.mark.parametrize("ref, form", [
    (Ref("mug", "blue"), "simple"), (Ref("mug", size="large"), "simple"),
    (Ref("mug", relation=("left_of", Ref("bottle", "red"))), "relation"),
    (Ref(None, relation=("between", Ref("can"), Ref("box"))), "between"),
    (Ref("bottle", ordinal=(2, "left")), "ordinal"), (Ref("box", superlative="largest"), "superlative")])
def test_ref_form_names_what_the_description_uses(ref, form):
    assert ref_form(ref) == form


def test_box_iou_of_pixel_boxes():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0


def test_miss_kind_says_what_a_wrong_answer_named():
    scene = render_scene(EVAL_SEED_START)
    objects = scene.objects
    target = 0
    assert miss_kind(scene, target, [objects[target].box_xyxy]) is None
    assert miss_kind(scene, target, []) == "not_found"
    assert miss_kind(scene, target, [(0.0, 0.0, 1.0, 1.0)]) == "no_object"
    for i, o in enumerate(objects[1:], start=1):
        if box_iou(o.box_xyxy, objects[target].box_xyxy) >= 0.5:
            continue
        expected = {(True, True): "same_kind_and_colour", (True, False): "same_kind", (False, True): "same_colour",
                    (False, False): "other_object"}[(o.kind == objects[target].kind, o.color == objects[target].color)]
        assert miss_kind(scene, target, [o.box_xyxy]) == expected


def test_negative_form_says_why_nothing_matches():
    scene = next(s for s in map(render_scene, range(EVAL_SEED_START, EVAL_SEED_START + 50)) if len(s.objects) >= 2)
    kinds = {o.kind for o in scene.objects}
    o, other = scene.objects[0], scene.objects[1]
    assert negative_form(scene, Ref("kettle")) == "absent_kind"
    absent = next(k for k in ("mug", "bottle", "can", "box", "book", "bowl", "ball", "plate") if k not in kinds)
    assert negative_form(scene, Ref(absent, "blue")) == "absent_kind"
    assert negative_form(scene, Ref(o.kind, "purple")) == "absent_colour"
    assert negative_form(scene, Ref(o.kind, "purple", superlative="largest")) == "absent_colour"
    assert negative_form(scene, Ref(o.kind, "purple", relation=("between", Ref(other.kind), Ref(o.kind)))) == "absent_colour"
    assert negative_form(scene, Ref(o.kind, ordinal=(5, "left"))) == "ordinal_past_count"
    assert negative_form(scene, Ref(o.kind, relation=("left_of", Ref(other.kind, other.color)))) == "impossible_relation"


def test_every_negative_the_language_makes_has_a_form():
    """The eval split's negatives, over many scenes: each of the four forms occurs (none is unreachable)."""
    import random

    from groma_core import language

    rng = random.Random(0)
    seen = set()
    for seed in range(EVAL_SEED_START, EVAL_SEED_START + 60):
        scene = render_scene(seed)
        for task in ("negative_rec", "negative_command"):
            sample = language.sample_language(scene, rng, task, "eval")
            if sample.task == task:
                seen.add(negative_form(scene, sample.meta["refs"][0]))
    assert seen == set(NEGATIVE_FORMS)
