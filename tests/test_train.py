"""Training runs end to end (the 'smoke' preset: a few steps of every stage) and its output loads."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import random
import re

import pytest
import torch
from safetensors.torch import save_file

from groma_core.checkpoint import read_state_dict
from groma_core.errors import CheckpointError
from groma_core.language import Ref, choose_ref, resolve
from groma_core.model import GromaModel, TokenIds
from groma_core.pipeline import GromaPipeline
from groma_core.presets import tiny_config
from groma_core.tokenizer import IGNORE_INDEX
from groma_core.train import (
    PRESETS,
    CachedScene,
    Markup,
    SUPERVISED_HEADS,
    _conversation,
    _label_region_list,
    _language_batch,
    _region_list_start,
    KEPT_ROWS_ATTENTION,
    PointerProbeHeads,
    SupervisedAttention,
    attention_loss,
    attention_targets,
    locate_text,
    build_region_cache,
    build_tokenizer,
    calibrate_projections,
    language_losses,
    object_attributes,
    load_vision_side,
    override_settings,
    run_training,
    unlearned_heads,
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
    # each supervised head's attention loss at the end of stages 2 and 3 (index_copy has targets in every batch)
    by_head = info["attention_loss_by_head"]
    assert set(by_head) == {"stage2", "stage3"}
    for summary in by_head.values():
        assert "index_copy" in summary and set(summary) <= set(SUPERVISED_HEADS)
        assert all(math.isfinite(v) and v >= 0 for v in summary.values())
    # a resumed run finds every stage done and writes the same weights (and summaries) again
    again = run_training("smoke", tmp_path / "run", seed=3, resume=True)
    assert (again / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()
    assert json.loads((again / "training.json").read_text())["attention_loss_by_head"] == by_head
    assert info["unlearned_heads"] == {stage: unlearned_heads(summary) for stage, summary in by_head.items()}


def test_a_verify_head_that_attends_to_every_region_alike_is_reported_unlearned():
    # measured at the end of stage 2 in two real runs (region_level_upscale 2/1/1, seeds 0 and 1)
    assert unlearned_heads({"pointer": 0.29, "verify": 1.63}) == ["verify"]
    assert unlearned_heads({"pointer": 0.41, "verify": 0.73}) == []
    assert unlearned_heads({"index_copy": 0.0}) == []  # a stage whose batches had no lookups


def test_a_run_can_take_its_vision_side_from_a_trained_checkpoint_instead_of_stage_1(tmp_path):
    first = run_training("smoke", tmp_path / "first", seed=3)
    second = run_training("smoke", tmp_path / "second", seed=4, vision_from=first)
    assert not (tmp_path / "second" / "stage1.pt").exists()  # stage 1 skipped
    info = json.loads((second / "training.json").read_text())
    assert f"--vision-from {first}" in info["command"] and len(info["vision_from"]["sha256"]) == 64
    a, b = read_state_dict(first), read_state_dict(second)
    frozen = [k for k in a if k.startswith(("perceiver.", "region_encoder.mlvl_fuse.", "region_encoder.roi_align.pconvs."))]
    assert frozen and all(torch.equal(a[k], b[k]) for k in frozen)
    assert not torch.equal(a["llm.lm_head.weight"], b["llm.lm_head.weight"])  # the language side trained anew
    partial = tmp_path / "partial"
    partial.mkdir()
    save_file({k: v for k, v in b.items() if k != frozen[0]}, str(partial / "model.safetensors"))
    with pytest.raises(CheckpointError, match="no vision side"):
        load_vision_side(GromaModel(tiny_config(500)), partial)


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


@pytest.fixture(scope="module")
def language_setup(tmp_path_factory):
    """(tokenizer, untrained model, token ids, smoke settings with a batch of 6, region cache of 3 scenes)."""
    tokenizer = build_tokenizer(tmp_path_factory.mktemp("tok"), PRESETS["smoke"], seed=1)
    model = GromaModel(tiny_config(tokenizer.base_vocab_size)).eval()
    settings = dataclasses.replace(PRESETS["smoke"], cache_scenes=3, lm_batch=6)
    with torch.no_grad():
        cache = build_region_cache(model, settings, seed=2)
    return tokenizer, model, TokenIds.from_lookup(tokenizer.token_to_id), settings, cache


def test_short_batches_start_at_the_region_list_with_the_same_supervision(language_setup):
    tokenizer, model, tokens, settings, cache = language_setup
    with torch.no_grad():
        full = _language_batch(model, tokenizer, tokens, cache, random.Random(4), {"rec": 1.0}, settings)
        short = _language_batch(model, tokenizer, tokens, cache, random.Random(4), {"rec": 1.0}, settings, short=True)
    cut = full.embeds.shape[1] - short.embeds.shape[1]
    assert cut > model.num_image_tokens  # system prompt, first round and image tokens are gone
    r0 = model.embed_ids(torch.tensor([tokens.region_index_first]))[0]
    for i in range(settings.lm_batch):
        torch.testing.assert_close(short.embeds[i, 0], r0)
        assert short.labels[i].tolist() == full.labels[i, cut:].tolist()  # every supervised token kept
    for name in SUPERVISED_HEADS:  # the same attention targets, shifted with the sequence
        shifted = full.attention[name] - torch.tensor([0, 0, cut, cut])
        assert short.attention[name].tolist() == shifted.tolist()
    for name in ("query_attributes", "region_slots", "pointers"):  # (batch, position, ...) rows, shifted too
        rows_full, rows_short = getattr(full, name), getattr(short, name)
        assert rows_short[:, 1].tolist() == (rows_full[:, 1] - cut).tolist()
        assert rows_short[:, 2:].tolist() == rows_full[:, 2:].tolist()


def test_conversations_have_between_min_rounds_and_max_rounds_rounds(language_setup):
    _, _, _, settings, cache = language_setup
    rng = random.Random(3)

    def rounds(low: int, high: int) -> set[int]:
        s = dataclasses.replace(settings, min_rounds=low, max_rounds=high)
        return {len(_conversation(cache[i % len(cache)], rng, {"rec": 1.0}, s, True).turns) for i in range(30)}

    assert rounds(4, 4) == {4}  # a REC answer is never empty, so no round is dropped
    assert rounds(1, 4) == {1, 2, 3, 4}


def test_bf16_language_losses_match_float32_and_give_float32_gradients(language_setup):
    tokenizer, model, tokens, settings, cache = language_setup
    model = copy.deepcopy(model).train()  # the fixture's model stays as it is
    model.llm.config._attn_implementation = KEPT_ROWS_ATTENTION
    supervised, probes = SupervisedAttention(model.llm), PointerProbeHeads(model.config.llm.hidden_size)
    losses = {}
    for bf16 in (False, True):
        batch = _language_batch(model, tokenizer, tokens, cache, random.Random(5), {"rec": 1.0, "command2": 1.0, "caption": 1.0},
                                settings)
        lm, by_head, probe = language_losses(model, probes, supervised,
                                             batch, dataclasses.replace(settings, bf16_language=bf16))
        (lm + sum(by_head.values()) + probe).backward()
        grad = model.llm.model.layers[0].mlp.up_proj.weight.grad
        assert lm.dtype == probe.dtype == grad.dtype == torch.float32 and grad.abs().sum() > 0
        losses[bf16] = [lm.item(), probe.item()] + [by_head[name].item() for name in sorted(by_head)]
        model.zero_grad()
    assert len(losses[True]) == 2 + len(SUPERVISED_HEADS)
    assert losses[True] != losses[False]  # the forward really ran in bfloat16 ...
    assert losses[True] == pytest.approx(losses[False], rel=0.02, abs=0.01)  # ... and computed the same losses


def test_pointer_rows_name_the_object_and_index_of_the_region_the_pointer_means(language_setup):
    tokenizer, model, tokens, settings, cache = language_setup
    with torch.no_grad():
        batch = _language_batch(model, tokenizer, tokens, cache, random.Random(0), {"rec": 1.0, "command": 1.0}, settings,
                                short=True)
        # every object's region feature, to recognise which object a <region> slot holds
        known = [(model.region_encoder.roi_align.project(item.flat.float(), item.boxes)[0][item.object_region[o]],
                  object_attributes(obj)) for item in cache for o, obj in enumerate(item.scene.objects)]
    pointers = {(b, q): k for _, b, q, k in batch.attention["pointer"].tolist()}
    assert len(batch.query_attributes) == len(pointers) > 0
    assert len(batch.attention["read_referent"]) > 0  # the commands' phrases read their words in the question
    for b, q, *attributes in batch.query_attributes.tolist():
        slot = batch.embeds[b, pointers[(b, q)]]
        assert any(torch.allclose(slot, f, atol=1e-5) and a == tuple(attributes) for f, a in known)
    r0 = tokens.region_index_first
    for b, q, k in batch.pointers.tolist():  # K is the answer's <rK>, and its slot is region K's
        assert batch.labels[b, q + 1] == r0 + k
        assert (b, pointers[(b, q)], k) in {tuple(row) for row in batch.region_slots.tolist()}
    for b, position, k in batch.region_slots.tolist():  # short sequences: <rK> just before region K's slot
        torch.testing.assert_close(batch.embeds[b, position - 1], model.embed_ids(torch.tensor([r0 + k]))[0])


def test_attention_targets_point_at_the_meant_region_its_phrase_and_the_caption_region():
    tokens = _tokens()
    markup = Markup(phrase_open=700, phrase_close=701, roi_open=702)
    R, F_, I, P, Q, O = tokens.region, tokens.refer_feat, IGNORE_INDEX, 700, 701, 702
    # region list of 3; a REC round answered <roi><r2>; a command round answered <p>x y</p><roi><r0><r1>;
    # a caption round about <refer_feat>; a round whose description matches nothing ("There is no ..." = 30 31)
    expanded = torch.tensor([1, 600, R, 601, R, 602, R, 10, 11, O, 602, 2,
                             12, 13, P, 14, 15, Q, O, 600, 601, 2,
                             16, F_, 17, 18, 2,
                             19, 30, 31, 2])
    labels = expanded.clone()
    labels[:9] = I
    labels[12:14] = I
    labels[22:25] = I
    labels[27:29] = I
    targets = attention_targets(expanded, labels, list_start=1, num_regions=3, tokens=tokens, markup=markup)
    assert targets["index_copy"] == [(2, [1]), (4, [3]), (6, [5])]  # <region> slot -> its <rK>
    # the positions predicting <r2>, <r0>, <r1> -> those regions' <region> slots
    assert targets["pointer"] == [(9, [6]), (18, [2]), (19, [4])]
    # REC: the question (7, 8 and the position predicting the answer's first token); command: its phrase
    assert targets["gather_phrase"] == [(9, [7, 8]), (18, [15, 16]), (19, [15, 16])]
    assert targets["read_refer"] == [(24, [23]), (25, [23])]  # only the caption round reads <refer_feat>
    assert targets["verify"] == []  # no lookups given

    # told what each round's answer names: at the position predicting a lookup answer's first token, the
    # named regions' slots, or the token after the region list (7) when nothing matches; captions are no lookup
    targets = attention_targets(expanded, labels, 1, 3, tokens, markup, lookups=[[2], [0, 1], None, []])
    assert targets["verify"] == [(8, [6]), (13, [2, 4]), (28, [7])]
    # and those positions gather their question (7, 8 / 12, 13 / 27, 28) besides the pointers' phrases
    assert targets["gather_phrase"] == [(8, [7, 8]), (9, [7, 8]), (13, [12, 13]), (18, [15, 16]), (19, [15, 16]),
                                        (28, [27, 28])]


def test_each_answer_phrase_reads_the_words_that_name_its_object_in_the_question():
    tokens = _tokens()
    markup = Markup(phrase_open=700, phrase_close=701, roi_open=702)
    pieces = ["<unk>", "<s>", "</s>"] + ["x"] * 7 + ["\u2581put", "\u2581the", "\u2581red", "\u2581ball", "\u2581in",
                                                   "\u2581blue", "\u2581bowl", "\u2581into"]
    R, I, P, Q, O = tokens.region, IGNORE_INDEX, 700, 701, 702
    # region list of 2; "put the red ball in the blue bowl" answered
    # <p>12 13</p><roi><r0></roi> into <p>15 16</p><roi><r1></roi></s>
    expanded = torch.tensor([1, 600, R, 601, R, 10, 11, 12, 13, 14, 11, 15, 16,
                             P, 12, 13, Q, O, 600, 17, P, 15, 16, Q, O, 601, 2])
    labels = expanded.clone()
    labels[:13] = I
    targets = attention_targets(expanded, labels, 1, 2, tokens, markup, [["the red ball", "the blue bowl"]], pieces)
    # from each <p> through the position predicting </p>: the words of its own object, not the other's
    assert targets["read_referent"] == [(q, [6, 7, 8]) for q in (13, 14, 15)] + [(q, [10, 11, 12]) for q in (20, 21, 22)]
    assert attention_targets(expanded, labels, 1, 2, tokens, markup)["read_referent"] == []  # no texts given


def test_locate_text_tolerates_typos_fillers_and_a_dropped_article_but_not_a_stray_word():
    words = ["\u2581system", "\u2581the", "\u2581prompt", "\u2581pick", "\u2581up", "\u2581tin", "\u2581um",
             "\u2581can", "\u2581behnd", "\u2581the", "\u2581Red", "\u2581mug"]
    ids = list(range(len(words)))
    assert locate_text(ids, ids, "the tin can behind the red mug", words) == [5, 6, 7, 8, 9, 10, 11]
    assert locate_text(ids, ids, "the green bottle", words) == []  # only "the " matches


def test_rec_phrase_gathering_starts_after_the_previous_turn():
    tokens = _tokens()
    markup = Markup(phrase_open=700, phrase_close=701, roi_open=702)
    I, O = IGNORE_INDEX, 702
    # region list of 2, the fixed first answer (unsupervised, ends with </s>), then a REC round
    expanded = torch.tensor([1, 600, tokens.region, 601, tokens.region, 20, 21, 2, 10, 11, O, 601, 2])
    labels = torch.tensor([I] * 10 + [O, 601, 2])
    targets = attention_targets(expanded, labels, list_start=1, num_regions=2, tokens=tokens, markup=markup)
    assert targets["pointer"] == [(10, [4])]
    assert targets["gather_phrase"] == [(10, [8, 9])]  # not the first answer's 20, 21


def test_attention_loss_is_the_negative_log_attention_mass_on_each_targets_keys():
    rows = {"pointer": torch.tensor([[0, 0, 3, 1], [2, 0, 4, 0], [2, 0, 4, 2]])}  # target 1 has no rows
    weights = {"pointer": torch.tensor([0.5, 0.2, 0.2])}
    expected = -(torch.log(torch.tensor(0.5)) + torch.log(torch.tensor(0.4))) / 2  # one head: sum = its mean
    assert attention_loss(weights, rows).item() == pytest.approx(expected.item())
    assert attention_loss({}, rows).item() == 0.0


@pytest.mark.parametrize("padded", [False, True])
def test_kept_attention_rows_equal_eager_attention_and_carry_gradients(padded: bool):
    """Training runs the LLM with fused attention and computes only the supervised rows' weights; they must
    be the rows eager attention returns (causal mask, left-over padding), and the loss must reach the weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    llm = LlamaForCausalLM(config)
    embeds = torch.randn(2, 12, 32)
    mask = torch.ones(2, 12, dtype=torch.long)
    if padded:
        mask[1, 9:] = 0
    rows = {name: torch.tensor([[0, 0, 5, 2], [0, 0, 5, 4], [1, 1, 8, 0], [2, 0, 11, 11]])
            for name in SUPERVISED_HEADS}
    llm.config._attn_implementation = "eager"
    eager = llm.model(inputs_embeds=embeds, attention_mask=mask, output_attentions=True).attentions
    llm.config._attn_implementation = KEPT_ROWS_ATTENTION
    supervised = SupervisedAttention(llm)
    supervised.keep(rows)
    out = llm.model(inputs_embeds=embeds, attention_mask=mask)
    weights = supervised.weights(rows)
    for name, (layer, head) in SUPERVISED_HEADS.items():
        r = rows[name]
        torch.testing.assert_close(weights[name], eager[layer][r[:, 1], head, r[:, 2], r[:, 3]], atol=1e-5, rtol=1e-4)
    llm.config._attn_implementation = "eager"
    again = llm.model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state, again, atol=1e-5, rtol=1e-4)  # the forward is unchanged
    attention_loss(weights, rows).backward()
    assert llm.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    supervised.release()
    assert llm.model.layers[0].self_attn.kept_rows is None




def test_set_overrides_the_presets_settings_with_typed_json_values():
    tiny = PRESETS["tiny"]
    s = override_settings(tiny, ["stage3_steps=1000", "region_level_upscale=[2,1,1]", "lm_lr=1", "word_vectors=false"])
    assert (s.stage3_steps, s.region_level_upscale, s.lm_lr, s.word_vectors) == (1000, (2, 1, 1), 1.0, False)
    assert s.stage2_steps == tiny.stage2_steps and override_settings(tiny, []) == tiny
    for bad, message in (("nothing=1", "NAME=VALUE"), ("stage3_steps", "NAME=VALUE"), ("stage3_steps=1.5", "like 1600"),
                         ("region_level_upscale=[2,1]", "like"), ("lm_lr=fast", "not JSON"),
                         ("region_level_upscale=[2,1.5,1]", "like"), ("min_rounds=7", "min_rounds <= max_rounds"),
                         ("min_rounds=0", "1 <= min_rounds")):
        with pytest.raises(ValueError, match=message):
            override_settings(tiny, [bad])
