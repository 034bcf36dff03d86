"""Unit tests of groma_ros.image_conversion: every encoding to RGB, padding, endianness, errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from groma_ros.image_conversion import (
    ImageConversionError,
    image_msg_to_rgb,
    msg_to_rgb,
    rgb_to_image_msg,
)

RED = (255, 0, 0)
BLUE = (0, 0, 255)


def red_blue(height: int = 4, width: int = 6) -> np.ndarray:
    """Left half pure red, right half pure blue: any R/B swap flips both halves."""
    rgb = np.zeros((height, width, 3), np.uint8)
    rgb[:, : width // 2] = RED
    rgb[:, width // 2 :] = BLUE
    return rgb


def make_image(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """Pack an (H, W, C) or (H, W) array into an Image with ``pad`` bytes at each row's end."""
    h, w = pixels.shape[:2]
    if pixels.dtype == np.uint16:
        pixels = pixels.astype(">u2" if bigendian else "<u2")
    row = pixels.reshape(h, -1).view(np.uint8).reshape(h, -1)
    rows = np.concatenate([row, np.full((h, pad), 0xAB, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, is_bigendian=int(bigendian), step=rows.shape[1])
    msg.data = rows.tobytes()
    return msg


def assert_red_blue(rgb: np.ndarray, height: int = 4, width: int = 6, tol: int = 0) -> None:
    assert rgb.shape == (height, width, 3) and rgb.dtype == np.uint8
    left, right = rgb[:, : width // 2].reshape(-1, 3), rgb[:, width // 2 :].reshape(-1, 3)
    assert np.abs(left.astype(int) - RED).max() <= tol, left[0]
    assert np.abs(right.astype(int) - BLUE).max() <= tol, right[0]


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize(
    "encoding, order",
    [("rgb8", [0, 1, 2]), ("bgr8", [2, 1, 0]), ("8UC3", [2, 1, 0])],
)
def test_three_channel_8bit(encoding: str, order: list[int], pad: int) -> None:
    pixels = red_blue()[..., order]
    assert_red_blue(image_msg_to_rgb(make_image(pixels, encoding, pad)))


@pytest.mark.parametrize("encoding, order", [("rgba8", [0, 1, 2, 3]), ("bgra8", [2, 1, 0, 3]), ("8UC4", [2, 1, 0, 3])])
def test_four_channel_8bit_drops_alpha(encoding: str, order: list[int]) -> None:
    rgba = np.concatenate([red_blue(), np.full((4, 6, 1), 77, np.uint8)], axis=2)
    assert_red_blue(image_msg_to_rgb(make_image(rgba[..., order], encoding, pad=2)))


@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize(
    "encoding, order",
    [("rgb16", [0, 1, 2]), ("bgr16", [2, 1, 0]), ("rgba16", [0, 1, 2, 3]), ("bgra16", [2, 1, 0, 3])],
)
def test_16bit_colour_scaled_and_endianness(encoding: str, order: list[int], bigendian: bool) -> None:
    rgba16 = np.concatenate([red_blue(), np.full((4, 6, 1), 255, np.uint8)], axis=2).astype(np.uint16) * 257
    pixels = rgba16[..., order[:3]] if len(order) == 3 else rgba16[..., order]
    assert_red_blue(image_msg_to_rgb(make_image(pixels, encoding, pad=4, bigendian=bigendian)))


def test_16bit_scaling_rounds() -> None:
    values = np.array([[0, 128, 257, 32896, 65535, 65278, 65407]], np.uint16)
    rgb = image_msg_to_rgb(make_image(values, "mono16"))
    assert rgb[0, :, 0].tolist() == [0, 0, 1, 128, 255, 254, 255]
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()


@pytest.mark.parametrize("encoding", ["mono8", "8UC1"])
def test_mono8(encoding: str) -> None:
    grey = np.arange(24, dtype=np.uint8).reshape(4, 6) * 10
    rgb = image_msg_to_rgb(make_image(grey, encoding, pad=1))
    assert rgb.shape == (4, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], grey)


def test_mono16_bigendian() -> None:
    grey = (np.arange(24, dtype=np.uint16).reshape(4, 6) * 2570)
    rgb = image_msg_to_rgb(make_image(grey, "mono16", pad=2, bigendian=True))
    np.testing.assert_array_equal(rgb[..., 1], (grey // 257).astype(np.uint8))


@pytest.mark.parametrize("pattern", ["rggb", "bggr", "gbrg", "grbg"])
@pytest.mark.parametrize("bits", [8, 16])
def test_bayer(pattern: str, bits: int) -> None:
    rgb = red_blue(4, 8)  # the colour edge falls between 2x2 cells
    raw = np.zeros((4, 8), np.uint16 if bits == 16 else np.uint8)
    scale = 257 if bits == 16 else 1
    for i, colour in enumerate(pattern):
        plane = rgb[i // 2 :: 2, i % 2 :: 2, "rgb".index(colour)]
        raw[i // 2 :: 2, i % 2 :: 2] = plane.astype(raw.dtype) * scale
    assert_red_blue(image_msg_to_rgb(make_image(raw, f"bayer_{pattern}{bits}", pad=2)), 4, 8)


@pytest.mark.parametrize("encoding", ["yuv422", "yuv422_yuy2"])
def test_yuv422(encoding: str) -> None:
    # BT.601 limited-range Y, U, V of pure red and pure blue.
    yuv = {RED: (81, 90, 240), BLUE: (41, 240, 110)}
    h, w = 4, 8  # the colour edge falls between 2-pixel macropixels
    data = np.zeros((h, w * 2), np.uint8)
    for x in range(0, w, 2):
        y, u, v = yuv[RED if x < w // 2 else BLUE]
        data[:, 2 * x : 2 * x + 4] = (u, y, v, y) if encoding == "yuv422" else (y, u, y, v)
    msg = Image(height=h, width=w, encoding=encoding, step=w * 2)
    msg.data = data.tobytes()
    assert_red_blue(image_msg_to_rgb(msg), h, w, tol=4)


@pytest.mark.parametrize("fmt, codec", [("rgb8; jpeg compressed bgr8", "JPEG"), ("png", "PNG"), ("", "PNG")])
def test_compressed_colour(fmt: str, codec: str) -> None:
    rgb = red_blue(32, 32)
    buf = io.BytesIO()
    # 4:4:4 so chroma subsampling does not blur the red/blue edge into the comparison.
    PILImage.fromarray(rgb).save(buf, codec, quality=95, subsampling=0)
    msg = CompressedImage(format=fmt)
    msg.data = buf.getvalue()
    assert_red_blue(msg_to_rgb(msg), 32, 32, tol=8 if codec == "JPEG" else 0)


def test_compressed_png_16bit_grey() -> None:
    grey = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    buf = io.BytesIO()
    PILImage.fromarray(grey).save(buf, "PNG")
    msg = CompressedImage(format="mono16; png compressed")
    msg.data = buf.getvalue()
    rgb = msg_to_rgb(msg)
    np.testing.assert_array_equal(rgb[..., 2], ((grey.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8))


@pytest.mark.parametrize(
    "kwargs, data, match",
    [
        (dict(height=4, width=6, encoding="rgb8", step=18), b"\0" * 71, "truncated"),
        (dict(height=4, width=6, encoding="rgb8", step=18), b"\0" * 73, "data has 73 bytes"),
        (dict(height=4, width=6, encoding="rgb8", step=10), b"\0" * 40, "step 10 is smaller"),
        (dict(height=0, width=6, encoding="rgb8", step=18), b"", "zero size"),
        (dict(height=4, width=0, encoding="rgb8", step=0), b"", "zero size"),
        (dict(height=4, width=6, encoding="hsv8", step=18), b"\0" * 72, "unsupported encoding 'hsv8'"),
        (dict(height=4, width=6, encoding="", step=18), b"\0" * 72, "empty encoding"),
        (dict(height=4, width=6, encoding="32FC1", step=24), b"\0" * 96, "depth"),
        (dict(height=4, width=5, encoding="bayer_rggb8", step=5), b"\0" * 20, "even width"),
        (dict(height=4, width=5, encoding="yuv422", step=10), b"\0" * 40, "even width"),
        (dict(height=100000, width=100000, encoding="mono8", step=100000), b"", "too large"),
    ],
)
def test_malformed_raw_images(kwargs: dict, data: bytes, match: str) -> None:
    msg = Image(**kwargs)
    msg.data = data
    with pytest.raises(ImageConversionError, match=match):
        image_msg_to_rgb(msg)


@pytest.mark.parametrize(
    "fmt, data, match",
    [
        ("jpeg", b"", "no data"),
        ("jpeg", b"not an image at all", "cannot decode"),
        ("16UC1; compressedDepth png", b"\x89PNG....", "compressed depth"),
    ],
)
def test_malformed_compressed(fmt: str, data: bytes, match: str) -> None:
    msg = CompressedImage(format=fmt)
    msg.data = data
    with pytest.raises(ImageConversionError, match=match):
        msg_to_rgb(msg)


def test_truncated_jpeg() -> None:
    buf = io.BytesIO()
    PILImage.fromarray(red_blue(64, 64)).save(buf, "JPEG")
    msg = CompressedImage(format="jpeg")
    msg.data = buf.getvalue()[: len(buf.getvalue()) // 2]
    with pytest.raises(ImageConversionError, match="cannot decode"):
        msg_to_rgb(msg)


def test_output_does_not_alias_message() -> None:
    msg = make_image(red_blue(), "rgb8")
    rgb = image_msg_to_rgb(msg)
    assert rgb.flags.owndata or rgb.base is None or not np.shares_memory(rgb, np.frombuffer(msg.data, np.uint8))
    assert rgb.flags.c_contiguous


def test_rgb_to_image_msg_round_trip_keeps_header() -> None:
    header = Header(frame_id="camera_color_optical_frame")
    header.stamp.sec, header.stamp.nanosec = 12, 345
    msg = rgb_to_image_msg(red_blue(), header)
    assert (msg.encoding, msg.step, msg.width, msg.height) == ("rgb8", 18, 6, 4)
    assert msg.header.frame_id == "camera_color_optical_frame" and msg.header.stamp.nanosec == 345
    assert_red_blue(image_msg_to_rgb(msg))
    with pytest.raises(ImageConversionError):
        rgb_to_image_msg(np.zeros((4, 6), np.uint8))
