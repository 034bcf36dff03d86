"""sensor_msgs images <-> RGB numpy arrays, without cv_bridge.

cv_bridge's Python extension is built against numpy 1 and fails to import next to numpy 2 (and
torch venvs have numpy 2), so the conversion is done here with numpy and Pillow only.

Conventions:

* Every function that returns pixels returns an ``(H, W, 3)`` ``uint8`` array in **RGB** order,
  C-contiguous, that owns its memory (it never aliases the message buffer).
* 16-bit encodings are scaled to 8 bits by ``round(v * 255 / 65535)``: full scale maps to full
  scale, which is right for 16-bit colour/mono cameras.  Depth encodings (``16UC1``, ``32FC1``)
  are not images for the model and are rejected.
* Depth images (REP 118) have their own pair of functions: ``depth_image_to_metres`` returns an
  ``(H, W)`` float32 array of metres with NaN where there is no reading, and
  ``metres_to_depth_image`` writes ``16UC1`` (uint16 millimetres, 0 = no reading) or ``32FC1``
  (float32 metres).
* Alpha is dropped (not blended): the model sees the colour the camera measured.
* ``8UC3``/``8UC4`` are taken as BGR/BGRA, the OpenCV convention the generic encodings come from.
* ``mono``/Bayer/YUV inputs are expanded to three equal or demosaiced channels.

All failures raise :class:`ImageConversionError` with a message that names the offending field.
"""

from __future__ import annotations

import io
import re
import warnings
from typing import Union

import numpy as np
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

__all__ = [
    "ImageConversionError",
    "MAX_PIXELS",
    "SUPPORTED_ENCODINGS",
    "image_msg_to_rgb",
    "compressed_msg_to_rgb",
    "msg_to_rgb",
    "rgb_to_image_msg",
    "DEPTH_ENCODINGS",
    "depth_image_to_metres",
    "metres_to_depth_image",
]

# Upper bound on width * height, far above any camera (8K is 33 Mpx), so a corrupt header or a
# decompression bomb fails with a message instead of exhausting memory.
MAX_PIXELS = 64 * 1024 * 1024


class ImageConversionError(ValueError):
    """An image message that cannot be turned into an RGB array; the message says why."""


# encoding -> (channels, bytes per channel, channel order after decoding to an (H, W, C) array)
_PLAIN: dict[str, tuple[int, int, str]] = {
    "rgb8": (3, 1, "rgb"),
    "bgr8": (3, 1, "bgr"),
    "rgba8": (4, 1, "rgba"),
    "bgra8": (4, 1, "bgra"),
    "mono8": (1, 1, "mono"),
    "8UC1": (1, 1, "mono"),
    "8UC3": (3, 1, "bgr"),
    "8UC4": (4, 1, "bgra"),
    "rgb16": (3, 2, "rgb"),
    "bgr16": (3, 2, "bgr"),
    "rgba16": (4, 2, "rgba"),
    "bgra16": (4, 2, "bgra"),
    "mono16": (1, 2, "mono"),
}
# Bayer patterns: the colour of the top-left 2x2 cell, row-major.
_BAYER = {
    "bayer_rggb8": ("rggb", 1),
    "bayer_bggr8": ("bggr", 1),
    "bayer_gbrg8": ("gbrg", 1),
    "bayer_grbg8": ("grbg", 1),
    "bayer_rggb16": ("rggb", 2),
    "bayer_bggr16": ("bggr", 2),
    "bayer_gbrg16": ("gbrg", 2),
    "bayer_grbg16": ("grbg", 2),
}
# Packed 4:2:2, 2 bytes per pixel: byte order of one 2-pixel macropixel.
_YUV422 = {
    "yuv422": "uyvy",  # sensor_msgs' name for UYVY
    "uyvy": "uyvy",
    "yuv422_yuy2": "yuyv",
    "yuyv": "yuyv",
}
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(_PLAIN) + tuple(_BAYER) + tuple(_YUV422)

_DEPTH_HINT = {"16UC1", "32FC1", "16SC1", "32SC1", "64FC1"}


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Scale uint16 to uint8 with rounding; pass uint8 through."""
    if values.dtype == np.uint8:
        return values
    return ((values.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _rows(msg: Image, row_bytes: int) -> np.ndarray:
    """Validate geometry and return the pixel bytes as an (H, row_bytes) array without padding."""
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height == 0 or width == 0:
        raise ImageConversionError(f"image has zero size ({width}x{height})")
    if width * height > MAX_PIXELS:
        raise ImageConversionError(f"image is too large ({width}x{height} > {MAX_PIXELS} pixels)")
    if step < row_bytes:
        raise ImageConversionError(
            f"step {step} is smaller than one row of {width} px in {msg.encoding!r} ({row_bytes} bytes)"
        )
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != step * height:
        raise ImageConversionError(
            f"data has {buf.size} bytes but step * height = {step} * {height} = {step * height}"
            + (" (truncated)" if buf.size < step * height else "")
        )
    return buf.reshape(height, step)[:, :row_bytes]


def _words(rows: np.ndarray, bytes_per_channel: int, bigendian: bool) -> np.ndarray:
    """Reinterpret packed rows as uint8 or native uint16 values."""
    if bytes_per_channel == 1:
        return rows
    dtype = np.dtype(">u2" if bigendian else "<u2")
    return np.ascontiguousarray(rows).view(dtype).astype(np.uint16)


def _demosaic(raw: np.ndarray, pattern: str) -> np.ndarray:
    """Half-resolution demosaic (one RGB value per 2x2 cell) upsampled back to full size.

    Simple on purpose: a grounding model resizes the image to a few hundred pixels anyway, so
    interpolation quality beyond correct colours buys nothing.
    """
    h, w = raw.shape
    if h % 2 or w % 2:
        raise ImageConversionError(f"Bayer image must have even width and height, got {w}x{h}")
    planes = (raw[0::2, 0::2], raw[0::2, 1::2], raw[1::2, 0::2], raw[1::2, 1::2])
    # Green has two samples per cell; their mean uses both.
    rgb = np.stack(
        [np.mean([p for p, c in zip(planes, pattern) if c == colour], axis=0) for colour in "rgb"],
        axis=-1,
    )
    rgb = np.rint(rgb).astype(raw.dtype)
    return rgb.repeat(2, axis=0).repeat(2, axis=1)


def _yuv422_to_rgb(rows: np.ndarray, width: int, order: str) -> np.ndarray:
    """Packed 4:2:2 (BT.601, limited range, as camera drivers send it) to RGB."""
    if width % 2:
        raise ImageConversionError(f"{order.upper()} image must have an even width, got {width}")
    macro = rows.reshape(rows.shape[0], width // 2, 4).astype(np.float32)
    if order == "uyvy":
        u, y0, v, y1 = (macro[..., i] for i in range(4))
    else:  # yuyv
        y0, u, y1, v = (macro[..., i] for i in range(4))
    y = np.stack([y0, y1], axis=-1).reshape(rows.shape[0], width)
    u = u.repeat(2, axis=1)
    v = v.repeat(2, axis=1)
    c, d, e = 1.164 * (y - 16.0), u - 128.0, v - 128.0
    rgb = np.stack([c + 1.596 * e, c - 0.392 * d - 0.813 * e, c + 2.017 * d], axis=-1)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def image_msg_to_rgb(msg: Image) -> np.ndarray:
    """Convert a ``sensor_msgs/Image`` to an ``(H, W, 3)`` uint8 RGB array.

    Honours ``step`` (row padding) and ``is_bigendian`` (16-bit encodings).  Encodings are
    matched case-sensitively except for surrounding whitespace, as ``sensor_msgs`` defines them.

    Raises:
        ImageConversionError: zero size, ``step``/``data`` length mismatch, unknown or depth
            encoding, or a geometry the encoding cannot have (odd width for Bayer/YUV).
    """
    encoding = str(msg.encoding).strip()
    width = int(msg.width)
    if encoding in _PLAIN:
        channels, nbytes, order = _PLAIN[encoding]
        values = _words(_rows(msg, width * channels * nbytes), nbytes, bool(msg.is_bigendian))
        pixels = _to_uint8(values).reshape(int(msg.height), width, channels)
        if order == "mono":
            return np.repeat(pixels, 3, axis=2)
        rgb = pixels[..., :3] if order.startswith("rgb") else pixels[..., 2::-1]
        # Copy: for unpadded rgb8 the slice is still a view of the message buffer.
        return np.array(rgb, dtype=np.uint8, order="C", copy=True)
    if encoding in _BAYER:
        pattern, nbytes = _BAYER[encoding]
        values = _words(_rows(msg, width * nbytes), nbytes, bool(msg.is_bigendian))
        return _to_uint8(_demosaic(values.reshape(int(msg.height), width), pattern))
    if encoding in _YUV422:
        return _yuv422_to_rgb(_rows(msg, width * 2), width, _YUV422[encoding])
    if encoding in _DEPTH_HINT:
        raise ImageConversionError(
            f"encoding {encoding!r} is a depth/measurement image, not a camera image; "
            "publish the colour stream on 'image'"
        )
    if not encoding:
        raise ImageConversionError("image has an empty encoding")
    raise ImageConversionError(
        f"unsupported encoding {encoding!r}; supported: {', '.join(SUPPORTED_ENCODINGS)}"
    )


def compressed_msg_to_rgb(msg: CompressedImage) -> np.ndarray:
    """Decode a ``sensor_msgs/CompressedImage`` (JPEG, PNG, or anything Pillow reads) to RGB.

    The file's own header decides the codec; ``format`` is only checked for
    ``compressedDepth``, which is not a camera image.  JPEG and PNG files store true colour
    order whatever pixel format the publisher named (compressed_image_transport encodes from
    BGR with OpenCV, which writes standard files), so the decoded image is RGB as is.
    16-bit greyscale PNGs are scaled to 8 bits.

    Raises:
        ImageConversionError: empty or undecodable data, compressedDepth, zero or huge size.
    """
    fmt = str(msg.format)
    if re.search(r"compresseddepth", fmt, re.IGNORECASE):
        raise ImageConversionError(f"format {fmt!r} is a compressed depth image, not a camera image")
    data = bytes(msg.data)
    if not data:
        raise ImageConversionError("compressed image has no data")
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on decompression bombs; our own MAX_PIXELS check
            # below gives the clearer message, so silence the warning here.
            warnings.simplefilter("ignore", PILImage.DecompressionBombWarning)
            with PILImage.open(io.BytesIO(data)) as pil:
                width, height = pil.size
                if width == 0 or height == 0:
                    raise ImageConversionError(f"compressed image has zero size ({width}x{height})")
                if width * height > MAX_PIXELS:
                    raise ImageConversionError(
                        f"compressed image is too large ({width}x{height} > {MAX_PIXELS} pixels)"
                    )
                pil.load()
                if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                    values = np.clip(np.asarray(pil).astype(np.int64), 0, 65535).astype(np.uint16)
                    return np.ascontiguousarray(np.repeat(_to_uint8(values)[..., None], 3, axis=2))
                return np.array(pil.convert("RGB"), dtype=np.uint8)
    except ImageConversionError:
        raise
    except (OSError, ValueError, SyntaxError, PILImage.DecompressionBombError) as exc:
        # Pillow reports unknown formats and truncated files as OSError/UnidentifiedImageError.
        raise ImageConversionError(
            f"cannot decode compressed image (format {fmt!r}, {len(data)} bytes): {exc}"
        ) from exc


ImageLike = Union[Image, CompressedImage]


def msg_to_rgb(msg: ImageLike) -> np.ndarray:
    """Convert an ``Image`` or a ``CompressedImage`` to an ``(H, W, 3)`` uint8 RGB array."""
    if isinstance(msg, CompressedImage):
        return compressed_msg_to_rgb(msg)
    return image_msg_to_rgb(msg)


def rgb_to_image_msg(rgb: np.ndarray, header: Header | None = None) -> Image:
    """Wrap an ``(H, W, 3)`` uint8 RGB array in an ``rgb8`` ``sensor_msgs/Image``.

    ``header`` is copied as is (stamp and frame_id unchanged) so consumers can match the image
    with the message it came from.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ImageConversionError(f"expected an (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}")
    msg = Image()
    if header is not None:
        msg.header = header
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = "rgb8"
    msg.is_bigendian = 0
    msg.step = msg.width * 3
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg


#: REP 118 depth encodings: name -> (numpy dtype char, metres per unit).
DEPTH_ENCODINGS: dict[str, tuple[str, float]] = {"16UC1": ("u2", 0.001), "32FC1": ("f4", 1.0)}


def depth_image_to_metres(msg: Image) -> np.ndarray:
    """A REP 118 depth image -> ``(H, W)`` float32 optical-frame depth in metres.

    ``16UC1`` is millimetres with 0 meaning "no reading" (returned as NaN); ``32FC1`` is metres,
    NaN/inf passed through (callers treat non-finite and out-of-range values as no reading).
    Honours ``step`` and ``is_bigendian``.

    Raises:
        ImageConversionError: another encoding (``mono16`` etc. carry no unit), zero size, or a
            ``step``/``data`` length mismatch.
    """
    encoding = str(msg.encoding).strip()
    if encoding not in DEPTH_ENCODINGS:
        raise ImageConversionError(
            f"depth encoding must be 16UC1 (millimetres) or 32FC1 (metres) per REP 118, got {encoding!r}"
        )
    code, scale = DEPTH_ENCODINGS[encoding]
    width = int(msg.width)
    rows = _rows(msg, width * int(code[1:]))
    dtype = np.dtype((">" if msg.is_bigendian else "<") + code)
    values = np.ascontiguousarray(rows).view(dtype).reshape(int(msg.height), width)
    if encoding == "16UC1":
        metres = values.astype(np.float32) * np.float32(scale)
        metres[values == 0] = np.nan
        return metres
    return values.astype(np.float32)


def metres_to_depth_image(depth_m: np.ndarray, encoding: str = "32FC1", header: Header | None = None) -> Image:
    """An ``(H, W)`` array of metres -> a little-endian ``16UC1`` or ``32FC1`` ``sensor_msgs/Image``.

    ``16UC1`` rounds to millimetres and writes 0 (no reading) where the input is not finite or
    <= 0 (``groma_core.world.depth_to_16uc1_mm``); ``32FC1`` keeps the values as float32.
    ``header`` is copied as is.
    """
    from groma_core.world import depth_to_16uc1_mm, depth_to_32fc1_m

    arr = np.asarray(depth_m)
    if arr.ndim != 2:
        raise ImageConversionError(f"expected an (H, W) depth array, got shape {arr.shape}")
    if encoding == "16UC1":
        values = depth_to_16uc1_mm(arr).astype("<u2")
    elif encoding == "32FC1":
        values = depth_to_32fc1_m(arr).astype("<f4")
    else:
        raise ImageConversionError(f"depth encoding must be 16UC1 or 32FC1, got {encoding!r}")
    msg = Image(height=int(arr.shape[0]), width=int(arr.shape[1]), encoding=encoding, is_bigendian=0)
    if header is not None:
        msg.header = header
    msg.step = msg.width * values.dtype.itemsize
    msg.data = np.ascontiguousarray(values).tobytes()
    return msg
