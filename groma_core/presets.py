"""Model presets: the official 7B configuration and the project's embedded ``groma-tiny``.

Both build the same :class:`groma_core.model.GromaModel`; only sizes and the :class:`ProjectOptions`
switches differ.
"""

from __future__ import annotations

from transformers import DeformableDetrConfig, Dinov2Config, LlamaConfig

from .config import GromaConfig, ProjectOptions
from .tokenizer import NUM_NEW_TOKENS


def official_7b_config() -> GromaConfig:
    """The ``groma-7b-finetune`` configuration (Vicuna-7B + DINOv2-L/14 + 6/6-layer proposer)."""
    return GromaConfig.from_dict(
        {
            "num_new_token": NUM_NEW_TOKENS,
            "nms_thres": 0.6,
            "box_score_thres": 0.15,
            "max_region_num": 100,
            "llm_cfg": {
                "hidden_size": 4096,
                "intermediate_size": 11008,
                "num_attention_heads": 32,
                "num_hidden_layers": 32,
                "num_key_value_heads": 32,
                "max_position_embeddings": 4096,
                "rms_norm_eps": 1e-5,
                "pad_token_id": 0,
                "vocab_size": 32000,
            },
            "perceiver_cfg": {
                "vis_output_layer": -2,
                "vis_encoder_cfg": {
                    "hidden_size": 1024,
                    "image_size": 518,
                    "num_hidden_layers": 24,
                    "num_attention_heads": 16,
                    "patch_size": 14,
                },
                "ddetr_cfg": {
                    "auxiliary_loss": True,
                    "class_cost": 2,
                    "cls_loss_coefficient": 2,
                    "num_feature_levels": 1,
                    "two_stage": True,
                    "with_box_refine": True,
                    "num_labels": 1,
                },
            },
        }
    )


def tiny_config(base_vocab_size: int, word_vectors: tuple[int, int] | None = None,
                region_level_upscale: tuple[int, int, int] = (4, 2, 1)) -> GromaConfig:
    """``groma-tiny``: a CPU-sized Groma for the synthetic tabletop world (about 7.6 M parameters).

    384-pixel input; a frozen ImageNet-trained EfficientNet-Lite0 trunk as the vision encoder
    (:mod:`groma_core.backbone`: three levels of 128-wide tokens on a 24x24 grid, 144 image tokens), a 2+2-layer
    proposer with 50 queries, a 7x7 single-round region encoder with correct RoI boxes (the official coordinate
    bugs are off), and a 4-layer, 256-wide Llama trained from scratch; ``word_vectors``: (count, dim) of the
    pretrained word-vector table its text inputs get (see :mod:`groma_core.word_vectors`), None for none;
    ``region_level_upscale``: see :class:`ProjectOptions`.
    """
    llm = LlamaConfig(
        vocab_size=base_vocab_size, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=1024, rms_norm_eps=1e-5,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False,
    )
    # a convolutional encoder: only hidden_size (token width) and patch_size (the trunk's stride) are read
    vision = Dinov2Config(hidden_size=128, num_hidden_layers=3, num_attention_heads=4, patch_size=16, image_size=384)
    ddetr = DeformableDetrConfig(
        d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=256, decoder_ffn_dim=256, num_queries=50, two_stage_num_proposals=50,
        num_feature_levels=1, two_stage=True, with_box_refine=True, num_labels=1, dropout=0.0,
        auxiliary_loss=True, class_cost=2, cls_loss_coefficient=2, disable_custom_kernels=True,
    )
    options = ProjectOptions(
        image_size=384, vision_backbone="efficientnet_lite0", proposer_box_hidden=128, region_hidden=256, region_pos_hidden=64,
        region_feature_dim=256, region_roi_size=7, region_num_fuse=1, region_gn_groups=32,
        roi_bug_compatible=False, region_order="left_to_right", distinct_regions=True,
        word_vector_count=word_vectors[0] if word_vectors else 0, word_vector_dim=word_vectors[1] if word_vectors else 0,
        region_level_upscale=tuple(region_level_upscale),
    )
    return GromaConfig(llm=llm, vision=vision, ddetr=ddetr, vis_output_layer=-1, num_new_tokens=NUM_NEW_TOKENS,
                       nms_thres=0.6, box_score_thres=0.15, max_region_num=20, options=options)
