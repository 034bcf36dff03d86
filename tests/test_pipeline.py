"""GromaPipeline behaviour, on the official-layout fixture checkpoint (random weights: plumbing, not quality)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from groma_core.errors import CheckpointError, GromaInputError
from groma_core.pipeline import GromaPipeline
from groma_core.world import render_scene


@pytest.fixture(scope="module")
def pipe(official_fixture_dir) -> GromaPipeline:
    return GromaPipeline.from_pretrained(official_fixture_dir / "checkpoint")


@pytest.fixture(scope="module")
def scene():
    return render_scene(3)


@pytest.fixture(scope="module")
def frame(pipe, scene):
    return pipe.encode(scene.image)


def test_encode_gives_regions_in_pixels_sorted_by_score(frame, scene):
    assert frame.width == 640 and frame.height == 480
    assert 1 <= len(frame.regions) <= 100
    scores = [r.score for r in frame.regions]
    assert scores == sorted(scores, reverse=True)  # deterministic order by default
    for k, r in enumerate(frame.regions):
        assert r.index == k and r.score > 0.15
        x1, y1, x2, y2 = r.box_xyxy
        assert x2 > x1 and y2 > y1


def test_prefix_reuse_gives_the_same_answer_as_recomputing_everything(pipe, frame, scene):
    reused = pipe.ground(frame, "pick up the blue mug", max_new_tokens=6)
    again = pipe.ground(frame, "pick up the blue mug", max_new_tokens=6)
    fresh = pipe.ground_without_reuse(scene.image, "pick up the blue mug", max_new_tokens=6)
    assert reused.token_ids == again.token_ids == fresh.token_ids
    assert len(reused.token_ids) == 6
    # the frame's prefix cache is left as it was
    assert frame.context.prefix_cache.get_seq_length() == len(
        pipe.model.expand_ids(torch.tensor(frame.context.prefix_ids), len(frame.regions), pipe.tokens)[0])


@pytest.mark.parametrize("distinct", [False, True])
def test_distinct_regions_masks_regions_already_named(pipe, frame, monkeypatch, distinct):
    """Logits that always rank <r0> > <r1> > </s> over everything else: the original decoding repeats <r0>;
    with ``distinct_regions`` the answer names <r0>, then <r1>, then ends."""
    r0, eos = pipe.tokens.region_index_token(0), pipe.tokens.eos

    def ranked(hidden):
        logits = torch.zeros(pipe.model.config.vocab_size)
        logits[[r0, r0 + 1, eos]] = torch.tensor([3.0, 2.0, 1.0])
        return logits

    monkeypatch.setattr(pipe.model, "lm_logits", ranked)
    monkeypatch.setattr(pipe.model.config.options, "distinct_regions", distinct)
    g = pipe.ground(frame, "put the ball in the bowl", max_new_tokens=5)
    assert g.token_ids == ([r0, r0 + 1] if distinct else [r0] * 5)


def test_boxes_of_phrases_come_from_the_frame_regions(pipe, frame):
    g = pipe.locate(frame, "the blue mug", max_new_tokens=8)
    for phrase in g.phrases:
        for k, box, score in zip(phrase.region_indices, phrase.boxes_xyxy, phrase.scores):
            assert box == frame.regions[k].box_xyxy and score == frame.regions[k].score
        assert g.answer[phrase.start:phrase.end] == phrase.text


def test_user_boxes_become_regions_with_score_one(pipe, frame):
    box = (470.4, 180.0, 553.6, 300.0)
    g = pipe.describe(frame, box, max_new_tokens=4)
    assert len(g.token_ids) <= 4
    context = pipe._context_with_boxes(frame, [box])
    k = context.selection.refer_indices[0]
    assert context.regions[k].score == 1.0
    assert np.allclose(context.regions[k].box_xyxy, box, atol=1e-3)
    g = pipe.ask(frame, "what is in region 1 next to region 0?", [box, (10, 10, 100, 100)], max_new_tokens=3)
    assert isinstance(g.raw_text, str)


def test_an_empty_command_with_one_box_asks_for_its_caption(pipe, frame):
    box = (470.4, 180.0, 553.6, 300.0)
    asked = pipe.ask(frame, "  ", [box], max_new_tokens=4)
    described = pipe.describe(frame, box, max_new_tokens=4)
    assert asked.query == described.query and asked.token_ids == described.token_ids
    with pytest.raises(GromaInputError):  # with two boxes nothing says which one
        pipe.ask(frame, "", [box, (10, 10, 100, 100)])


@pytest.mark.parametrize("bad", ["", "   \n\t ", 42, None, "x" * 100_000, "nul\x00byte"])
def test_bad_commands_are_input_errors(pipe, frame, bad):
    with pytest.raises(GromaInputError):
        pipe.ground(frame, bad)


def test_markup_typed_by_a_user_is_removed(pipe, frame):
    g = pipe.ground(frame, "<image><region> pick up <r3> the mug", max_new_tokens=2)
    assert g.query == "[grounding]pick up the mug"


@pytest.mark.parametrize("image", [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4), np.uint8),
                                   np.zeros((4, 4, 3), np.float32), "not an image"])
def test_bad_images_are_input_errors(pipe, image):
    with pytest.raises(GromaInputError):
        pipe.encode(image)


@pytest.mark.parametrize("box", [(10, 10, 5, 50), (0, 0, float("nan"), 3), (1, 2, 3)])
def test_bad_user_boxes_are_input_errors(pipe, frame, box):
    with pytest.raises(GromaInputError):
        pipe.describe(frame, box)


def test_missing_embedded_or_named_model_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError):
        GromaPipeline.from_pretrained(tmp_path / "nothing-here")


def test_thresholds_override_the_config(official_fixture_dir, scene):
    strict = GromaPipeline.from_pretrained(official_fixture_dir / "checkpoint", box_score_thres=0.3, max_region_num=5)
    frame = strict.encode(scene.image)
    assert 1 <= len(frame.regions) <= 5
    assert all(r.score > 0.3 for r in frame.regions) or len(frame.regions) == 1


def test_bench_reports_medians_and_the_prefix_reuse_speedup(official_fixture_dir):
    from groma_core.bench import run_bench

    result = run_bench(str(official_fixture_dir / "checkpoint"), repeats=1, command="pick up the blue mug")
    for key in ("encode_frame_median_ms", "ground_on_encoded_frame_median_ms", "ground_recompute_everything_median_ms"):
        assert result[key] > 0
    assert result["speedup_prefix_reuse"] == pytest.approx(
        result["ground_recompute_everything_median_ms"] / result["ground_on_encoded_frame_median_ms"], rel=0.02)
    assert "cpu" in result["device"]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_keeps_the_proposer_in_float32(official_fixture_dir, scene, dtype):
    pipe = GromaPipeline.from_pretrained(official_fixture_dir / "checkpoint", dtype=dtype)
    assert pipe.model.llm.lm_head.weight.dtype == getattr(torch, dtype)
    assert pipe.model.perceiver.ddetr_transformer.enc_output.weight.dtype == torch.float32
    assert pipe.model.perceiver.input_proj[0][0].weight.dtype == torch.float32
    frame = pipe.encode(scene.image)
    assert frame.regions
    assert len(pipe.ground(frame, "pick up the blue mug", max_new_tokens=3).token_ids) == 3
