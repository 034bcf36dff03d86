"""Groma configuration.

The official ``config.json`` (``FoundationVision/groma-7b-finetune``) has three nested configs, each written
by transformers 4.32 ``to_json_string(use_diff=True)``, i.e. as a *diff* against that version's defaults:
``llm_cfg`` (LlamaConfig), ``perceiver_cfg.vis_encoder_cfg`` (Dinov2Config) and ``perceiver_cfg.ddetr_cfg``
(DeformableDetrConfig). Building the transformers config classes from the diffs fills the defaults back
in; the defaults this project relies on are the same in transformers 4.57 as in 4.32 (a test checks them).

Several sizes in the original region encoder and proposer are fixed in its code whatever the config says
(box-MLP width 256, region width 1024, region features 4096 wide, 14x14 RoIs, 5 fuse rounds, GroupNorm(64)),
and two coordinate bugs shaped the released weights. Those are the fields of :class:`ProjectOptions`:
their defaults are the official values, and the project's own small model (``groma-tiny``) changes them.
They are stored under the key ``"groma_core"`` of ``config.json``; an official file has no such key.
"""

from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from transformers import DeformableDetrConfig, Dinov2Config, LlamaConfig

from .errors import CheckpointError
from .tokenizer import NUM_NEW_TOKENS


REGION_ORDERS = ("score", "left_to_right", "random")
VISION_BACKBONES = ("dinov2", "efficientnet_lite0")


@dataclass
class ProjectOptions:
    """Switches and widths the original hard-codes; defaults reproduce the released model exactly."""

    image_size: int = 448  # network input side; images are squashed to image_size x image_size
    resize_filter: str = "bicubic"  # PIL filter of the squash (the official chat path uses bicubic)
    proposer_box_hidden: int = 256  # width of the proposer's box MLPs
    region_hidden: int = 1024  # flatten_linear / pos_embedd output width
    region_pos_hidden: int = 256  # first layer of pos_embedd
    region_feature_dim: int = 4096  # updims output; 4096 in the original whatever the LLM width
    region_roi_size: int = 14  # RoIAlign output side
    region_num_fuse: int = 5  # cross-scale fuse rounds
    region_gn_groups: int = 64  # GroupNorm groups of the fuse convs
    roi_bug_compatible: bool = True  # cxcywh passed as xyxy and 2x spatial scales (official weights need it)
    # "score" (by descending score), "left_to_right" (by box centre x: an index then says where a region
    # lies, which ordinals and left/right relations can use) or "random" (the original, seeded below)
    region_order: str = "score"
    region_order_seed: int = 0  # seed of the "random" order
    # an answer names each region at most once: decoding masks the <rK> of regions already named, so the
    # second target of "put the ball in the bowl" cannot be the first one again. The original has no such
    # rule (a free description may name a region twice); groma-tiny's training answers never repeat one.
    distinct_regions: bool = False
    word_vector_dim: int = 0  # width of the fixed pretrained word vectors added to text inputs; 0 = none
    word_vector_count: int = 0  # rows of that table (see groma_core.word_vectors)
    # "dinov2" (the original) or "efficientnet_lite0" (groma_core.backbone: a frozen pretrained CNN trunk whose
    # levels are shaped like DINOv2's hidden states; the vision config then gives only the tokens' width,
    # hidden_size, and the trunk's stride, patch_size = 16)
    vision_backbone: str = "dinov2"
    # the region encoder resizes the last three vision levels to these multiples of the token grid before
    # fusing them: the original's 4g / 2g / g (128/64/32 at 448 px). A CNN trunk's levels are pooled to the grid
    # first, so larger maps only interpolate, and the fuse's 3x3 convs at 4g cost most of stage 1's backward
    region_level_upscale: tuple[int, int, int] = (4, 2, 1)

    def __post_init__(self) -> None:
        self.region_level_upscale = tuple(self.region_level_upscale)  # config.json stores a list
        if len(self.region_level_upscale) != 3 or not all(isinstance(u, int) and u >= 1 for u in self.region_level_upscale):
            raise CheckpointError(f"region_level_upscale must be three integers >= 1, got {self.region_level_upscale!r}")
        if self.region_order not in REGION_ORDERS:
            raise CheckpointError(f"region_order {self.region_order!r} is not one of {REGION_ORDERS}")
        if self.vision_backbone not in VISION_BACKBONES:
            raise CheckpointError(f"vision_backbone {self.vision_backbone!r} is not one of {VISION_BACKBONES}")


@dataclass
class GromaConfig:
    """Everything needed to build a :class:`groma_core.model.GromaModel`."""

    llm: LlamaConfig
    vision: Dinov2Config
    ddetr: DeformableDetrConfig
    vis_output_layer: int = -1
    num_new_tokens: int = NUM_NEW_TOKENS
    nms_thres: float = 0.6
    box_score_thres: float = 0.15
    max_region_num: int = 100
    options: ProjectOptions = field(default_factory=ProjectOptions)

    @property
    def vocab_size(self) -> int:
        """Size of the output layer: the LLM's base vocabulary plus Groma's added tokens."""
        return self.llm.vocab_size + self.num_new_tokens

    @property
    def patch_grid(self) -> int:
        """Side of the vision encoder's token grid at the network input size (32 for 448 / 14)."""
        return self.options.image_size // self.vision.patch_size

    # ----------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "GromaConfig":
        """Build from the parsed ``config.json`` of an official or project checkpoint."""
        try:
            perceiver = raw["perceiver_cfg"]
            llm = LlamaConfig(**_strip_meta(raw["llm_cfg"]))
            vision = Dinov2Config(**_strip_meta(perceiver["vis_encoder_cfg"]))
            ddetr = DeformableDetrConfig(**_strip_meta(perceiver["ddetr_cfg"]))
        except KeyError as exc:
            raise CheckpointError(f"config.json lacks the Groma field {exc.args[0]!r}") from exc
        # Groma always runs the proposer with the pure-PyTorch deformable attention.
        ddetr.disable_custom_kernels = True
        options_raw = raw.get("groma_core", {})
        known = {f.name for f in fields(ProjectOptions)}
        unknown = set(options_raw) - known
        if unknown:
            raise CheckpointError(f"config.json 'groma_core' has unknown options: {sorted(unknown)}")
        return cls(
            llm=llm,
            vision=vision,
            ddetr=ddetr,
            vis_output_layer=int(perceiver.get("vis_output_layer", -1)),
            num_new_tokens=int(raw.get("num_new_token", NUM_NEW_TOKENS)),
            nms_thres=float(raw.get("nms_thres", 0.6)),
            box_score_thres=float(raw.get("box_score_thres", 0.15)),
            max_region_num=int(raw.get("max_region_num", 100)),
            options=ProjectOptions(**options_raw),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "GromaConfig":
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError as exc:
            raise CheckpointError(f"no config.json at {path}") from exc
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{path} is not valid JSON: {exc}") from exc
        return cls.from_dict(raw)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` layout of the original, plus the project's ``groma_core`` options."""
        return {
            "architectures": ["GromaModel"],
            "model_type": "groma",
            "num_new_token": self.num_new_tokens,
            "nms_thres": self.nms_thres,
            "box_score_thres": self.box_score_thres,
            "max_region_num": self.max_region_num,
            "vocab_size": self.vocab_size,
            "llm_cfg": self.llm.to_diff_dict(),
            "perceiver_cfg": {
                "model_type": "ddetr",
                "vis_output_layer": self.vis_output_layer,
                "vis_encoder_cfg": self.vision.to_diff_dict(),
                "ddetr_cfg": self.ddetr.to_diff_dict(),
            },
            "groma_core": asdict(self.options),
        }

    def save(self, directory: str | Path) -> None:
        Path(directory, "config.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    def copy(self) -> "GromaConfig":
        return copy.deepcopy(self)


def _strip_meta(cfg: dict[str, Any]) -> dict[str, Any]:
    """Drop bookkeeping fields that are not model hyper-parameters."""
    drop = {"architectures", "transformers_version", "_name_or_path", "model_type"}
    return {k: v for k, v in cfg.items() if k not in drop}
