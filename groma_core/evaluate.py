"""``groma eval``: accuracy of a model on synthetic scenes it never saw in training.

Per scene: proposer recall@0.5 over all objects, then one sample of each task drawn with the held-out
wording split ('eval' mixes phrasings the training data never contains):

- REC: the first region named has IoU >= 0.5 with the target;
- command: the same for a one-target robot command;
- two-target command: the first box of the first two grounded phrases match the two targets in order
  (also reported: the first right, the second right, and the same region named for both);
- not found: a REC query or command for something absent names no region;
- caption: a caption of the target's true box contains its kind and colour words;
- plain command: ``pipe.ground(frame, "pick up the blue mug")``, the canonical words for an object whose
  colour and kind no other object shares (the demo's case), names its box;
- false "not found": a REC query or a one- or two-target command for objects that are there is answered
  "not found" (a model that says "not found" more often scores higher on "not found" and this tells it).

REC and one-target commands together are also broken down by the form of the description
(``language.ref_form``: simple attributes, relation, between, ordinal, superlative), and their misses by what
was named instead (:func:`miss_kind`); "not found" by why nothing matches (:func:`negative_form`).
"""

from __future__ import annotations

import random
import statistics
import time

import torch
from tqdm import tqdm

from . import language
from .pipeline import GromaPipeline
from .world import render_scene


def box_iou(a, b) -> float:
    """IoU of two pixel xyxy boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _named_boxes(grounding) -> list:
    """The first box of every phrase that names a region, in order."""
    return [p.boxes_xyxy[0] for p in grounding.phrases if p.boxes_xyxy]


def miss_kind(scene, target_index: int, boxes) -> str | None:
    """What a REC / command answer named instead of its target: None when right (the first of ``boxes``, pixel
    xyxy, has IoU >= 0.5 with the target), ``not_found`` (no region),
    ``no_object`` (a region that is no object: IoU < 0.5 with every one), or the object it named, by what it
    shares with the target: ``same_kind_and_colour``, ``same_kind``, ``same_colour`` or ``other_object``."""
    if not boxes:
        return "not_found"
    ious = [box_iou(o.box_xyxy, boxes[0]) for o in scene.objects]
    if ious[target_index] >= 0.5:
        return None
    best = max(range(len(ious)), key=ious.__getitem__)
    if ious[best] < 0.5:
        return "no_object"
    named, target = scene.objects[best], scene.objects[target_index]
    same = (named.kind == target.kind, named.color == target.color)
    return {(True, True): "same_kind_and_colour", (True, False): "same_kind", (False, True): "same_colour",
            (False, False): "other_object"}[same]


MISS_KINDS = ("not_found", "no_object", "same_kind_and_colour", "same_kind", "same_colour", "other_object")


def negative_form(scene, ref: language.Ref) -> str:
    """Why the description ``ref`` of a "not found" query matches nothing in ``scene``: ``absent_kind`` (no
    object of its kind: "the kettle", "the blue cup" without cups), ``absent_colour`` (its kind is there in other
    colours: "the purple mug", also as a superlative or between two real objects), ``ordinal_past_count`` ("the
    third mug from the left" with two) or ``impossible_relation`` (its kind is there, but not in that relation)."""
    if ref.kind not in {o.kind for o in scene.objects}:
        return "absent_kind"
    if ref.ordinal is not None:
        return "ordinal_past_count"
    if ref.relation is not None and ref.relation[0] != "between":
        return "impossible_relation"
    return "absent_colour"


NEGATIVE_FORMS = ("absent_kind", "absent_colour", "ordinal_past_count", "impossible_relation")


def evaluate(pipe: GromaPipeline, n: int, seed_start: int, split: str = "eval", progress: bool = True) -> dict:
    hits = {k: [] for k in ("rec", "command", "command2", "command2_first", "command2_second", "command2_same",
                            "not_found", "false_not_found", "caption", "plain_command", "proposer_recall")}
    by_form: dict[str, list[bool]] = {form: [] for form in language.REF_TYPE_WEIGHTS}
    misses: dict[str, int] = dict.fromkeys(MISS_KINDS, 0)
    negatives: dict[str, list[bool]] = {form: [] for form in NEGATIVE_FORMS}
    latencies = {"encode": [], "query": []}
    rng = random.Random(seed_start)
    scenes = range(seed_start, seed_start + n)
    for seed in tqdm(scenes, desc="eval", disable=not progress):
        scene = render_scene(seed)
        t0 = time.perf_counter()
        frame = pipe.encode(scene.image)
        latencies["encode"].append(time.perf_counter() - t0)
        regions = [r.box_xyxy for r in frame.regions]
        for obj in scene.objects:
            hits["proposer_recall"].append(max((box_iou(obj.box_xyxy, r) for r in regions), default=0.0) >= 0.5)

        def run(sample, refer=None):
            t = time.perf_counter()
            g = pipe.run_query(frame, sample.query, refer)
            latencies["query"].append(time.perf_counter() - t)
            return g

        # sample_language falls back to another task when the scene cannot support the one asked
        # for; such a sample is drawn (so that later draws stay as they were) but not counted.
        for task in ("rec", "command"):
            sample = language.sample_language(scene, rng, task, split)
            if sample.task != task:
                continue
            grounding = run(sample)
            hits["false_not_found"].append(not grounding.found)
            miss = miss_kind(scene, sample.target_indices[0], _named_boxes(grounding))
            hits[task].append(miss is None)  # the first region named has IoU >= 0.5 with the target
            if miss is not None:
                misses[miss] += 1
            by_form[language.ref_form(sample.meta["refs"][0])].append(hits[task][-1])
        sample = language.sample_language(scene, rng, "command2", split)
        if sample.task == "command2":
            grounding = run(sample)
            hits["false_not_found"].append(not grounding.found)
            boxes = _named_boxes(grounding)
            targets = [scene.objects[i].box_xyxy for i in sample.target_indices]
            right = [len(boxes) > i and box_iou(boxes[i], targets[i]) >= 0.5 for i in (0, 1)]
            hits["command2"].append(all(right))
            hits["command2_first"].append(right[0])
            hits["command2_second"].append(right[1])
            hits["command2_same"].append(len(boxes) >= 2 and boxes[0] == boxes[1])  # NMS leaves no two regions alike
        for task in ("negative_rec", "negative_command"):
            sample = language.sample_language(scene, rng, task, split)
            if sample.task != task:
                continue
            hits["not_found"].append(not run(sample).found)
            negatives[negative_form(scene, sample.meta["refs"][0])].append(hits["not_found"][-1])
        sample = language.sample_language(scene, rng, "caption", split)
        obj = scene.objects[sample.refer_indices[0]]
        caption = run(sample, [obj.box_xyxy]).answer.lower()
        hits["caption"].append(obj.kind in caption and obj.color in caption)
        # a generator of its own, seeded by the scene: the samples drawn above stay those of earlier versions
        unique = [o for o in scene.objects if sum((x.kind, x.color) == (o.kind, o.color) for x in scene.objects) == 1]
        if unique:
            obj = random.Random(seed).choice(unique)
            boxes = _named_boxes(pipe.ground(frame, f"pick up {language.realize(language.Ref(obj.kind, obj.color))}"))
            hits["plain_command"].append(bool(boxes) and box_iou(boxes[0], obj.box_xyxy) >= 0.5)

    def rate(values):
        return round(sum(values) / len(values), 4) if values else None

    return {
        "scenes": n,
        "seed_start": seed_start,
        "split": split,
        "rec_acc_at_0.5": rate(hits["rec"]),
        "command_acc_at_0.5": rate(hits["command"]),
        "two_target_both_right": rate(hits["command2"]),
        "two_target_first_right": rate(hits["command2_first"]),
        "two_target_second_right": rate(hits["command2_second"]),
        "two_target_same_region_twice": rate(hits["command2_same"]),
        "not_found_correct": rate(hits["not_found"]),
        "caption_kind_and_colour": rate(hits["caption"]),
        "plain_command_acc_at_0.5": rate(hits["plain_command"]),
        "false_not_found": rate(hits["false_not_found"]),
        "proposer_recall_at_0.5": rate(hits["proposer_recall"]),
        "grounding_by_form": {form: {"acc_at_0.5": rate(v), "n": len(v)} for form, v in by_form.items()},
        # share of all REC queries and one-target commands missed each way (they sum to 1 - accuracy)
        "misses_by_what_was_named": {k: round(v / max(1, len(hits["rec"]) + len(hits["command"])), 4)
                                     for k, v in misses.items()},
        "not_found_by_form": {form: {"correct": rate(v), "n": len(v)} for form, v in negatives.items()},
        "counts": {k: len(v) for k, v in hits.items()},
        "encode_median_ms": round(statistics.median(latencies["encode"]) * 1000, 1),
        "query_median_ms": round(statistics.median(latencies["query"]) * 1000, 1),
        "torch_threads": torch.get_num_threads(),
    }

