"""Parity with the original implementation, checked against ``shared/fixtures/groma_official_tiny``.

The fixture holds a tiny checkpoint in the official layout and every intermediate tensor the original code
produced for one image and two queries (REC, region caption), plus tokenizer cases. Floats must agree to
``1e-4 * max|reference|`` (absolute); ids, indices and the region order exactly. The original's random
region order is injected from the recorded permutation (it depends on torch's RNG implementation).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import Tensor

from . import prompts
from .checkpoint import load_model
from .model import TokenIds
from .selection import select_regions
from .tokenizer import GromaTokenizer
from .vision import merge_2x2, normalize_pixels, resize_square

REL_TOL = 1e-4


@dataclass
class Check:
    group: str
    name: str
    ok: bool
    error: float | None = None  # max abs error (floats) or number of mismatches (ids)
    tolerance: float | None = None
    detail: str = ""


class ParityRun:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def close(self, group: str, name: str, ours: Tensor, ref: Tensor) -> None:
        ours, ref = ours.detach().float().cpu(), ref.detach().float().cpu()
        if ours.shape != ref.shape:
            self.checks.append(Check(group, name, False, detail=f"shape {tuple(ours.shape)} vs {tuple(ref.shape)}"))
            return
        err = float((ours - ref).abs().max()) if ref.numel() else 0.0
        tol = REL_TOL * max(float(ref.abs().max()) if ref.numel() else 0.0, 1e-6)
        self.checks.append(Check(group, name, err <= tol, err, tol))

    def equal(self, group: str, name: str, ours, ref) -> None:
        ours_l = ours.tolist() if isinstance(ours, Tensor) else ours
        ref_l = ref.tolist() if isinstance(ref, Tensor) else ref
        if ours_l == ref_l:
            self.checks.append(Check(group, name, True, 0))
            return
        detail = f"ours {str(ours_l)[:80]} vs ref {str(ref_l)[:80]}"
        mismatches = None
        if isinstance(ours_l, list) and isinstance(ref_l, list) and len(ours_l) == len(ref_l):
            mismatches = sum(a != b for a, b in zip(ours_l, ref_l))
        self.checks.append(Check(group, name, False, mismatches, 0, detail))


def run_parity(fixture: str | Path) -> list[Check]:
    """Run every parity check; returns the list (``ok`` False on any mismatch)."""
    with torch.no_grad():
        return _run_parity(Path(fixture))


def _run_parity(fixture: Path) -> list[Check]:
    cases = fixture / "cases"
    ckpt = fixture / "checkpoint"
    run = ParityRun()

    model = load_model(ckpt)
    tokenizer = GromaTokenizer.from_pretrained(ckpt)
    tokens = TokenIds.from_lookup(tokenizer.token_to_id)
    image_size = model.config.options.image_size

    # preprocessing
    pre = load_file(str(cases / "preprocess.safetensors"))
    image = np.asarray(Image.open(cases / "image.png").convert("RGB"))
    resized = resize_square(image, image_size, model.config.options.resize_filter)
    run.equal("preprocess", "resized 448 uint8", torch.from_numpy(resized.copy()).flatten(), pre["image_448_rgb_uint8"].flatten())
    pixels = normalize_pixels(resized)
    run.close("preprocess", "pixel_values", pixels, pre["pixel_values"])

    # vision, image tokens, proposer, fused region maps
    vis = load_file(str(cases / "vision.safetensors"))
    hidden = model.perceiver.encode_image(pre["pixel_values"])
    run.close("dinov2", "hidden states (all blocks)", torch.stack(hidden), vis["dinov2.hidden_states"])
    run.close("dinov2", "mean of last 4 blocks", torch.stack(hidden[-4:]).mean(0)[:, 1:], vis["dinov2.mean_last4_patch_tokens"])
    patch = model.image_patch_tokens(hidden)
    run.close("image tokens", "selected layer patches", patch, vis["image_tokens.selected_layer_patch_tokens"])
    run.close("image tokens", "2x2 merge", merge_2x2(patch, model.config.patch_grid), vis["image_tokens.merged_2x2"])
    image_tokens = model.project_image(hidden)
    run.close("image tokens", "bridge output", image_tokens, vis["image_tokens.projected"])
    run.close("proposer", "input map", model.perceiver.proposer_input(hidden), vis["proposer.input_nchw"])
    prop = model.perceiver.propose(hidden)
    for name, ours, key in (
        ("input_proj", prop.input_proj_out, "input_proj_out"),
        ("encoder output", prop.encoder_last_hidden_state, "encoder_last_hidden_state"),
        ("two-stage scores", prop.enc_outputs_class, "enc_outputs_class"),
        ("two-stage box logits", prop.enc_outputs_coord_logits, "enc_outputs_coord_logits"),
        ("initial references", prop.init_reference_points, "init_reference_points"),
        ("decoder hidden states", prop.intermediate_hidden_states, "intermediate_hidden_states"),
        ("decoder references (unused)", prop.intermediate_reference_points, "intermediate_reference_points"),
        ("boxes", prop.boxes, "pred_boxes_cxcywh"),
        ("coco logits", prop.layer_logits_coco[-1], "logits_coco"),
        ("sa1b logits", prop.layer_logits_sa1b[-1], "logits_sa1b"),
        ("fused scores", prop.scores, "scores_fused"),
    ):
        run.close("proposer", name, ours, vis[f"proposer.{key}"])
    fused = model.region_encoder.fuse(hidden)
    probe = vis["region_encoder.fuse_out_level0_probe_index_cyx"]
    level0 = fused[0][0]
    run.close("region fuse", "level 0 probes", level0[probe[:, 0], probe[:, 1], probe[:, 2]], vis["region_encoder.fuse_out_level0_probe_values"])
    run.close("region fuse", "level 0 channel mean", level0.mean((1, 2)), vis["region_encoder.fuse_out_level0_channel_mean"])
    run.close("region fuse", "level 0 channel std", level0.std((1, 2)), vis["region_encoder.fuse_out_level0_channel_std"])
    run.close("region fuse", "level 1", fused[1], vis["region_encoder.fuse_out_level1"])
    run.close("region fuse", "level 2", fused[2], vis["region_encoder.fuse_out_level2"])

    for case in ("case_a_rec", "case_b_region_caption"):
        _check_case(run, case, cases, model, tokenizer, tokens, hidden, prop, fused, image_tokens[0])
    _check_tokenizer(run, cases / "case_c_tokenizer.json", ckpt)
    return run.checks


def _check_case(run, case, cases, model, tokenizer, tokens, hidden, prop, fused, image_tokens) -> None:
    ref = load_file(str(cases / f"{case}.safetensors"))
    meta = json.loads((cases / f"{case}.json").read_text())
    group = case
    cfg = model.config
    refer = torch.tensor(meta["refer_boxes_cxcywh"], dtype=torch.float32) if meta["refer_boxes_cxcywh"] else None

    sel = select_regions(
        prop.boxes[0], prop.scores[0], nms_thres=cfg.nms_thres, score_thres=cfg.box_score_thres,
        max_num=cfg.max_region_num, refer_boxes=refer, permutation=ref["selection.permutation"],
    )
    run.equal(group, "NMS kept indices", sel.kept_indices, ref["selection.nms_keep_indices"])
    run.close(group, "selected boxes (recorded order injected)", sel.boxes, ref["selection.selected_boxes_cxcywh"])
    features, parts = model.region_encoder.roi_align(fused, [sel.boxes])
    run.close(group, "RoIAlign rois (cxcywh as xyxy)", model.region_encoder.roi_align.rois([sel.boxes]), ref["region_encoder.rois_as_passed_to_roi_align"])
    for level in range(3):
        run.close(group, f"RoIAlign level {level}", parts["pooled"][level][:2], ref[f"region_encoder.roi_align_level{level}_first2"])
    run.close(group, "flatten_linear", parts["flatten_linear_out"], ref["region_encoder.flatten_linear_out"])
    run.close(group, "pos_embedd", parts["pos_embedd_out"], ref["region_encoder.pos_embedd_out"])
    run.close(group, "updims input", parts["flatten_linear_out"] + parts["pos_embedd_out"], ref["region_encoder.updims_in"])
    run.close(group, "region features", features, ref["region_encoder.region_features"])
    refer_features = None
    if refer is not None:
        run.equal(group, "refer box -> region k", sel.refer_indices, ref["refer.index_k"])
        refer_features = features[sel.refer_indices]
        run.close(group, "refer-box feature", refer_features, ref["refer.region_feature"])

    prompt = prompts.build_prompt([(meta["query"], None)])
    run.equal(group, "prompt string", prompt, meta["prompt"])
    ids = tokenizer.encode(prompt)
    run.equal(group, "prompt ids", ids, meta["input_ids"])
    ids_t = tokens.substitute_refer_boxes(torch.tensor(ids), sel.refer_indices)
    run.equal(group, "prompt ids after <refer_box> -> <rK>", ids_t, meta["input_ids_after_generate_prefix"])
    expanded, _ = model.expand_ids(ids_t, len(sel.boxes), tokens)
    run.equal(group, "expanded ids", expanded, ref["llm.expanded_input_ids"][0])
    embeds = model.assemble_embeds(expanded, tokens, image_tokens, features, refer_features)
    run.close(group, "inputs_embeds", embeds, ref["llm.inputs_embeds"][0])
    out = model.llm.model(inputs_embeds=embeds[None], use_cache=True)
    run.close(group, "LLM last hidden (last position)", out.last_hidden_state[:, -1], ref["llm.last_hidden_state_last_position"])
    logits = model.lm_logits(out.last_hidden_state[0, -1])
    run.close(group, "logits (last position)", logits, ref["llm.logits_last_position"])

    # greedy decoding with a KV cache; also through a cached prefix, as the pipeline runs it
    max_new = meta["generate"]["max_new_tokens"]
    generated, top_ids, top_vals = _greedy(model, tokens, out, max_new)
    run.equal(group, "greedy ids", generated, meta["generate"]["generated_ids"])
    run.equal(group, "top-10 ids per step", top_ids, ref["generate.step_logits_top10_ids"])
    run.close(group, "top-10 logits per step", top_vals, ref["generate.step_logits_top10_values"])
    run.equal(group, "decoded text", tokenizer.decode(generated), meta["generate"]["decoded_skip_special_tokens_false"])

    prefix_ids = tokenizer.encode(prompts.build_prompt([]))
    run.equal(group, "prompt starts with the cached prefix", ids[: len(prefix_ids)], prefix_ids)
    n_prefix = len(model.expand_ids(torch.tensor(prefix_ids), len(sel.boxes), tokens)[0])
    prefix_out = model.llm.model(inputs_embeds=embeds[None, :n_prefix], use_cache=True)
    suffix_out = model.llm.model(inputs_embeds=embeds[None, n_prefix:], past_key_values=prefix_out.past_key_values, use_cache=True)
    run.close(group, "logits through the cached prefix", model.lm_logits(suffix_out.last_hidden_state[0, -1]), ref["llm.logits_last_position"])
    generated_cached, _, _ = _greedy(model, tokens, suffix_out, max_new)
    run.equal(group, "greedy ids through the cached prefix", generated_cached, meta["generate"]["generated_ids"])


def _greedy(model, tokens: TokenIds, out, max_new: int):
    cache = out.past_key_values
    hidden = out.last_hidden_state[0, -1]
    generated, top_ids, top_vals = [], [], []
    for _ in range(max_new):
        logits = model.lm_logits(hidden)
        top = logits.topk(10)
        top_ids.append(top.indices)
        top_vals.append(top.values)
        next_id = int(top.indices[0])
        generated.append(next_id)
        if next_id == tokens.eos:
            break
        step = model.llm.model(inputs_embeds=model.embed_ids(torch.tensor([[next_id]])), past_key_values=cache, use_cache=True)
        hidden = step.last_hidden_state[0, -1]
    return generated, torch.stack(top_ids), torch.stack(top_vals)


def _check_tokenizer(run: ParityRun, path: Path, ckpt: Path) -> None:
    meta = json.loads(path.read_text())
    tok = GromaTokenizer.from_pretrained(ckpt)
    legacy = GromaTokenizer.from_pretrained(ckpt, legacy=True)
    for name, expected in meta["special_token_ids"].items():
        run.equal("tokenizer", f"id of {name}", tok.token_to_id(name), expected)
    for i, case in enumerate(meta["encode_cases"]):
        label = f"case {i} {case['text'][:28]!r}"
        ids = tok.encode(case["text"])
        run.equal("tokenizer", f"{label} ids", ids, case["input_ids"])
        run.equal("tokenizer", f"{label} legacy ids", legacy.encode(case["text"]), case["input_ids_if_legacy_true"])
        run.equal("tokenizer", f"{label} decode", tok.decode(case["input_ids"]), case["decoded_skip_special_tokens_false"])
        run.equal("tokenizer", f"{label} decode skip", tok.decode(case["input_ids"], skip_special_tokens=True), case["decoded_skip_special_tokens_true"])
    for i, case in enumerate(meta["decode_cases"]):
        run.equal("tokenizer", f"decode case {i}", tok.decode(case["ids"]), case["decoded_skip_special_tokens_false"])
        run.equal("tokenizer", f"decode case {i} skip", tok.decode(case["ids"], skip_special_tokens=True), case["decoded_skip_special_tokens_true"])


def format_table(checks: list[Check]) -> str:
    """A per-check table: group, check, result, error and tolerance."""
    lines = [f"{'group':<22} {'check':<46} {'result':<6} {'error':>10} {'tolerance':>10}"]
    for c in checks:
        err = "" if c.error is None else (f"{c.error:.2e}" if isinstance(c.error, float) else str(c.error))
        tol = "" if c.tolerance is None else (f"{c.tolerance:.2e}" if isinstance(c.tolerance, float) else "exact")
        lines.append(f"{c.group:<22} {c.name[:46]:<46} {'ok' if c.ok else 'FAIL':<6} {err:>10} {tol:>10}"
                     + (f"  {c.detail}" if not c.ok and c.detail else ""))
    failed = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - failed} passed, {failed} failed")
    return "\n".join(lines)
