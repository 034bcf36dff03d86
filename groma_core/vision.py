"""Image preprocessing, the DINOv2 vision encoder, and the 2x2-merge image-token bridge input.

Conventions: images enter as RGB uint8 arrays (H, W, 3). Groma squashes every image to a square of
``image_size`` pixels *without keeping the aspect ratio*, so normalised boxes mean the same on the original
image and on the network input.
"""

from __future__ import annotations

import types

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from transformers import Dinov2Config, Dinov2Model

from .errors import GromaInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PIL_FILTERS = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def as_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """Validate and return an (H, W, 3) uint8 RGB array (a PIL image is converted to RGB)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise GromaInputError(f"image must be a numpy array or PIL image, not {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise GromaInputError(f"image must have shape (H, W, 3), got {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise GromaInputError(f"image is empty: shape {tuple(image.shape)}")
    if image.dtype != np.uint8:
        raise GromaInputError(f"image must be uint8, got {image.dtype}")
    return image


def resize_square(image: np.ndarray | Image.Image, size: int, resize_filter: str = "bicubic") -> np.ndarray:
    """Squash an RGB image to (size, size, 3) uint8 with Pillow, as the original's chat path does."""
    rgb = as_rgb_array(image)
    resized = Image.fromarray(rgb).resize((size, size), _PIL_FILTERS[resize_filter])
    return np.asarray(resized)


def normalize_pixels(resized: np.ndarray) -> Tensor:
    """(S, S, 3) uint8 -> (1, 3, S, S) float32: x / 255, minus ImageNet mean, divided by ImageNet std."""
    x = torch.from_numpy(np.array(resized, dtype=np.uint8)).permute(2, 0, 1).float() * (1.0 / 255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((x - mean) / std).unsqueeze(0)


def preprocess(image: np.ndarray | Image.Image, size: int, resize_filter: str = "bicubic") -> Tensor:
    """RGB image -> (1, 3, size, size) float32 network input."""
    return normalize_pixels(resize_square(image, size, resize_filter))


def _interpolate_pos_encoding_432(self: nn.Module, embeddings: Tensor, height: int, width: int) -> Tensor:
    """DINOv2 position-embedding interpolation with transformers-4.32 semantics.

    4.32 resizes the learned grid with a *scale factor* of (new + 0.1) / old (the DINO trick that avoids
    a rounding-down of the output size). Newer transformers pass the output size instead, which gives
    different values (~0.1 mean-abs on random weights); the released weights were trained with 4.32.
    """
    num_patches = embeddings.shape[1] - 1
    num_positions = self.position_embeddings.shape[1] - 1
    if num_patches == num_positions and height == width:
        return self.position_embeddings
    class_pos_embed = self.position_embeddings[:, :1]
    patch_pos_embed = self.position_embeddings[:, 1:]
    dim = embeddings.shape[-1]
    grid_h = height // self.config.patch_size + 0.1
    grid_w = width // self.config.patch_size + 0.1
    side = int(num_positions**0.5)
    patch_pos_embed = patch_pos_embed.reshape(1, side, side, dim).permute(0, 3, 1, 2)
    target_dtype = patch_pos_embed.dtype
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.float(),
        scale_factor=(grid_h / side, grid_w / side),
        mode="bicubic",
        align_corners=False,
    ).to(target_dtype)
    if int(grid_h) != patch_pos_embed.shape[-2] or int(grid_w) != patch_pos_embed.shape[-1]:
        raise ValueError("DINOv2 position-embedding interpolation produced a wrong grid size")
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat((class_pos_embed, patch_pos_embed), dim=1)


def build_vision_encoder(config: Dinov2Config) -> Dinov2Model:
    """transformers' Dinov2Model with the 4.32 position-embedding interpolation."""
    model = Dinov2Model(config)
    model.embeddings.interpolate_pos_encoding = types.MethodType(_interpolate_pos_encoding_432, model.embeddings)
    return model


def merge_2x2(patch_tokens: Tensor, grid: int) -> Tensor:
    """Concatenate each 2x2 cell of patch tokens into one token.

    Args:
        patch_tokens: (B, grid*grid, C) patch tokens in row-major order (CLS already dropped).
        grid: side of the patch grid (even).

    Returns:
        (B, (grid/2)**2, 4C): cells in row-major order; within a cell the four vectors are concatenated as
        (2i, 2j), (2i+1, 2j), (2i, 2j+1), (2i+1, 2j+1) with i the cell row (y) and j the cell column (x).
    """
    b, n, c = patch_tokens.shape
    x = patch_tokens.view(b, grid // 2, 2, grid // 2, 2, c)  # (b, i, dy, j, dx, c)
    # order inside a cell: dx outer, dy inner -> (dy=0,dx=0), (1,0), (0,1), (1,1)
    x = x.permute(0, 1, 3, 4, 2, 5)  # (b, i, j, dx, dy, c)
    return x.reshape(b, (grid // 2) ** 2, 4 * c)
