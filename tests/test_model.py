"""The Groma model: official layout, checkpoint loading and its errors, parity with the original."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from groma_core.checkpoint import convert_to_safetensors, is_alias_key, load_model, read_state_dict
from groma_core.config import GromaConfig
from groma_core.errors import CheckpointError
from groma_core.model import GromaModel
from groma_core.parity import format_table, run_parity
from groma_core.presets import official_7b_config
from groma_core.selection import select_regions
from groma_core.vision import merge_2x2

KEYS_TSV = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "groma_official_keys.tsv"


def test_official_config_builds_exactly_the_official_state_dict_on_meta():
    if not KEYS_TSV.is_file():
        pytest.skip(f"{KEYS_TSV} not found")
    expected = {}
    for line in KEYS_TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape = line.split("\t")
        expected[key] = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
    with torch.device("meta"):
        model = GromaModel(official_7b_config())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(expected) == 1177
    assert ours == expected
    assert list(ours) == list(expected)  # same order as the original's state_dict()
    unique = sum(p.numel() for p in model.parameters())
    assert abs(unique - 7.377e9) < 1e6


def test_official_config_defaults_are_the_transformers_432_values():
    cfg = official_7b_config()
    assert (cfg.ddetr.d_model, cfg.ddetr.encoder_layers, cfg.ddetr.decoder_layers) == (256, 6, 6)
    assert (cfg.ddetr.encoder_attention_heads, cfg.ddetr.encoder_ffn_dim, cfg.ddetr.encoder_n_points) == (8, 1024, 4)
    assert (cfg.ddetr.num_queries, cfg.ddetr.two_stage_num_proposals) == (300, 300)
    assert cfg.vision.mlp_ratio == 4 and cfg.vision.layer_norm_eps == 1e-6 and cfg.vision.qkv_bias
    assert not cfg.vision.use_swiglu_ffn and cfg.vision.layerscale_value == 1.0
    assert cfg.llm.hidden_act == "silu" and cfg.llm.rope_theta == 10000.0 and not cfg.llm.tie_word_embeddings
    assert cfg.vocab_size == 32114 and cfg.vis_output_layer == -2
    assert (cfg.nms_thres, cfg.box_score_thres, cfg.max_region_num) == (0.6, 0.15, 100)
    assert cfg.options.roi_bug_compatible and cfg.options.region_feature_dim == 4096


def test_parity_with_the_original_implementation(official_fixture_dir):
    checks = run_parity(official_fixture_dir)
    table = format_table(checks)
    assert all(c.ok for c in checks), table
    assert len(checks) > 140
    groups = {c.group for c in checks}
    assert {"preprocess", "dinov2", "proposer", "region fuse", "case_a_rec", "case_b_region_caption", "tokenizer"} <= groups


def test_merge_2x2_channel_order():
    grid, c = 4, 1
    tokens = torch.arange(grid * grid, dtype=torch.float32).view(1, grid * grid, c)  # value = row * 4 + col
    merged = merge_2x2(tokens, grid)
    # cell (0, 0): (row 0, col 0), (row 1, col 0), (row 0, col 1), (row 1, col 1)
    assert merged[0, 0].tolist() == [0, 4, 1, 5]
    # cell (0, 1) is the second token (row-major cells)
    assert merged[0, 1].tolist() == [2, 6, 3, 7]
    assert merged[0, 2].tolist() == [8, 12, 9, 13]


def test_selection_uses_strict_thresholds_and_falls_back_to_the_best_box():
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.5, 0.5, 0.2, 0.2], [0.2, 0.2, 0.1, 0.1]])
    scores = torch.tensor([0.9, 0.8, 0.15])  # exactly at the threshold: dropped
    sel = select_regions(boxes, scores, nms_thres=0.6, score_thres=0.15, max_num=100)
    assert sel.kept_indices.tolist() == [0]  # duplicate suppressed, 0.15 not > 0.15
    sel = select_regions(boxes, torch.tensor([0.1, 0.05, 0.01]), nms_thres=0.6, score_thres=0.15, max_num=100)
    assert sel.kept_indices.tolist() == [0]
    user = torch.tensor([[0.21, 0.2, 0.1, 0.1]])
    sel = select_regions(boxes, scores, nms_thres=0.6, score_thres=0.15, max_num=100, refer_boxes=user)
    assert sel.scores[sel.refer_indices[0]].item() == 1.0


def test_left_to_right_selection_orders_kept_boxes_by_centre_x_and_keeps_what_score_order_keeps():
    boxes = torch.tensor([[0.8, 0.5, 0.1, 0.1], [0.2, 0.5, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1], [0.5, 0.7, 0.1, 0.1]])
    scores = torch.tensor([0.9, 0.5, 0.6, 0.7])
    by_score = select_regions(boxes, scores, nms_thres=0.6, score_thres=0.15, max_num=100)
    ordered = select_regions(boxes, scores, nms_thres=0.6, score_thres=0.15, max_num=100, left_to_right=True)
    assert by_score.candidate_indices.tolist() == [0, 3, 2, 1]
    assert ordered.candidate_indices.tolist() == [1, 3, 2, 0]  # x 0.2, 0.5 (higher score first), 0.5, 0.8
    assert ordered.kept_indices.tolist() == by_score.kept_indices.tolist()
    user = torch.tensor([[0.35, 0.5, 0.1, 0.1]])
    ordered = select_regions(boxes, scores, nms_thres=0.6, score_thres=0.15, max_num=100, refer_boxes=user,
                             left_to_right=True)
    assert ordered.refer_indices == [1] and ordered.scores[1].item() == 1.0


@pytest.fixture(scope="module")
def fixture_checkpoint(official_fixture_dir) -> Path:
    return official_fixture_dir / "checkpoint"


def test_convert_to_safetensors_round_trips_and_reloads(fixture_checkpoint, tmp_path):
    out = convert_to_safetensors(fixture_checkpoint, tmp_path / "converted")
    tensors = load_file(str(out))
    assert not any(is_alias_key(k) for k in tensors)
    original = read_state_dict(fixture_checkpoint)
    assert set(tensors) == set(original)
    for key in ("llm.lm_head.weight", "perceiver.ddetr_transformer.bbox_embed.0.layers.0.weight"):
        assert torch.equal(tensors[key], original[key].contiguous())
    model = load_model(tmp_path / "converted")
    assert model.perceiver.ddetr_transformer.decoder.bbox_embed is model.perceiver.ddetr_transformer.bbox_embed


def test_alias_only_safetensors_as_written_by_transformers_432_load(fixture_checkpoint, tmp_path):
    state = read_state_dict(fixture_checkpoint)
    renamed = {}
    for key, value in state.items():
        for head in ("bbox_embed", "class_embed_enc", "class_embed_coco", "class_embed_sa1b"):
            prefix = f"perceiver.ddetr_transformer.{head}"
            if key.startswith(prefix):
                key = key.replace("perceiver.ddetr_transformer.", "perceiver.ddetr_transformer.decoder.", 1)
        renamed[key] = value.contiguous()
    target = tmp_path / "aliases"
    shutil.copytree(fixture_checkpoint, target, ignore=shutil.ignore_patterns("pytorch_model.bin"))
    save_file(renamed, str(target / "model.safetensors"))
    model = load_model(target)
    assert torch.equal(model.perceiver.ddetr_transformer.bbox_embed[0].layers[0].weight,
                       state["perceiver.ddetr_transformer.bbox_embed.0.layers.0.weight"])


def _copy_without_weights(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("pytorch_model.bin"))
    return dst


def test_missing_directory_and_missing_weights_give_clear_errors(fixture_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    target = _copy_without_weights(fixture_checkpoint, tmp_path / "noweights")
    with pytest.raises(CheckpointError, match="no weights"):
        load_model(target)


def test_corrupt_weights_give_a_clear_error(fixture_checkpoint, tmp_path):
    target = _copy_without_weights(fixture_checkpoint, tmp_path / "corrupt")
    (target / "pytorch_model.bin").write_bytes(b"this is not a checkpoint" * 100)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(target)
    (target / "pytorch_model.bin").unlink()
    (target / "model.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_model(target)


def test_pickled_code_is_never_executed(fixture_checkpoint, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    target = _copy_without_weights(fixture_checkpoint, tmp_path / "evil")
    torch.save({"x": Evil()}, target / "pytorch_model.bin")
    with pytest.raises(CheckpointError):
        load_model(target)
    assert not marker.exists()


def test_missing_extra_and_misshaped_keys_are_all_named(fixture_checkpoint, tmp_path):
    state = {k: v.contiguous() for k, v in read_state_dict(fixture_checkpoint).items()}
    del state["extra_lm_head.weight"]
    state["some.unexpected.weight"] = torch.zeros(2)
    state["img_txt_bridge.2.bias"] = torch.zeros(3)
    target = _copy_without_weights(fixture_checkpoint, tmp_path / "bad")
    save_file(state, str(target / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_model(target)
    message = str(err.value)
    assert "missing keys: extra_lm_head.weight" in message
    assert "unexpected keys: some.unexpected.weight" in message
    assert "img_txt_bridge.2.bias: checkpoint (3,) vs model (64,)" in message


def test_bad_config_is_a_checkpoint_error(fixture_checkpoint, tmp_path):
    target = tmp_path / "badcfg"
    shutil.copytree(fixture_checkpoint, target)
    (target / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_model(target)
    (target / "config.json").write_text(json.dumps({"llm_cfg": {}}))
    with pytest.raises(CheckpointError, match="perceiver_cfg"):
        GromaConfig.from_file(target / "config.json")


def test_region_level_upscale_sets_the_fused_map_sizes_and_round_trips_through_config_json():
    from groma_core.presets import tiny_config

    config = tiny_config(64, region_level_upscale=(2, 1, 1))
    again = GromaConfig.from_dict(json.loads(json.dumps(config.to_dict())))  # as config.json stores it (a list)
    assert again.options.region_level_upscale == (2, 1, 1) and again == config
    assert tiny_config(64).options.region_level_upscale == (4, 2, 1) == official_7b_config().options.region_level_upscale
    model = GromaModel(again).eval()
    g = again.patch_grid
    with torch.no_grad():
        hidden = model.perceiver.encode_image(torch.zeros(1, 3, again.options.image_size, again.options.image_size))
        fused = model.region_encoder.fuse(hidden)
        assert [f.shape[-1] for f in fused] == [2 * g, g, g]
        boxes = [torch.tensor([[0.5, 0.5, 0.2, 0.3]])]
        assert model.region_encoder(fused, boxes).shape == (1, again.options.region_feature_dim)
    with pytest.raises(CheckpointError, match="region_level_upscale"):
        tiny_config(64, region_level_upscale=(2, 0, 1))
