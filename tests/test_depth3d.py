"""groma_ros.depth3d: 3D centre and size of an object from its 2D box and a depth image.

Truth comes from the synthetic world (``groma_core.world``): every object's true pixel box and
the mean 3D point of its visible pixels (``visible_surface_center_3d``, optical frame, metres).
Depth goes through the ROS encodings (``16UC1`` millimetres, ``32FC1`` metres) and back, as the
node receives it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import pytest

from groma_core.world import Scene, render_scene
from groma_ros.depth3d import Intrinsics, Params, Status, box_to_depth_pixels, fit_background_planes, localize_box
from groma_ros.image_conversion import (
    ImageConversionError,
    depth_image_to_metres,
    metres_to_depth_image,
)

SEEDS = range(30)
TOLERANCE_M = 0.03


@lru_cache(maxsize=None)
def scene(seed: int) -> Scene:
    return render_scene(seed)


def intrinsics(s: Scene) -> Intrinsics:
    k = s.intrinsics
    return Intrinsics(k.fx, k.fy, k.cx, k.cy, k.width, k.height)


def received(depth_m: np.ndarray, encoding: str) -> np.ndarray:
    """Depth as the node gets it: through a sensor_msgs/Image of ``encoding`` and back."""
    return depth_image_to_metres(metres_to_depth_image(depth_m, encoding))


def in_range(obj) -> bool:
    return 0.5 <= obj.center_3d[2] <= 1.5


def clutter(s: Scene, obj) -> float:
    """Share of ``obj``'s box covered by other objects."""
    x1, y1, x2, y2 = (int(v) for v in obj.box_xyxy)
    mask = s.instance_mask[y1:y2, x1:x2]
    return float(((mask >= 0) & (mask != obj.index)).mean())


def error(estimate, obj) -> float:
    return float(np.linalg.norm(np.subtract(estimate.center, obj.visible_surface_center_3d)))


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_centre_within_3cm_of_visible_surface_with_true_boxes(encoding: str) -> None:
    """Every object at 0.5-1.5 m that is not occluded and has its box to itself: within 3 cm.
    All objects at 0.5-1.5 m (occluded and cluttered ones too): 95 % within 3 cm, median < 1 cm."""
    clear_errors, all_errors, worst = [], [], []
    for seed in SEEDS:
        s = scene(seed)
        depth = received(s.depth_m, encoding)
        for obj in filter(in_range, s.objects):
            est = localize_box(depth, intrinsics(s), obj.box_xyxy)
            assert est.status == Status.OK, (seed, obj.index, est.message)
            err = error(est, obj)
            all_errors.append(err)
            if obj.occluded_fraction < 0.1 and clutter(s, obj) < 0.05:
                clear_errors.append(err)
                if err > TOLERANCE_M:
                    worst.append((seed, obj.index, f"{obj.color} {obj.kind}", round(err, 3), est.message))
    assert len(clear_errors) >= 100 and len(all_errors) >= 130
    assert not worst, worst
    all_errors = np.array(all_errors)
    assert np.mean(all_errors <= TOLERANCE_M) >= 0.95, np.sort(all_errors)[-10:]
    assert np.median(all_errors) < 0.01


def test_size_is_the_extent_of_the_visible_surface() -> None:
    s = scene(611)
    mug = next(o for o in s.objects if o.color == "blue" and o.kind == "mug")
    est = localize_box(s.depth_m, intrinsics(s), mug.box_xyxy)
    mask = s.instance_mask == mug.index
    vs, us = np.nonzero(mask)
    points = s.intrinsics.backproject(us, vs, s.depth_m[vs, us])
    truth = np.percentile(points, 98, axis=0) - np.percentile(points, 2, axis=0)
    assert np.allclose(est.size, truth, atol=0.02), (est.size, truth)
    assert est.method == "background" and est.selected_pixels > 0.8 * mask.sum()


def test_same_input_same_estimate() -> None:
    s = scene(3)
    a, b = (localize_box(s.depth_m, intrinsics(s), s.objects[0].box_xyxy) for _ in range(2))
    assert a.center == b.center and a.size == b.size


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
@pytest.mark.parametrize(
    "fill, range_max",
    [(0.0, 10.0), (np.nan, 10.0), (np.inf, 10.0), (-1.0, 10.0), (None, 0.3), (20.0, 10.0)],
    ids=["zeros", "nan", "inf", "negative", "beyond_range_max", "far"],
)
def test_invalid_depth_gives_status_and_no_point(encoding: str, fill, range_max: float) -> None:
    s = scene(611)
    depth = s.depth_m.copy()
    if fill is not None:
        depth[:] = fill
    est = localize_box(received(depth, encoding), intrinsics(s), s.objects[0].box_xyxy, params=Params(range_max=range_max))
    assert est.status == Status.NO_VALID_DEPTH, est.message
    assert est.center is None and est.size is None and "no valid depth" in est.message
    assert est.box_pixels > 0 and est.valid_pixels == 0


def test_too_near_is_no_reading() -> None:
    s = scene(611)
    est = localize_box(s.depth_m, intrinsics(s), s.objects[0].box_xyxy, params=Params(range_min=3.0))
    assert est.status == Status.NO_VALID_DEPTH and est.center is None


def test_too_few_valid_pixels() -> None:
    s = scene(611)
    obj = s.objects[0]
    depth = s.depth_m.copy()
    x1, y1, x2, y2 = (int(v) for v in obj.box_xyxy)
    window = depth[y1:y2, x1:x2]
    keep = np.zeros(window.shape, bool)
    keep.flat[:: max(2, window.size // 8)] = True  # a handful of readings survive
    window[~keep] = np.nan
    est = localize_box(depth, intrinsics(s), obj.box_xyxy)
    assert est.status == Status.TOO_FEW_VALID and est.center is None
    assert 0 < est.valid_pixels < est.box_pixels and "valid" in est.message


@pytest.mark.parametrize("encoding", ["32FC1", "16UC1"])
def test_partly_invalid_depth_still_works_and_uses_only_readings(encoding: str) -> None:
    """40 % of the pixels lose their reading (0 / NaN / inf / out of range): same answer within 3 cm,
    and no selected pixel is one without a reading."""
    rng = np.random.default_rng(5)
    checked = 0
    for seed in range(6):
        s = scene(seed)
        depth = s.depth_m.copy()
        lost = rng.random(depth.shape) < 0.4
        depth[lost] = rng.choice(np.array([0.0, np.nan, np.inf, 50.0]), size=int(lost.sum()))
        depth = received(depth, encoding)
        for obj in s.objects:
            if not in_range(obj) or obj.occluded_fraction >= 0.1 or clutter(s, obj) >= 0.05:
                continue
            est = localize_box(depth, intrinsics(s), obj.box_xyxy)
            assert est.status == Status.OK, est.message
            assert error(est, obj) <= TOLERANCE_M, (seed, obj.index, error(est, obj))
            u0, v0, u1, v1 = est.depth_box
            assert not lost[v0:v1, u0:u1][est.mask].any()
            checked += 1
    assert checked >= 15


def test_depth_at_half_resolution_with_full_resolution_camera_info() -> None:
    """A registered depth image at 320x240 for a 640x480 colour image: the box is scaled to the
    depth pixels and K (published for 640x480) is scaled to the depth image."""
    s = scene(611)
    half = s.depth_m[::2, ::2]  # pixel (u, v) of the half image is pixel (2u, 2v) of the full one
    k_full = intrinsics(s)
    checked = 0
    for obj in filter(in_range, s.objects):
        if obj.occluded_fraction >= 0.1 or clutter(s, obj) >= 0.05:
            continue
        for k in (k_full, k_full.scaled_to(320, 240)):
            est = localize_box(half, k, obj.box_xyxy, image_size=(640, 480))
            assert est.status == Status.OK and error(est, obj) <= TOLERANCE_M, (obj.index, est.message, error(est, obj))
        checked += 1
    assert checked >= 3


def test_intrinsics_scaling_keeps_the_ray_of_a_point() -> None:
    k = Intrinsics(600.0, 610.0, 319.5, 241.0, 640, 480)
    half = k.scaled_to(320, 240)
    point = np.array([0.2, -0.1, 1.3])
    # a point projects to pixel-edge coordinates that scale with the image
    u, v = k.fx * point[0] / point[2] + k.cx + 0.5, k.fy * point[1] / point[2] + k.cy + 0.5
    uh, vh = half.fx * point[0] / point[2] + half.cx + 0.5, half.fy * point[1] / point[2] + half.cy + 0.5
    assert (uh, vh) == pytest.approx((u / 2, v / 2))
    assert k.scaled_to(640, 480) == k and Intrinsics(1, 1, 0, 0).scaled_to(8, 6) == Intrinsics(1, 1, 0, 0, 8, 6)


@pytest.mark.parametrize(
    "box, image_size, window",
    [
        ((10.0, 20.0, 30.0, 40.0), None, (10, 20, 30, 40)),
        ((10.2, 20.7, 30.4, 40.6), None, (10, 21, 30, 41)),  # a pixel is in when its centre is
        ((10.0, 20.0, 30.0, 40.0), (1280, 960), (5, 10, 15, 20)),
        ((-50.0, -5.0, 3.0, 4.0), None, (0, 0, 3, 4)),  # clipped
        ((12.2, 20.0, 12.4, 22.0), None, (12, 20, 13, 22)),  # thinner than a pixel: the pixel under it
        ((700.0, 10.0, 720.0, 20.0), None, None),  # outside
        ((30.0, 10.0, 10.0, 20.0), None, None),  # empty
        ((math.nan, 10.0, 20.0, 20.0), None, None),
    ],
)
def test_box_to_depth_pixels(box, image_size, window) -> None:
    assert box_to_depth_pixels(box, image_size, (640, 480)) == window


def test_outside_and_bad_camera_info_and_bad_array() -> None:
    s = scene(611)
    k = intrinsics(s)
    assert localize_box(s.depth_m, k, (700, 10, 720, 30)).status == Status.OUTSIDE_DEPTH
    for bad in (Intrinsics(0.0, 500.0, 320, 240), Intrinsics(math.nan, 500.0, 320, 240), Intrinsics(500.0, 500.0, math.inf, 240)):
        est = localize_box(s.depth_m, bad, s.objects[0].box_xyxy)
        assert est.status == Status.BAD_CAMERA_INFO and est.center is None
    assert localize_box(np.zeros((0, 4)), k, (0, 0, 1, 1)).status == Status.BAD_DEPTH
    assert localize_box(np.zeros((4, 4, 3)), k, (0, 0, 1, 1)).status == Status.BAD_DEPTH


def test_plane_fit_recovers_a_plane_in_inverse_depth() -> None:
    k = Intrinsics(500.0, 500.0, 320.0, 240.0, 640, 480)
    us, vs = np.meshgrid(np.arange(0, 640, 7.0), np.arange(240, 480, 7.0))
    # a table seen from above and in front: the points X with n . X = d
    normal, d = np.array([0.0, 0.8, 0.6]), 0.6
    rays = np.stack([(us - k.cx) / k.fx, (vs - k.cy) / k.fy, np.ones_like(us)], -1)
    z = d / (rays @ normal)
    ok = z > 0
    planes = fit_background_planes(us[ok], vs[ok], z[ok])
    assert len(planes) == 1
    a, b, c = planes[0]
    assert (a, b, c) == pytest.approx((normal[0] / k.fx / d, normal[1] / k.fy / d, (normal[2] - normal[0] * k.cx / k.fx - normal[1] * k.cy / k.fy) / d), rel=1e-6, abs=1e-9)


def test_fallback_without_anything_in_front_of_the_background() -> None:
    """A bare wall 1.2 m away: nothing stands out from the background plane, so the nearest
    dominant depth cluster is used, and it is the wall."""
    k = Intrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
    depth = np.full((480, 640), 1.2, np.float32)
    est = localize_box(depth, k, (300, 200, 340, 260))
    assert est.status == Status.OK and est.method == "nearest_cluster"
    assert est.center == pytest.approx((0.0, (229.5 - 239.5) / 500 * 1.2, 1.2), abs=1e-4)
    assert est.size[2] == pytest.approx(0.0, abs=1e-6)


def test_nearest_dominant_cluster_ignores_a_few_near_outliers() -> None:
    """No ring (box fills the image): a 10 % sprinkle of near readings is not the object."""
    k = Intrinsics(500.0, 500.0, 31.5, 23.5, 64, 48)
    depth = np.full((48, 64), 2.0, np.float32)
    depth[8:40, 16:48] = 0.8
    depth[::7, ::5] = 0.3
    est = localize_box(depth, k, (0, 0, 64, 48))
    assert est.method == "nearest_cluster" and est.depth == pytest.approx(0.8)


def test_depth_image_encodings() -> None:
    depth = np.array([[0.5, 1.2344], [np.nan, 0.0]], np.float32)
    mm = metres_to_depth_image(depth, "16UC1")
    assert (mm.encoding, mm.step, mm.is_bigendian) == ("16UC1", 4, 0)
    assert np.frombuffer(bytes(mm.data), "<u2").tolist() == [500, 1234, 0, 0]
    back = depth_image_to_metres(mm)
    assert back.dtype == np.float32 and back[0, 0] == pytest.approx(0.5) and back[0, 1] == pytest.approx(1.234)
    assert np.isnan(back[1]).all()  # 0 = no reading
    m = depth_image_to_metres(metres_to_depth_image(depth, "32FC1"))
    assert np.array_equal(m, depth, equal_nan=True)
    # big-endian and row padding
    big = metres_to_depth_image(depth, "32FC1")
    rows = depth.astype(">f4").view(np.uint8).reshape(2, 8)
    big.is_bigendian, big.step = 1, 12
    big.data = np.concatenate([rows, np.zeros((2, 4), np.uint8)], axis=1).tobytes()
    assert np.array_equal(depth_image_to_metres(big), depth, equal_nan=True)
    for encoding, fragment in (("mono16", "16UC1"), ("rgb8", "REP 118")):
        msg = metres_to_depth_image(depth, "16UC1")
        msg.encoding = encoding
        with pytest.raises(ImageConversionError, match=fragment):
            depth_image_to_metres(msg)
    short = metres_to_depth_image(depth, "16UC1")
    short.data = bytes(short.data)[:3]
    with pytest.raises(ImageConversionError, match="truncated"):
        depth_image_to_metres(short)
