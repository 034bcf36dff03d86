"""Box conventions.

Inside Groma every box is *normalised cxcywh*: (cx, cy, w, h) in [0, 1] relative to the image.
Because the image is squashed to a square without keeping its aspect ratio, a normalised box means
the same on the original W x H image as on the network input, so pixels are obtained per axis.

Pixel boxes are xyxy = (x1, y1, x2, y2) in the original image, x to the right, y down.
"""

from __future__ import annotations

import torch
from torch import Tensor


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) cxcywh -> (..., 4) xyxy, in the same units."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (..., 4) cxcywh, in the same units."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=-1)


def normalized_cxcywh_to_pixel_xyxy(boxes: Tensor, width: int, height: int) -> Tensor:
    """(..., 4) normalised cxcywh -> (..., 4) pixel xyxy on a ``width`` x ``height`` image."""
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return cxcywh_to_xyxy(boxes) * scale


def pixel_xyxy_to_normalized_cxcywh(boxes: Tensor, width: int, height: int) -> Tensor:
    """(..., 4) pixel xyxy on a ``width`` x ``height`` image -> (..., 4) normalised cxcywh."""
    scale = torch.tensor([width, height, width, height], dtype=boxes.dtype, device=boxes.device)
    return xyxy_to_cxcywh(boxes / scale)
