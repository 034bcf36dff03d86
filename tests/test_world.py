"""The synthetic world: determinism, truth consistent with image, mask, depth and intrinsics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from groma_core.world import COLORS, KINDS, depth_to_16uc1_mm, depth_to_32fc1_m, render_scene, scene_truth, write_scene

SEEDS = list(range(12))


@pytest.fixture(scope="module")
def scenes():
    return {s: render_scene(s) for s in SEEDS}


def test_deterministic_per_seed(scenes):
    again = render_scene(3)
    ref = scenes[3]
    assert np.array_equal(again.image, ref.image)
    assert np.array_equal(again.depth_m, ref.depth_m)
    assert np.array_equal(again.instance_mask, ref.instance_mask)
    assert scene_truth(again) == scene_truth(ref)
    assert not np.array_equal(scenes[4].image, ref.image)


def test_shapes_and_types(scenes):
    for sc in scenes.values():
        H, W = sc.intrinsics.height, sc.intrinsics.width
        assert (H, W) == (480, 640)
        assert sc.image.shape == (H, W, 3) and sc.image.dtype == np.uint8
        assert sc.depth_m.shape == (H, W) and sc.depth_m.dtype == np.float32
        assert sc.instance_mask.shape == (H, W) and sc.instance_mask.dtype == np.int16
        assert np.isfinite(sc.depth_m).all() and (sc.depth_m > 0).all()
        assert 2 <= len(sc.objects) <= 8
        assert [o.index for o in sc.objects] == list(range(len(sc.objects)))
        assert sc.instance_mask.min() >= -1 and sc.instance_mask.max() < len(sc.objects)


def test_object_count_bounds():
    for s in range(3):
        sc = render_scene(100 + s, min_objects=5, max_objects=6)
        assert 5 <= len(sc.objects) <= 6
    small = render_scene(7, width=320, height=240)
    assert small.image.shape == (240, 320, 3)


def test_boxes_match_instance_mask(scenes):
    for sc in scenes.values():
        for o in sc.objects:
            assert o.kind in KINDS and o.color in COLORS and o.size_word in ("small", "medium", "large")
            ys, xs = np.nonzero(sc.instance_mask == o.index)
            assert xs.size == o.visible_pixels > 0
            assert o.box_xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            x1, y1, x2, y2 = o.box_xyxy
            assert 0 <= x1 < x2 <= 640 and 0 <= y1 < y2 <= 480
            assert x2 - x1 >= 12 and y2 - y1 >= 12
            assert max(x2 - x1, y2 - y1) >= 30  # recognisable at 224 px
            assert 0.0 <= o.occluded_fraction <= 0.6


def test_3d_truth_consistent_with_depth(scenes):
    for sc in scenes.values():
        K = sc.intrinsics
        for o in sc.objects:
            c = np.array(o.center_3d)
            assert 0.5 <= c[2] <= 1.5
            u, v = K.project(c)
            x1, y1, x2, y2 = o.box_xyxy
            margin = 0.35 * max(x2 - x1, y2 - y1)  # the centre may project onto an occluder
            assert x1 - margin <= u <= x2 + margin and y1 - margin <= v <= y2 + margin
            # visible surface centre = mean back-projection of the object's depth pixels
            ys, xs = np.nonzero(sc.instance_mask == o.index)
            z = sc.depth_m[ys, xs].astype(np.float64)
            pts = np.stack([(xs - K.cx) / K.fx * z, (ys - K.cy) / K.fy * z, z], 1)
            assert np.allclose(pts.mean(0), o.visible_surface_center_3d, atol=1e-4)
            # the visible surface lies on the camera side of the object, within its extent
            assert np.linalg.norm(np.array(o.visible_surface_center_3d) - c) <= 0.75 * max(o.dimensions_3d) + 0.02


def test_depth_of_table_and_objects(scenes):
    """Objects stand on the table: the depth at an object's pixels is no farther than the table
    behind them would be, and background depth is smooth (a plane per row)."""
    sc = scenes[0]
    bg = sc.instance_mask < 0
    assert bg.mean() > 0.4
    for o in sc.objects:
        z = sc.depth_m[sc.instance_mask == o.index]
        assert 0.3 < z.min() and z.max() < 2.0


def _name_colour(px: np.ndarray) -> str:
    """Nearest palette name to the median of the brighter half of the pixels, allowing for an
    unknown brightness factor (lighting) in a bounded range."""
    names = list(COLORS)
    pal = np.array([COLORS[n] for n in names], np.float64)
    b = px.sum(1)
    med = np.median(px[b >= np.median(b)], 0)
    scales = np.linspace(0.62, 1.1, 13)
    d = np.linalg.norm(scales[:, None, None] * pal[None] - med, axis=2).min(0)
    return names[int(d.argmin())]


def test_colours_survive_lighting(scenes):
    """An object's rendered colour is nearest its own colour name for the large majority of
    objects (kinds with big trims - caps, labels, pages, buttons - are skipped)."""
    good = total = 0
    for sc in scenes.values():
        for o in sc.objects:
            if o.kind in ("can", "bottle", "book", "remote"):
                continue
            good += _name_colour(sc.image[sc.instance_mask == o.index].astype(np.float64)) == o.color
            total += 1
    assert total > 10 and good / total >= 0.9, (good, total)


def test_palette_is_distinct():
    pal = np.array(list(COLORS.values()), np.float64)
    d = np.linalg.norm(pal[:, None] - pal[None], axis=-1)
    np.fill_diagonal(d, 1e9)
    assert len(COLORS) >= 8 and d.min() > 60
    assert len(KINDS) >= 8


def test_truth_json_and_write_scene(tmp_path, scenes):
    truth = scene_truth(scenes[1])
    json.dumps(truth)
    assert len(truth["objects"]) == len(scenes[1].objects)
    png, js = tmp_path / "s.png", tmp_path / "t.json"
    write_scene(1, png, js)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(png)), scenes[1].image)
    assert json.loads(js.read_text()) == json.loads(json.dumps(truth))


def test_depth_encodings_keep_the_visible_surface_within_3cm(scenes):
    """The 3D work reads 16UC1 millimetres or 32FC1 metres: back-projecting an object's pixels
    from either encoding reproduces the visible-surface centre (far inside 3 cm)."""
    for sc in list(scenes.values())[:4]:
        K = sc.intrinsics
        mm = depth_to_16uc1_mm(sc.depth_m)
        m32 = depth_to_32fc1_m(sc.depth_m)
        assert mm.dtype == np.uint16 and (mm > 0).all()
        assert m32.dtype == np.float32 and m32.flags.c_contiguous
        for o in sc.objects:
            ys, xs = np.nonzero(sc.instance_mask == o.index)
            for z in (mm[ys, xs] / 1000.0, m32[ys, xs]):
                p = K.backproject(xs, ys, z).mean(0)
                assert np.linalg.norm(p - np.array(o.visible_surface_center_3d)) < 0.003
    assert depth_to_16uc1_mm(np.array([np.nan, -1.0, 70.0, 0.5004]))[[0, 1, 2, 3]].tolist() == [0, 0, 65535, 500]
