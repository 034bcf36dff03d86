"""Training runs end to end (the 'smoke' preset: a few steps of every stage) and its output loads."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest
import torch

from groma_core.model import GromaModel, TokenIds
from groma_core.pipeline import GromaPipeline
from groma_core.presets import tiny_config
from groma_core.tokenizer import IGNORE_INDEX
from groma_core.train import (
    PRESETS,
    CachedScene,
    _label_region_list,
    _region_list_start,
    _language_batch,
    build_region_cache,
    build_tokenizer,
    calibrate_projections,
    run_training,
)
from groma_core.world import render_scene


def test_every_stage_runs_resumes_and_writes_a_loadable_checkpoint(tmp_path):
    final = run_training("smoke", tmp_path / "run", seed=3)
    info = json.loads((final / "training.json").read_text())
    assert info["command"].startswith("groma train --preset smoke --seed 3")
    for stage in (1, 2, 3):
        assert (tmp_path / "run" / f"stage{stage}.pt").is_file()
    pipe = GromaPipeline.from_pretrained(final)
    frame = pipe.encode(render_scene(1).image)
    assert 1 <= len(frame.regions) <= pipe.model.config.max_region_num
    assert len(pipe.ground(frame, "pick up the blue mug", max_new_tokens=3).token_ids) <= 3
    # a resumed run finds every stage done and writes the same weights again
    again = run_training("smoke", tmp_path / "run", seed=3, resume=True)
    assert (again / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()


def _tokens() -> TokenIds:
    return TokenIds(bos=1, eos=2, pad=0, image=500, region=501, refer_box=502, refer_feat=503, ground_box=504,
                    region_index_first=600)


def test_region_list_labels_supervise_only_the_region_index_tokens():
    tokens = _tokens()
    # "x <region> y <r1>" with <region> expanded for 3 regions: x <r0> R <r1> R <r2> R y <r1>
    ids = torch.tensor([7, tokens.region, 8, 601])
    labels = torch.tensor([IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 601])
    expanded, lab = GromaModel(tiny_config(400)).expand_ids(ids, 3, tokens, labels)
    assert expanded.tolist() == [7, 600, 501, 601, 501, 602, 501, 8, 601]
    assert _region_list_start(expanded, tokens) == 1
    out = _label_region_list(expanded, lab, 1, 3)
    assert out.tolist() == [IGNORE_INDEX, 600, IGNORE_INDEX, 601, IGNORE_INDEX, 602, IGNORE_INDEX, IGNORE_INDEX, 601]
    assert lab.tolist()[1] == IGNORE_INDEX  # the input labels are left alone


def test_calibrated_projections_write_at_a_workable_scale_and_keep_stage1_features():
    torch.manual_seed(0)
    model = GromaModel(tiny_config(400))
    cfg = model.config
    c, r = cfg.vision.hidden_size, cfg.options.region_roi_size
    # stage-1 features are large (norms in the hundreds); random stand-ins of that size
    cache = [CachedScene(scene=None, merged=30 * torch.randn(model.num_image_tokens, 4 * c),
                         flat=30 * torch.randn(6, c * r * r), boxes=torch.rand(6, 4) * 0.5 + 0.25, object_region=[])
             for _ in range(4)]
    roi = model.region_encoder.roi_align
    with torch.no_grad():
        before = torch.cat([sum(roi.project(i.flat, i.boxes)[1:]) for i in cache])
        calibrate_projections(model, cache, output_std=0.1)
        after = torch.cat([sum(roi.project(i.flat, i.boxes)[1:]) for i in cache])
        regions = torch.cat([roi.project(i.flat, i.boxes)[0] for i in cache])
        images = torch.cat([model.img_txt_bridge(i.merged) for i in cache])
    assert after.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-3)  # unit-scale input to updims
    torch.testing.assert_close(after * before.norm() / after.norm(), before, rtol=1e-4, atol=1e-3)  # same up to scale
    for out in (regions, images):
        assert 0.03 < out.std().item() < 0.15


def test_short_batches_start_at_the_region_list_with_the_same_supervision(tmp_path):
    tokenizer = build_tokenizer(tmp_path / "tok", PRESETS["smoke"], seed=1)
    model = GromaModel(tiny_config(tokenizer.base_vocab_size)).eval()
    tokens = TokenIds.from_lookup(tokenizer.token_to_id)
    settings = dataclasses.replace(PRESETS["smoke"], cache_scenes=2, lm_batch=2)
    cache = build_region_cache(model, settings, seed=1)
    with torch.no_grad():
        full = _language_batch(model, tokenizer, tokens, cache, random.Random(4), ("rec",), settings)
        short = _language_batch(model, tokenizer, tokens, cache, random.Random(4), ("rec",), settings, short=True)
    cut = full[0].shape[1] - short[0].shape[1]
    assert cut > model.num_image_tokens  # system prompt, first round and image tokens are gone
    r0 = model.embed_ids(torch.tensor([tokens.region_index_first]))[0]
    for i in range(2):
        torch.testing.assert_close(short[0][i, 0], r0)
        assert short[2][i].tolist() == full[2][i, cut:].tolist()  # every supervised token kept
