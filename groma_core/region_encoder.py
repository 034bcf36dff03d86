"""Groma's region encoder: multi-level feature fusion, RoIAlign and projection into region tokens.

Module names follow the original (``region_encoder.mlvl_fuse.*``, ``region_encoder.roi_align.*``).

Input: three DINOv2 block outputs (the last three), each (B, C, g, g); boxes are normalised cxcywh.
Level l is resized to ``region_level_upscale[l]`` x g: in the original level 0 (third-to-last block) to
4g, level 1 to 2g, level 2 stays g, so on a 448 input with patch 14 the maps are 128/64/32 (true strides
3.5/7/14 px).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from .config import GromaConfig

NUM_LEVELS = 3


class ConvModule(nn.Module):
    """Conv3x3 without bias + GroupNorm + ReLU (mmcv ``ConvModule`` names: ``conv``, ``gn``)."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False)
        self.gn = nn.GroupNorm(groups, channels)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.gn(self.conv(x)))


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear, align_corners=True, computed in fp32 (as the original)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.float(), size=size, mode="bilinear", align_corners=True).to(x.dtype)


class MultiLevelFuse(nn.Module):
    """Coordinate channels + 1x1 conv per level, then rounds of channel shuffling between neighbouring levels.

    In each round, level l keeps its channels [0, C/2) and appends channels [3C/4, C) of the next coarser
    level, then channels [C/2, 3C/4) of the next finer level (the level itself at the ends), each resized
    to level l's size, and applies the round's conv module (shared by the levels). The concatenation order
    (own, coarser, finer) is the original's; the parity fixture pins it.
    """

    def __init__(self, channels: int, num_fuse: int, groups: int) -> None:
        super().__init__()
        self.input_conv = nn.ModuleList(nn.Conv2d(channels + 2, channels, kernel_size=1) for _ in range(NUM_LEVELS))
        self.fuse_convs = nn.ModuleList(ConvModule(channels, groups) for _ in range(num_fuse))

    @staticmethod
    def add_coords(x: Tensor) -> Tensor:
        """Append x then y coordinate channels, each linspace(-1, 1) along its axis."""
        b, _, h, w = x.shape
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        return torch.cat([x, xs, ys], dim=1)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        feats = [conv(self.add_coords(f)) for conv, f in zip(self.input_conv, feats)]
        c = feats[0].shape[1]
        half, three_q = c // 2, 3 * c // 4
        for conv_module in self.fuse_convs:
            fused = []
            for level, feat in enumerate(feats):
                size = tuple(feat.shape[-2:])
                finer = feats[max(level - 1, 0)][:, half:three_q]
                coarser = feats[min(level + 1, NUM_LEVELS - 1)][:, three_q:]
                fused.append(torch.cat([feat[:, :half], _resize(coarser, size), _resize(finer, size)], dim=1))
            feats = [conv_module(f) for f in fused]
        return feats


class MultiLevelRoIExtractor(nn.Module):
    """RoIAlign on each level, per-level 3x3 conv, sum, ReLU, flatten, linear; plus a box MLP; then updims."""

    def __init__(self, config: GromaConfig) -> None:
        super().__init__()
        opts = config.options
        c = config.vision.hidden_size
        self.roi_size = opts.region_roi_size
        self.image_size = opts.image_size
        self.bug_compatible = opts.roi_bug_compatible
        self.pconvs = nn.ModuleList(nn.Conv2d(c, c, kernel_size=3, padding=1) for _ in range(NUM_LEVELS))
        self.pos_embedd = nn.Sequential(
            nn.Linear(4, opts.region_pos_hidden),
            nn.ReLU(),
            nn.LayerNorm(opts.region_pos_hidden),
            nn.Linear(opts.region_pos_hidden, opts.region_hidden),
            nn.ReLU(),
            nn.LayerNorm(opts.region_hidden),
        )
        self.updims = nn.Linear(opts.region_hidden, opts.region_feature_dim)
        self.flatten_linear = nn.Linear(c * self.roi_size**2, opts.region_hidden)

    def rois(self, boxes: list[Tensor]) -> Tensor:
        """(K, 5) RoIAlign input [batch index, 4 coordinates in network-input pixels].

        Bug-compatible mode passes cxcywh * image_size, which RoIAlign reads as (x1, y1, x2, y2): the
        released weights were trained so (issue #11 of the original; fixing it made results worse).
        """
        rows = []
        for b, bx in enumerate(boxes):
            coords = bx if self.bug_compatible else torch.cat([bx[:, :2] - bx[:, 2:] / 2, bx[:, :2] + bx[:, 2:] / 2], 1)
            idx = torch.full((bx.shape[0], 1), float(b), dtype=bx.dtype, device=bx.device)
            rows.append(torch.cat([idx, coords * self.image_size], dim=1))
        return torch.cat(rows, 0)

    def spatial_scale(self, map_size: int) -> float:
        """Map pixels per network-input pixel; the original used twice the true value (8/14, 4/14, 2/14)."""
        true_scale = map_size / self.image_size
        return 2 * true_scale if self.bug_compatible else true_scale

    def pool(self, feats: list[Tensor], boxes: list[Tensor]) -> list[Tensor]:
        """Per level (K, C, roi, roi) RoIAlign outputs, computed in fp32."""
        rois = self.rois([b.float() for b in boxes])
        return [
            roi_align(
                f.float(), rois, output_size=self.roi_size,
                spatial_scale=self.spatial_scale(f.shape[-1]), sampling_ratio=2, aligned=True,
            )
            for f in feats
        ]

    def convolve(self, pooled: list[Tensor]) -> Tensor:
        """Per-level 3x3 conv of the RoIAlign outputs, summed, ReLU, flattened channel-major: (K, C*roi*roi)."""
        dtype = self.flatten_linear.weight.dtype
        x = sum(conv(p.to(dtype)) for conv, p in zip(self.pconvs, pooled))
        return F.relu(x).flatten(1)

    def project(self, flat: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(K, C*roi*roi) and (K, 4) cxcywh boxes -> region features, flatten_linear output, box embedding."""
        flat_out = self.flatten_linear(flat)
        pos = self.pos_embedd(boxes.to(flat_out.dtype))
        return self.updims(flat_out + pos), flat_out, pos

    def forward(self, feats: list[Tensor], boxes: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        pooled = self.pool(feats, boxes)
        features, flat_out, pos = self.project(self.convolve(pooled), torch.cat(boxes, 0))
        return features, {"pooled": pooled, "flatten_linear_out": flat_out, "pos_embedd_out": pos}


class RegionEncoder(nn.Module):
    """Region tokens from DINOv2 hidden states and selected boxes (the original's ``MLVLROIQueryModule``)."""

    def __init__(self, config: GromaConfig) -> None:
        super().__init__()
        opts = config.options
        self.grid = config.patch_grid
        self.upscale = opts.region_level_upscale
        self.mlvl_fuse = MultiLevelFuse(config.vision.hidden_size, opts.region_num_fuse, opts.region_gn_groups)
        self.roi_align = MultiLevelRoIExtractor(config)

    def fuse(self, hidden_states: tuple[Tensor, ...]) -> list[Tensor]:
        """Fused maps of the last three blocks, level l (B, C, u_l g, u_l g) with u = ``region_level_upscale``
        (the original's [(B, C, 4g, 4g), (B, C, 2g, 2g), (B, C, g, g)])."""
        maps = []
        for level, hs in enumerate(hidden_states[-NUM_LEVELS:]):
            x = hs[:, 1:]
            b, n, c = x.shape
            x = x.transpose(1, 2).reshape(b, c, self.grid, self.grid)
            side = self.grid * self.upscale[level]
            maps.append(_resize(x, (side, side)))
        return self.mlvl_fuse(maps)

    def forward(self, fused: list[Tensor], boxes: list[Tensor]) -> Tensor:
        """fused: output of :meth:`fuse`; boxes: per image (N_i, 4) cxcywh -> (sum N_i, region_feature_dim)."""
        return self.roi_align(fused, boxes)[0]
