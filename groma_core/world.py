"""A seeded procedural tabletop world, rendered as a pinhole camera sees it.

Everything is real geometry, ray-cast per pixel with numpy, so the colour image, the depth image,
the instance mask and the 3D truth agree exactly.

Conventions
-----------
* **World (table) frame** ``W``: origin on the table top, ``X`` right, ``Y`` forward (away from the
  camera), ``Z`` up; metres. The table top is the plane ``Z = 0``.
* **Camera optical frame** (ROS ``*_optical_frame``): ``x`` right, ``y`` down, ``z`` forward; metres.
  The camera sits at ``(0, 0, h)`` in ``W``, pitched down by ``pitch`` radians, no roll.
* **Pixels**: image arrays are indexed ``[v, u]`` (row, column). The intrinsics follow ROS
  ``CameraInfo``/OpenCV: a 3D point ``(x, y, z)`` projects to ``u = fx * x / z + cx``,
  ``v = fy * y / z + cy`` where integer ``(u, v)`` is the *centre* of pixel ``[v, u]``. Rays are cast
  through pixel centres, so ``depth_m[v, u] * ((u - cx) / fx, (v - cy) / fy, 1)`` is exactly the
  surface point seen by that pixel.
* **Boxes**: ``box_xyxy = (x1, y1, x2, y2)`` in pixel-edge coordinates (pixel ``u`` covers
  ``[u, u + 1)``): ``x1 = min u``, ``x2 = max u + 1`` over the object's *visible* pixels, likewise y.
  This is the usual detection convention (COCO-style) used by ``groma_core.boxes``.
* **Depth**: ``depth_m`` is the optical-frame ``z`` (not the ray length) in metres, float32, finite
  and positive everywhere (objects, table, floor and wall).
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

__all__ = [
    "CameraIntrinsics",
    "SceneObject",
    "Scene",
    "KINDS",
    "COLORS",
    "render_scene",
    "scene_truth",
    "depth_to_16uc1_mm",
    "depth_to_32fc1_m",
    "write_scene",
]

# --------------------------------------------------------------------------------------------------
# Catalogue: kinds and colours
# --------------------------------------------------------------------------------------------------

#: Object kinds, each with a nominal size in metres: (footprint width x, footprint depth y, height z).
#: The actual size is the nominal times a per-object scale (see ``SIZE_SCALES``).
KIND_NOMINAL: dict[str, tuple[float, float, float]] = {
    "mug": (0.085, 0.085, 0.10),
    "cup": (0.085, 0.085, 0.10),
    "bottle": (0.072, 0.072, 0.22),
    "bowl": (0.16, 0.16, 0.055),
    "box": (0.12, 0.10, 0.10),
    "ball": (0.09, 0.09, 0.09),
    "can": (0.066, 0.066, 0.115),
    "book": (0.15, 0.21, 0.035),
    "plate": (0.21, 0.21, 0.02),
    "remote": (0.05, 0.19, 0.022),
}
KINDS: tuple[str, ...] = tuple(KIND_NOMINAL)

#: Named colours, sRGB 0..255 of a fully lit, unshaded surface. Chosen to stay unambiguous under
#: the world's lighting range (brown is dark and desaturated, orange bright and saturated, grey
#: clearly darker than white and lighter than black).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 28, 30),
    "green": (35, 150, 55),
    "blue": (30, 75, 210),
    "yellow": (240, 215, 35),
    "orange": (250, 128, 12),
    "purple": (125, 45, 170),
    "white": (242, 242, 238),
    "black": (32, 32, 36),
    "pink": (245, 125, 180),
    "brown": (110, 66, 38),
    "grey": (122, 124, 126),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

#: Bounds on an object's projected extent (larger side of its projected 3D box) as a fraction of
#: the image height: at 480 px, 40-216 px, so that it stays recognisable at 224 x 224.
MIN_EXTENT_FRAC, MAX_EXTENT_FRAC = 40 / 480, 0.45

#: Probability that a placement tries first to put the object just behind another one (partial
#: occlusion); rendering then drops objects more than ``MAX_OCCLUDED`` hidden.
OCCLUDE_BIAS = 0.35
MAX_OCCLUDED = 0.55

#: Size classes: (word, scale range relative to the kind's nominal size).
SIZE_SCALES: dict[str, tuple[float, float]] = {
    "small": (0.72, 0.84),
    "medium": (0.95, 1.05),
    "large": (1.18, 1.32),
}


# --------------------------------------------------------------------------------------------------
# Public data classes
# --------------------------------------------------------------------------------------------------


@dataclass
class CameraIntrinsics:
    """Pinhole intrinsics in pixels, ROS ``CameraInfo`` convention (integer = pixel centre)."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def K(self) -> np.ndarray:
        """The 3x3 camera matrix ``[[fx,0,cx],[0,fy,cy],[0,0,1]]`` (float64)."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    def project(self, p: np.ndarray) -> np.ndarray:
        """Optical-frame point(s) ``(..., 3)`` in metres -> pixel ``(..., 2)`` as (u, v)."""
        p = np.asarray(p, dtype=np.float64)
        return np.stack([self.fx * p[..., 0] / p[..., 2] + self.cx, self.fy * p[..., 1] / p[..., 2] + self.cy], -1)

    def backproject(self, u: np.ndarray, v: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Pixel centres ``(u, v)`` with optical depth ``z`` (metres) -> optical-frame points ``(..., 3)``."""
        u, v, z = (np.asarray(a, dtype=np.float64) for a in (u, v, z))
        return np.stack([(u - self.cx) / self.fx * z, (v - self.cy) / self.fy * z, z], -1)


@dataclass
class SceneObject:
    """One object of a scene and its ground truth.

    ``box_xyxy`` is the visible pixel box (pixel-edge coordinates, see the module docstring);
    ``center_3d`` the centre of the object's body (on its vertical axis, at half its height; a
    mug's handle is not counted) and ``visible_surface_center_3d`` the mean 3D point of its
    visible pixels (back-projected ``depth_m`` over its ``instance_mask`` pixels), both in the
    camera optical frame (x right, y down, z forward, metres). ``dimensions_3d`` = (width, depth,
    height) of the body in metres along the object's own axes (height is vertical; for round
    kinds width = depth = diameter). ``yaw`` is the rotation about the table normal in radians;
    ``base_world`` the (X, Y) of the base centre in the table frame, metres.
    ``size_word`` describes the size relative to the object's kind: 'small', 'medium' or 'large';
    ``scale`` is the factor on the kind's nominal size. ``occluded_fraction`` is the share of the
    object's unoccluded silhouette hidden by nearer objects (0 = fully visible).
    """

    index: int
    kind: str
    color: str
    size_word: str
    box_xyxy: tuple[float, float, float, float]
    center_3d: tuple[float, float, float]
    visible_surface_center_3d: tuple[float, float, float]
    dimensions_3d: tuple[float, float, float]
    occluded_fraction: float
    scale: float = 1.0
    yaw: float = 0.0
    base_world: tuple[float, float] = (0.0, 0.0)
    visible_pixels: int = 0

    @property
    def box_center(self) -> tuple[float, float]:
        """Centre (u, v) of ``box_xyxy`` in pixel-edge coordinates."""
        x1, y1, x2, y2 = self.box_xyxy
        return ((x1 + x2) / 2.0, (y1 + y2) / 2.0)

    @property
    def box_area(self) -> float:
        """Area of ``box_xyxy`` in square pixels."""
        x1, y1, x2, y2 = self.box_xyxy
        return (x2 - x1) * (y2 - y1)


@dataclass
class Scene:
    """A rendered scene: RGB image, depth, instance mask, camera and objects.

    ``image`` (H, W, 3) uint8 RGB; ``depth_m`` (H, W) float32 optical-frame z in metres, valid
    everywhere; ``instance_mask`` (H, W) int16, the ``index`` of the object seen at each pixel or -1
    for table, floor and wall. ``objects[i].index == i``. ``camera_height_m`` and ``camera_pitch_rad``
    place the camera above the table (pitch = downward tilt of the optical axis).
    """

    seed: int
    image: np.ndarray
    depth_m: np.ndarray
    intrinsics: CameraIntrinsics
    objects: list[SceneObject]
    instance_mask: np.ndarray
    camera_height_m: float = 0.0
    camera_pitch_rad: float = 0.0
    table_style: str = ""
    meta: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Ray-primitive intersections (object local frame: origin at the base centre, z up)
#
# Every function takes the ray origin ``o`` (3 floats, local frame) and direction arrays
# ``dx, dy, dz`` (same broadcast shape) and returns ``(t, nx, ny, nz)``: the nearest valid hit
# parameter (``inf`` for a miss) and the outward unit normal at the hit (local frame).
# --------------------------------------------------------------------------------------------------

_INF = np.float32(np.inf)


def _pick(cands: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]):
    """Nearest of several (t, nx, ny, nz) candidates, per pixel."""
    t, nx, ny, nz = cands[0]
    for ct, cx, cy, cz in cands[1:]:
        closer = ct < t
        t = np.where(closer, ct, t)
        nx = np.where(closer, cx, nx)
        ny = np.where(closer, cy, ny)
        nz = np.where(closer, cz, nz)
    return t, nx, ny, nz


def _quadratic_roots(a, b, c):
    """Both real roots of ``a t^2 + b t + c`` (inf where none); ``a`` must be non-zero."""
    disc = b * b - 4.0 * a * c
    ok = disc >= 0
    sq = np.sqrt(np.where(ok, disc, 0.0))
    inv = 0.5 / np.where(np.abs(a) < 1e-12, 1e-12, a)
    t1 = (-b - sq) * inv
    t2 = (-b + sq) * inv
    lo = np.where(ok, np.minimum(t1, t2), _INF)
    hi = np.where(ok, np.maximum(t1, t2), _INF)
    return lo, hi


def _frustum(o, dx, dy, dz, z0: float, z1: float, r0: float, r1: float, top: str = "closed", floor: float = 0.0):
    """Surface of revolution about the local z axis with radius linear in z (cylinder if r0 == r1).

    ``top``: 'closed' adds the disc ``z = z1``; 'open' leaves the top open and adds an inner floor
    disc at ``z = z0 + floor`` (the inside of a mug/cup); 'none' adds nothing. Hits on the inside
    of the wall keep the *outward* normal; callers detect them with ``n . d > 0``.
    """
    ox, oy, oz = o
    b = (r1 - r0) / (z1 - z0)
    a = r0 - b * z0
    rz_o = a + b * oz
    qa = dx * dx + dy * dy - (b * b) * dz * dz
    qb = 2.0 * (ox * dx + oy * dy - b * dz * rz_o)
    qc = ox * ox + oy * oy - rz_o * rz_o
    cands = []
    for t in _quadratic_roots(qa, qb, qc):
        px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
        valid = (t > 0) & (pz >= z0) & (pz <= z1)
        rz = a + b * pz
        nx, ny, nz = px, py, -b * rz
        inv = 1.0 / np.maximum(np.sqrt(nx * nx + ny * ny + nz * nz), 1e-9)
        cands.append((np.where(valid, t, _INF), nx * inv, ny * inv, nz * inv))
    if top != "none":
        zc = z1 if top == "closed" else z0 + floor
        rc = a + b * zc
        t = (zc - oz) / dz
        px, py = ox + t * dx, oy + t * dy
        valid = (t > 0) & (px * px + py * py <= rc * rc)
        one = np.ones_like(t)
        cands.append((np.where(valid, t, _INF), 0.0 * one, 0.0 * one, one))
    return _pick(cands)


def _sphere(o, dx, dy, dz, cz: float, r: float, zmax: float = np.inf):
    """Sphere of radius ``r`` centred at (0, 0, cz), keeping only points with ``z <= zmax``
    (a bowl when ``zmax`` cuts it; an inner hit then shows through the opening)."""
    ox, oy, oz = o[0], o[1], o[2] - cz
    qa = dx * dx + dy * dy + dz * dz
    qb = 2.0 * (ox * dx + oy * dy + oz * dz)
    qc = ox * ox + oy * oy + oz * oz - r * r
    cands = []
    for t in _quadratic_roots(qa, qb, qc):
        px, py, pz = ox + t * dx, oy + t * dy, oz + t * dz
        valid = (t > 0) & (pz + cz <= zmax)
        cands.append((np.where(valid, t, _INF), px / r, py / r, pz / r))
    return _pick(cands)


def _cuboid(o, dx, dy, dz, hx: float, hy: float, z0: float, z1: float):
    """Axis-aligned cuboid ``|x| <= hx, |y| <= hy, z0 <= z <= z1`` (slab method)."""
    ox, oy, oz = o
    tmin = None
    nsel = None
    tmax = None
    for axis, (oc, dc, lo, hi) in enumerate(((ox, dx, -hx, hx), (oy, dy, -hy, hy), (oz, dz, z0, z1))):
        dcs = np.where(np.abs(dc) < 1e-9, 1e-9, dc)
        ta = (lo - oc) / dcs
        tb = (hi - oc) / dcs
        near = np.minimum(ta, tb)
        far = np.maximum(ta, tb)
        sign = np.where(ta < tb, -1.0, 1.0)  # entering through the low face -> normal -axis
        if tmin is None:
            tmin, tmax = near, far
            nsel = (np.full_like(near, axis), sign)
        else:
            better = near > tmin
            tmin = np.where(better, near, tmin)
            tmax = np.minimum(tmax, far)
            nsel = (np.where(better, axis, nsel[0]), np.where(better, sign, nsel[1]))
    hit = (tmin <= tmax) & (tmin > 0)
    t = np.where(hit, tmin, _INF)
    ax, sg = nsel
    return t, np.where(ax == 0, sg, 0.0), np.where(ax == 1, sg, 0.0), np.where(ax == 2, sg, 0.0)


def _handle(o, dx, dy, dz, xc: float, zc: float, ri: float, ro: float, hw: float):
    """A mug handle: a half annulus of radii ``ri..ro`` in the local xz plane, centred at
    ``(xc, 0, zc)``, on the ``x >= xc`` side, ``2 * hw`` thick along y."""
    ox, oy, oz = o
    cands = []
    for yp in (-hw, hw):
        t = (yp - oy) / np.where(np.abs(dy) < 1e-9, 1e-9, dy)
        px, pz = ox + t * dx - xc, oz + t * dz - zc
        rho2 = px * px + pz * pz
        valid = (t > 0) & (rho2 >= ri * ri) & (rho2 <= ro * ro) & (px >= 0)
        one = np.ones_like(t)
        cands.append((np.where(valid, t, _INF), 0.0 * one, np.sign(yp) * one, 0.0 * one))
    qa = dx * dx + dz * dz
    qa = np.where(qa < 1e-12, 1e-12, qa)
    ex, ez = ox - xc, oz - zc
    qb = 2.0 * (ex * dx + ez * dz)
    for rad, sgn in ((ro, 1.0), (ri, -1.0)):
        qc = ex * ex + ez * ez - rad * rad
        for t in _quadratic_roots(qa, qb, qc):
            px, py, pz = ex + t * dx, oy + t * dy, ez + t * dz
            valid = (t > 0) & (np.abs(py) <= hw) & (px >= 0)
            cands.append((np.where(valid, t, _INF), sgn * px / rad, 0.0 * t, sgn * pz / rad))
    return _pick(cands)


# --------------------------------------------------------------------------------------------------
# Object models: geometry + materials
# --------------------------------------------------------------------------------------------------

# material ids used in the per-pixel material map of one object
M_BODY, M_INSIDE, M_METAL, M_DARK, M_PAGES, M_ACCENT, M_LIGHT = range(7)


@dataclass
class _Obj:
    """Internal description of a placed object (world frame)."""

    kind: str
    color: str
    size_word: str
    scale: float
    dims: tuple[float, float, float]  # width (local x), depth (local y), height (z), metres
    base: tuple[float, float]  # base centre on the table, world X, Y
    yaw: float
    radius: float  # footprint radius on the table (for non-overlap), metres


def _object_hits(obj: _Obj, o, dx, dy, dz):
    """Ray-cast one object in its local frame; returns t, normal (local) and material per pixel."""
    w, d, h = obj.dims
    k = obj.kind
    if k == "mug":
        r = w / 2
        body = _frustum(o, dx, dy, dz, 0.0, h, r, r, top="open", floor=0.08 * h)
        hdl = _handle(o, dx, dy, dz, xc=r * 0.92, zc=0.52 * h, ri=0.2 * h, ro=0.33 * h, hw=0.07 * r)
        t, nx, ny, nz = _pick([body, hdl])
        inside = (nx * dx + ny * dy + nz * dz > 0) | (nz > 0.99)
        mat = _rim(inside, o[2] + t * dz, h, 0.05 * h)
    elif k == "cup":
        body = _frustum(o, dx, dy, dz, 0.0, h, 0.34 * w, 0.5 * w, top="open", floor=0.06 * h)
        t, nx, ny, nz = body
        inside = (nx * dx + ny * dy + nz * dz > 0) | (nz > 0.99)
        mat = _rim(inside, o[2] + t * dz, h, 0.06 * h)
    elif k == "bottle":
        r = w / 2
        rn = 0.36 * r
        parts = [
            _frustum(o, dx, dy, dz, 0.0, 0.6 * h, r, r, top="none"),
            _frustum(o, dx, dy, dz, 0.6 * h, 0.76 * h, r, rn, top="none"),
            _frustum(o, dx, dy, dz, 0.76 * h, 0.9 * h, rn, rn, top="none"),
            _frustum(o, dx, dy, dz, 0.9 * h, h, rn * 1.2, rn * 1.2, top="closed"),
        ]
        t, nx, ny, nz = _pick(parts)
        pz = o[2] + t * dz
        mat = np.where(pz >= 0.9 * h, M_DARK, np.where((pz > 0.18 * h) & (pz < 0.45 * h), M_LIGHT, M_BODY))
    elif k == "bowl":
        rr = w / 2  # a spherical cap resting on its lowest point, cut at the rim height h
        t, nx, ny, nz = _sphere(o, dx, dy, dz, cz=rr, r=rr, zmax=h)
        inside = nx * dx + ny * dy + nz * dz > 0
        mat = _rim(inside, o[2] + t * dz, h, 0.1 * h)
    elif k == "box":
        t, nx, ny, nz = _cuboid(o, dx, dy, dz, w / 2, d / 2, 0.0, h)
        px = o[0] + t * dx
        tape = (nz > 0.5) & (np.abs(px) < 0.12 * w)
        mat = np.where(tape, M_ACCENT, M_BODY)
    elif k == "ball":
        t, nx, ny, nz = _sphere(o, dx, dy, dz, cz=w / 2, r=w / 2)
        mat = np.full(t.shape, M_BODY, np.int8)
    elif k == "can":
        r = w / 2
        t, nx, ny, nz = _frustum(o, dx, dy, dz, 0.0, h, r, r, top="closed")
        pz = o[2] + t * dz
        px, py = o[0] + t * dx, o[1] + t * dy
        top = nz > 0.99
        rim = top & (px * px + py * py > (0.8 * r) ** 2)
        band = (~top) & ((pz > 0.9 * h) | (pz < 0.06 * h))
        mat = np.where(rim | band, M_METAL, np.where(top, M_DARK, M_BODY))
    elif k == "book":
        t, nx, ny, nz = _cuboid(o, dx, dy, dz, w / 2, d / 2, 0.0, h)
        pz = o[2] + t * dz
        cover = (nz > 0.5) | (nx < -0.5) | (pz < 0.12 * h) | (pz > 0.88 * h)
        mat = np.where(cover, M_BODY, M_PAGES)
    elif k == "plate":
        r = w / 2
        t, nx, ny, nz = _frustum(o, dx, dy, dz, 0.0, h, 0.62 * r, r, top="closed")
        px, py = o[0] + t * dx, o[1] + t * dy
        well = (nz > 0.99) & (px * px + py * py < (0.68 * r) ** 2)
        mat = np.where(well, M_INSIDE, M_BODY)
    elif k == "remote":
        t, nx, ny, nz = _cuboid(o, dx, dy, dz, w / 2, d / 2, 0.0, h)
        px, py = o[0] + t * dx, o[1] + t * dy
        cell = np.floor((py + d / 2) / (0.14 * d))
        cx_ = (np.abs(px) - 0.22 * w)
        fy = ((py + d / 2) / (0.14 * d)) - cell - 0.5
        button = (nz > 0.5) & (cell >= 1) & (cell <= 5) & (cx_ * cx_ / (0.12 * w) ** 2 + fy * fy / 0.09 < 1.0)
        power = (nz > 0.5) & (cell == 6) & (px * px / (0.15 * w) ** 2 + fy * fy / 0.12 < 1.0)
        mat = np.where(power, M_ACCENT, np.where(button, M_DARK, M_BODY))
    else:  # pragma: no cover - catalogue is closed
        raise ValueError(f"unknown kind {k!r}")
    return t, nx, ny, nz, mat.astype(np.int8)


def _rim(inside: np.ndarray, pz: np.ndarray, h: float, band: float) -> np.ndarray:
    """Materials of an open container: body outside, a light rim band just inside the top edge
    (it outlines the opening), darker interior below it."""
    return np.where(inside, np.where(pz > h - band, M_LIGHT, M_INSIDE), M_BODY)


def _materials(obj: _Obj) -> np.ndarray:
    """Per-material (base RGB 0..1, specular strength) table for one object, shape (7, 4)."""
    base = np.array(COLORS[obj.color], np.float32) / 255.0
    lum = float(base @ np.array([0.3, 0.59, 0.11], np.float32))
    dark = base * 0.45
    inside = base * 0.9
    light = np.clip(base * 1.15 + 0.05, 0, 1)
    if obj.kind == "bottle":
        dark = np.array([0.9, 0.9, 0.9], np.float32) if lum < 0.45 else np.array([0.15, 0.15, 0.17], np.float32)
        light = np.array([0.95, 0.94, 0.9], np.float32) if obj.color != "white" else np.array([0.2, 0.4, 0.8], np.float32)
    if obj.kind == "can":
        dark = np.array([0.62, 0.63, 0.66], np.float32)
    if obj.kind == "box":
        dark = base * 0.7
    accent = base * 0.72 if obj.kind == "box" else np.array([0.85, 0.15, 0.12], np.float32)
    if obj.kind == "remote" and obj.color == "red":
        accent = np.array([0.9, 0.9, 0.9], np.float32)
    if obj.kind == "remote":
        dark = np.array([0.75, 0.75, 0.75], np.float32) if lum < 0.4 else np.array([0.15, 0.15, 0.15], np.float32)
    metal = np.array([0.78, 0.79, 0.82], np.float32)
    pages = np.array([0.93, 0.91, 0.84], np.float32)
    table = np.zeros((7, 4), np.float32)
    for mid, rgb, spec in (
        (M_BODY, base, 0.25),
        (M_INSIDE, inside, 0.05),
        (M_METAL, metal, 0.8),
        (M_DARK, dark, 0.3),
        (M_PAGES, pages, 0.0),
        (M_ACCENT, accent, 0.2),
        (M_LIGHT, light, 0.2),
    ):
        table[mid, :3] = rgb
        table[mid, 3] = spec
    if obj.kind in ("book", "box", "plate"):
        table[M_BODY, 3] = 0.08
    return table


# --------------------------------------------------------------------------------------------------
# Noise and textures
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _noise_bank() -> tuple[np.ndarray, np.ndarray]:
    """Fixed noise, made once: (1024, 1024, 3) int8 pixel noise and a (256, 256) smooth field in [-1, 1]."""
    g = np.random.default_rng(12345)
    pix = np.clip(g.normal(0, 2.2, (1024, 1024, 3)), -7, 7).astype(np.int8)
    coarse = g.normal(0, 1, (32, 32)).astype(np.float32)
    # periodic bilinear upsampling of a coarse grid gives a smooth tileable field
    xs = np.arange(256, dtype=np.float32) / 8.0
    i0 = np.floor(xs).astype(int)
    f = xs - i0
    i1 = (i0 + 1) % 32
    f = f * f * (3 - 2 * f)
    rows = coarse[i0] * (1 - f)[:, None] + coarse[i1] * f[:, None]
    smooth = rows[:, i0] * (1 - f)[None, :] + rows[:, i1] * f[None, :]
    smooth /= np.abs(smooth).max()
    return pix, smooth.astype(np.float32)


def _field(x: np.ndarray, y: np.ndarray, scale: float, off: float = 0.0) -> np.ndarray:
    """Smooth noise in [-1, 1] sampled at metric coordinates (nearest lookup into a tiled field)."""
    smooth = _noise_bank()[1]
    i = (np.floor(x * scale + off).astype(np.int64)) & 255
    j = (np.floor(y * scale + 2 * off).astype(np.int64)) & 255
    return smooth[j, i]


TABLE_STYLES = ("wood", "cloth", "check", "plain")

_WOODS = [(0.62, 0.45, 0.30), (0.50, 0.34, 0.22), (0.74, 0.60, 0.44), (0.40, 0.30, 0.24)]
_PLAINS = [(0.80, 0.80, 0.78), (0.60, 0.62, 0.64), (0.72, 0.70, 0.64), (0.42, 0.44, 0.46), (0.86, 0.84, 0.80)]
_CLOTHS = [(0.55, 0.62, 0.66), (0.60, 0.66, 0.56), (0.70, 0.66, 0.60), (0.62, 0.58, 0.66), (0.78, 0.78, 0.76)]
_WALLS = [(0.86, 0.84, 0.78), (0.78, 0.82, 0.84), (0.82, 0.78, 0.72), (0.70, 0.72, 0.70), (0.90, 0.90, 0.90)]


def _table_texture(style: str, X: np.ndarray, Y: np.ndarray, rng: random.Random) -> np.ndarray:
    """Table-top albedo (…, 3) in 0..1 at table coordinates (metres)."""
    off = rng.uniform(0, 200)
    if style == "wood":
        base = np.array(rng.choice(_WOODS), np.float32)
        plank_w = rng.uniform(0.09, 0.2)
        along_x = rng.random() < 0.5
        a, b = (X, Y) if along_x else (Y, X)  # grain runs along ``a``; planks are stacked along ``b``
        plank = np.floor(b / plank_w + off)
        tint = 1.0 + 0.08 * np.sin(plank * 12.9898 + off)
        warp = _field(a, b, 6.0, off)
        grain = 0.5 + 0.5 * np.sin((b * 90.0 + 3.5 * warp) * (1.0 + 0.1 * np.sin(plank)))
        gap = np.abs((b / plank_w + off) - plank - 0.5) > 0.485
        shade = tint * (0.9 + 0.12 * grain) * np.where(gap, 0.6, 1.0)
        return base * shade[..., None]
    if style == "check":
        c1 = np.array(rng.choice(_CLOTHS), np.float32)
        c2 = c1 * rng.uniform(0.65, 0.8)
        s = rng.uniform(0.03, 0.06)
        chk = ((np.floor(X / s + off) + np.floor(Y / s)) % 2).astype(np.float32)
        weave = 1.0 + 0.05 * _field(X, Y, 400.0, off)
        return (c1 * (1 - chk[..., None]) + c2 * chk[..., None]) * weave[..., None]
    if style == "cloth":
        c1 = np.array(rng.choice(_CLOTHS), np.float32)
        folds = 1.0 + 0.06 * _field(X, Y, 10.0, off) + 0.04 * _field(X, Y, 300.0, off)
        return c1 * folds[..., None]
    c1 = np.array(rng.choice(_PLAINS), np.float32)
    mottle = 1.0 + 0.03 * _field(X, Y, 20.0, off)
    return c1 * mottle[..., None]


# --------------------------------------------------------------------------------------------------
# Scene layout
# --------------------------------------------------------------------------------------------------


@dataclass
class _Camera:
    K: CameraIntrinsics
    h: float
    pitch: float

    def rays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World-frame ray directions through pixel centres, scaled so that ``t`` = optical z.

        Returns ``dwx`` of shape (1, W) and ``dwy``, ``dwz`` of shape (H, 1) (they broadcast)."""
        K = self.K
        u = np.arange(K.width, dtype=np.float32)
        v = np.arange(K.height, dtype=np.float32)
        dcx = (u - K.cx) / K.fx
        dcy = (v - K.cy) / K.fy
        s, c = math.sin(self.pitch), math.cos(self.pitch)
        # camera axes in the world: x=(1,0,0), y(down)=(0,-s,-c), z(forward)=(0,c,-s)
        dwx = dcx[None, :]
        dwy = (-s * dcy + c)[:, None]
        dwz = (-c * dcy - s)[:, None]
        return dwx, dwy.astype(np.float32), dwz.astype(np.float32)

    def world_to_optical(self, p: np.ndarray) -> np.ndarray:
        """World point(s) ``(..., 3)`` -> optical-frame point(s) ``(..., 3)``."""
        s, c = math.sin(self.pitch), math.cos(self.pitch)
        q = np.asarray(p, np.float64) - np.array([0.0, 0.0, self.h])
        x = q[..., 0]
        y = -s * q[..., 1] - c * q[..., 2]
        z = c * q[..., 1] - s * q[..., 2]
        return np.stack([x, y, z], -1)


def _corners(obj: _Obj) -> np.ndarray:
    """The 8 corners (world frame) of the object's 3D bounding box (handle included)."""
    w, d, h = obj.dims
    hx = w / 2 + (0.3 * h if obj.kind == "mug" else 0.0)
    hy = d / 2
    cs, sn = math.cos(obj.yaw), math.sin(obj.yaw)
    pts = []
    for lx in (-hx, hx):
        for ly in (-hy, hy):
            for lz in (0.0, h):
                pts.append((obj.base[0] + cs * lx - sn * ly, obj.base[1] + sn * lx + cs * ly, lz))
    return np.array(pts)


def _sample_object(rng: random.Random, kind: str, color: str) -> _Obj:
    size_word = rng.choices(("small", "medium", "large"), weights=(1, 1.2, 1))[0]
    scale = rng.uniform(*SIZE_SCALES[size_word])
    w, d, h = (s * scale for s in KIND_NOMINAL[kind])
    if kind == "box":  # boxes vary in proportion too
        w *= rng.uniform(0.8, 1.4)
        d *= rng.uniform(0.8, 1.2)
        h *= rng.uniform(0.8, 1.3)
    yaw = rng.uniform(-math.pi, math.pi)
    if kind == "mug":  # keep the handle to one side so it reads as a mug
        yaw = rng.choice((0.0, math.pi)) + rng.uniform(-0.6, 0.6)
    radius = 0.5 * math.hypot(w, d) if kind in ("box", "book", "remote") else w / 2
    if kind == "mug":
        radius += 0.3 * h
    return _Obj(kind, color, size_word, scale, (w, d, h), (0.0, 0.0), yaw, radius)


def _layout(rng: random.Random, cam: _Camera, n: int) -> list[_Obj]:
    """Place up to ``n`` objects on the table, inside the view, without interpenetration."""
    K = cam.K
    dwx, dwy, dwz = cam.rays()
    placed: list[_Obj] = []
    for _ in range(n):
        kind = rng.choice(KINDS)
        color = rng.choice(COLOR_NAMES)
        obj = _sample_object(rng, kind, color)
        for attempt in range(60):
            if placed and attempt < 30 and rng.random() < OCCLUDE_BIAS:
                # just behind an object already placed, so that it is partly hidden
                p = rng.choice(placed)
                bx = p.base[0] + rng.uniform(-0.8, 0.8) * (p.radius + obj.radius)
                by = p.base[1] + p.radius + obj.radius + rng.uniform(0.015, 0.06)
            else:
                u = rng.uniform(0.08, 0.92) * K.width
                v = rng.uniform(0.35, 0.95) * K.height
                ui, vi = min(int(u), K.width - 1), min(int(v), K.height - 1)
                t = -cam.h / float(dwz[vi, 0])
                bx, by = t * float(dwx[0, ui]), t * float(dwy[vi, 0])
            if any(math.hypot(bx - p.base[0], by - p.base[1]) < obj.radius + p.radius + 0.012 for p in placed):
                continue
            obj.base = (bx, by)
            pc = cam.world_to_optical(_corners(obj))
            if pc[:, 2].min() < 0.3:
                continue
            centre_z = cam.world_to_optical(np.array([bx, by, obj.dims[2] / 2]))[2]
            if not 0.5 <= centre_z <= 1.5:
                continue
            uv = K.project(pc)
            m = 3
            if uv[:, 0].min() < m or uv[:, 1].min() < m or uv[:, 0].max() > K.width - m or uv[:, 1].max() > K.height - m:
                continue
            extent = max(uv[:, 0].max() - uv[:, 0].min(), uv[:, 1].max() - uv[:, 1].min())
            if not MIN_EXTENT_FRAC * K.height <= extent <= MAX_EXTENT_FRAC * K.height:
                continue
            placed.append(obj)
            break
    return placed


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


@dataclass
class _Layer:
    """One object rendered alone: its window in the image and per-pixel depth/colour."""

    y0: int
    y1: int
    x0: int
    x1: int
    depth: np.ndarray  # (h, w) float32, inf outside the silhouette
    rgb: np.ndarray  # (h, w, 3) float32 0..1


def _render_object(obj: _Obj, cam: _Camera, rays, light: np.ndarray) -> _Layer | None:
    K = cam.K
    uv = K.project(cam.world_to_optical(_corners(obj)))
    x0 = max(int(math.floor(uv[:, 0].min())) - 1, 0)
    x1 = min(int(math.ceil(uv[:, 0].max())) + 2, K.width)
    y0 = max(int(math.floor(uv[:, 1].min())) - 1, 0)
    y1 = min(int(math.ceil(uv[:, 1].max())) + 2, K.height)
    if x1 <= x0 or y1 <= y0:
        return None
    dwx, dwy, dwz = rays
    wx, wy, wz = dwx[:, x0:x1], dwy[y0:y1], dwz[y0:y1]
    cs, sn = math.cos(obj.yaw), math.sin(obj.yaw)
    # local frame = world translated to the base and rotated by -yaw about z
    ox, oy = -obj.base[0], -obj.base[1]
    o = (cs * ox + sn * oy, -sn * ox + cs * oy, cam.h)
    dx = cs * wx + sn * wy
    dy = -sn * wx + cs * wy
    dz = np.broadcast_to(wz, dx.shape)
    with np.errstate(all="ignore"):  # misses carry inf/nan normals; only hits are used
        # cull: only rays that cross the object's bounding cylinder are traced (as 1-D arrays)
        r_b, h_b = obj.radius * 1.02 + 0.002, obj.dims[2] * 1.02 + 0.002
        qa = dx * dx + dy * dy
        qb = o[0] * dx + o[1] * dy
        qc = o[0] * o[0] + o[1] * o[1] - r_b * r_b
        disc = qb * qb - qa * qc
        sq = np.sqrt(np.maximum(disc, 0.0))
        t_in, t_out = (-qb - sq) / qa, (-qb + sq) / qa
        t_top, t_bot = (h_b - o[2]) / dz, -o[2] / dz  # rays go down: dz < 0
        cand = (disc > 0) & (np.maximum(t_in, t_top) <= np.minimum(t_out, t_bot))
        if not cand.any():
            return None
        d1 = dx[cand], dy[cand], dz[cand]
        t, nx, ny, nz, mat = _object_hits(obj, o, *d1)
        pz = o[2] + t * d1[2]  # height above the table of each hit
        w1 = tuple(np.broadcast_to(a, cand.shape)[cand] for a in (wx, wy, wz))
        return _shade(obj, t, nx, ny, nz, mat, pz, w1, light, (y0, y1, x0, x1), cand)


def _shade(obj: _Obj, t, nx, ny, nz, mat, pz, wdir, light: np.ndarray, window, cand: np.ndarray) -> _Layer | None:
    """Lambert + Blinn-Phong shading of one object's traced rays (1-D arrays for the pixels
    ``cand`` of the window; normals in the object's local frame); the inside of a container
    darkens with depth below its rim (a cheap ambient occlusion)."""
    y0, y1, x0, x1 = window
    cs, sn = math.cos(obj.yaw), math.sin(obj.yaw)
    hit = np.isfinite(t)
    if not hit.any():
        return None
    t, nx, ny, nz, mat, pz = (a[hit] for a in (t, nx, ny, nz, mat, pz))
    wx, wy, wz = (a[hit] for a in wdir)
    full_hit = np.zeros(cand.shape, bool)
    full_hit[cand] = hit
    # back to world normals; inner surfaces face the viewer
    wnx = cs * nx - sn * ny
    wny = sn * nx + cs * ny
    wnz = nz
    flip = np.where(wnx * wx + wny * wy + wnz * wz > 0, -1.0, 1.0)
    wnx, wny, wnz = wnx * flip, wny * flip, wnz * flip
    lam = np.clip(wnx * light[0] + wny * light[1] + wnz * light[2], 0.0, 1.0)
    # Blinn-Phong highlight with the view direction
    inv = 1.0 / np.sqrt(wx * wx + wy * wy + wz * wz)
    hx, hy, hz = light[0] - wx * inv, light[1] - wy * inv, light[2] - wz * inv
    hn = 1.0 / np.sqrt(hx * hx + hy * hy + hz * hz)
    spec = np.clip((wnx * hx + wny * hy + wnz * hz) * hn, 0.0, 1.0) ** 24
    mtab = _materials(obj)[mat]
    shade = 0.72 + 0.36 * lam
    shade = np.where(mat == M_INSIDE, shade * (0.68 + 0.32 * np.clip(pz / obj.dims[2], 0.0, 1.0)), shade)
    depth = np.full(cand.shape, _INF, np.float32)
    depth[full_hit] = t
    rgb = np.zeros(cand.shape + (3,), np.float32)
    rgb[full_hit] = mtab[:, :3] * shade[:, None] + (mtab[:, 3] * spec * 0.8)[:, None]
    return _Layer(y0, y1, x0, x1, depth, rgb)


def _background(rng: random.Random, cam: _Camera, rays, objs: list[_Obj], light: np.ndarray):
    """Table, floor and wall: depth (H, W) float32, shaded albedo (H, W, 3) float32 0..1, table style."""
    K = cam.K
    dwx, dwy, dwz = rays
    H, W = K.height, K.width
    h = cam.h
    # table extent (world): in front of the camera up to a far edge, wide enough to fill the view
    y_far = rng.uniform(1.25, 2.2)
    half_w = rng.uniform(0.7, 1.4)
    x_c = rng.uniform(-0.3, 0.3)
    y_wall = y_far + (0.0 if rng.random() < 0.5 else rng.uniform(0.2, 1.0))
    floor_z = -rng.uniform(0.7, 0.8)
    style = rng.choice(TABLE_STYLES)

    with np.errstate(divide="ignore", invalid="ignore"):
        t_tab = np.where(dwz < 0, -h / dwz, _INF).astype(np.float32)  # (H, 1)
        t_wall = np.where(dwy > 0, y_wall / dwy, _INF).astype(np.float32)  # (H, 1)
        t_floor = np.where(dwz < 0, (floor_z - h) / dwz, _INF).astype(np.float32)  # (H, 1)
    Yc = np.minimum(t_tab * dwy, 1e3)  # (H, 1): a table row has one Y
    X = np.minimum(t_tab, 1e3) * dwx  # (H, W)
    row_ok = np.isfinite(t_tab) & (Yc <= y_far)  # (H, 1)
    on_table = row_ok & (np.abs(X - x_c) <= half_w)
    t_back = np.minimum(t_wall, t_floor)  # (H, 1)
    depth = np.where(on_table, t_tab, t_back).astype(np.float32)

    # wall: plain paint with a soft vertical gradient and a skirting board; floor: dark boards
    wall_c = np.array(rng.choice(_WALLS), np.float32)
    wall_z = h + t_wall * dwz
    wall_rgb = wall_c * (0.82 + 0.08 * np.clip(wall_z, -1, 1))[..., None]
    wall_rgb = np.where((wall_z < floor_z + 0.08)[..., None], wall_c * 0.6, wall_rgb)  # (H, 1, 3)
    floor_c = np.array(rng.choice(_WOODS), np.float32) * 0.7
    back_rgb = np.where((t_wall < t_floor)[..., None], wall_rgb, floor_c)  # (H, 1, 3)

    # table top, textured in table coordinates so that perspective comes for free; the albedo is
    # smooth at the pixel scale, so it is computed on every other row and column and upsampled
    Xs, Ys = X[::2, ::2], np.broadcast_to(Yc[::2], (Yc[::2].shape[0], X[::2, ::2].shape[1]))
    tex = _table_texture(style, Xs, Ys, rng)
    shade = np.clip(np.minimum(half_w - np.abs(Xs - x_c), y_far - Ys) / 0.02, 0.0, 1.0)  # dark edges
    shade = 0.55 + 0.45 * shade
    # soft contact shadows of the objects, offset away from the light, in a window per object
    lx, ly = -light[0] / max(light[2], 0.3), -light[1] / max(light[2], 0.3)
    for ob in objs:
        hgt = ob.dims[2]
        sx, sy = ob.base[0] + 0.35 * lx * hgt, ob.base[1] + 0.35 * ly * hgt
        rad = ob.radius * 1.05 + 0.15 * hgt
        ring = np.array([[sx + 1.5 * rad * a, sy + 1.5 * rad * b, 0.0] for a in (-1, 1) for b in (-1, 1)])
        pc = cam.world_to_optical(ring)
        if pc[:, 2].min() <= 0.05:
            continue
        uv = K.project(pc)
        x0, x1 = max(int(uv[:, 0].min()), 0), min(int(uv[:, 0].max()) + 1, W)
        y0, y1 = max(int(uv[:, 1].min()), 0), min(int(uv[:, 1].max()) + 1, H)
        x0, x1, y0, y1 = x0 // 2, (x1 + 1) // 2, y0 // 2, (y1 + 1) // 2
        if x1 <= x0 or y1 <= y0:
            continue
        d2 = ((Xs[y0:y1, x0:x1] - sx) ** 2 + (Ys[y0:y1, x0:x1] - sy) ** 2) / (rad * rad)
        fall = np.maximum(1.0 - d2 / 2.25, 0.0)  # compact support: nothing left at the window edge
        shade[y0:y1, x0:x1] *= 1.0 - 0.45 * fall * fall
    tex *= shade[..., None]
    # blend with the wall/floor colour (also at half resolution; edges may differ from the depth
    # image by one pixel), then upsample
    back = np.repeat(back_rgb[::2], tex.shape[1], 1)  # full arrays broadcast much faster than (H, 1, 3)
    tex -= back
    tex *= on_table[::2, ::2, None]
    tex += back
    rgb = tex.repeat(2, 0).repeat(2, 1)[:H, :W]
    return depth, rgb, style


def _compose(bg_depth, bg_rgb, layers: list[_Layer | None], skip: set[int] = frozenset()):
    """Z-buffer the object layers over the background; returns depth, rgb, instance mask, and
    per object the visible and unoccluded pixel counts."""
    depth = bg_depth.copy()
    rgb = bg_rgb.copy()
    mask = np.full(depth.shape, -1, np.int16)
    full = [0] * len(layers)
    for i, L in enumerate(layers):
        if L is None or i in skip:
            continue
        win = (slice(L.y0, L.y1), slice(L.x0, L.x1))
        closer = L.depth < depth[win]
        full[i] = int(np.isfinite(L.depth).sum())
        depth[win] = np.where(closer, L.depth, depth[win])
        mask[win][closer] = i
        rgb[win][closer] = L.rgb[closer]
    vis = np.bincount(mask[mask >= 0].ravel(), minlength=len(layers)) if len(layers) else np.zeros(0, int)
    return depth, rgb, mask, full, vis


def _mask_box(mask: np.ndarray, i: int, L: _Layer) -> tuple[int, int, int, int] | None:
    """Pixel-edge box (x1, y1, x2, y2) of the pixels labelled ``i`` inside layer ``L``'s window."""
    win = mask[L.y0 : L.y1, L.x0 : L.x1] == i
    rows, cols = np.flatnonzero(win.any(1)), np.flatnonzero(win.any(0))
    if rows.size == 0:
        return None
    return (L.x0 + int(cols[0]), L.y0 + int(rows[0]), L.x0 + int(cols[-1]) + 1, L.y0 + int(rows[-1]) + 1)


def render_scene(seed: int, width: int = 640, height: int = 480, min_objects: int = 2, max_objects: int = 8) -> Scene:
    """Render the tabletop scene of ``seed`` (deterministic: same arguments -> identical arrays).

    The camera is 0.4-0.8 m above the table, tilted down 32-55 degrees; focal length gives a
    55-65 degree horizontal field of view. Objects (between ``min_objects`` and ``max_objects``)
    stand on the table with their 3D centres 0.5-1.5 m from the camera (optical z), fully inside
    the image, each at most ~55% occluded and with a visible box of at least 12 px per side.
    """
    if not 1 <= min_objects <= max_objects:
        raise ValueError("need 1 <= min_objects <= max_objects")
    rng = random.Random(f"groma-world-{seed}")
    for _retry in range(20):
        hfov = math.radians(rng.uniform(55, 65))
        f = (width / 2) / math.tan(hfov / 2)
        K = CameraIntrinsics(
            fx=f, fy=f, cx=(width - 1) / 2 + rng.uniform(-4, 4), cy=(height - 1) / 2 + rng.uniform(-4, 4),
            width=width, height=height,
        )
        cam = _Camera(K, h=rng.uniform(0.4, 0.8), pitch=math.radians(rng.uniform(32, 55)))
        n = rng.randint(min_objects, max_objects)
        objs = _layout(rng, cam, n)
        if len(objs) < min_objects:
            continue
        az = rng.uniform(-math.pi, math.pi)
        el = math.radians(rng.uniform(40, 75))
        light = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)], np.float32)
        rays = cam.rays()
        layers = [_render_object(o, cam, rays, light) for o in objs]
        bg_depth, bg_rgb, style = _background(rng, cam, rays, objs, light)
        skip: set[int] = {i for i, L in enumerate(layers) if L is None}
        while True:
            depth, rgb, mask, full, vis = _compose(bg_depth, bg_rgb, layers, skip)
            bad = []
            for i in range(len(objs)):
                if i in skip:
                    continue
                occ = 1.0 - vis[i] / max(full[i], 1)
                box = _mask_box(mask, i, layers[i])
                if occ > MAX_OCCLUDED or box is None or box[2] - box[0] < 12 or box[3] - box[1] < 12:
                    bad.append((occ, i))
            if not bad:
                break
            skip.add(max(bad)[1])
        if len(objs) - len(skip) >= min_objects:
            break
    else:  # pragma: no cover - 20 failed layouts do not happen in practice
        raise RuntimeError(f"could not lay out a scene for seed {seed}")

    # keep the surviving objects, renumbered in order
    keep = [i for i in range(len(objs)) if i not in skip]
    remap = np.full(len(objs) + 1, -1, np.int16)
    for new, old in enumerate(keep):
        remap[old] = new
    if skip:
        mask = remap[mask]  # -1 maps to remap[-1] == -1

    # global lighting: brightness, a soft gradient, vignetting and a slight colour temperature
    gain = rng.uniform(0.9, 1.08)
    gx, gy = rng.uniform(-0.12, 0.12), rng.uniform(-0.1, 0.1)
    temp = rng.uniform(-0.04, 0.04)
    uu = np.arange(width, dtype=np.float32) / width - 0.5
    vv = np.arange(height, dtype=np.float32) / height - 0.5
    # a separable light map (row factor x column factor) keeps this to two fast broadcasts
    row = (gain * (1.0 + gy * vv - 0.18 * vv * vv)).astype(np.float32)
    col = (1.0 + gx * uu - 0.18 * uu * uu).astype(np.float32)
    tint = np.array([1.0 + temp, 1.0, 1.0 - temp], np.float32) * 255.0
    rgb *= (col[:, None] * tint)[None]
    rgb *= row[:, None, None]
    img = rgb
    pix = _noise_bank()[0]
    if height > pix.shape[0] or width > pix.shape[1]:  # larger than the bank: tile it
        pix = np.tile(pix, (-(-height // pix.shape[0]), -(-width // pix.shape[1]), 1))
    oy, ox = rng.randrange(pix.shape[0] - height + 1), rng.randrange(pix.shape[1] - width + 1)
    img += pix[oy : oy + height, ox : ox + width]
    image = np.clip(img, 0, 255).astype(np.uint8)

    objects: list[SceneObject] = []
    for new, old in enumerate(keep):
        o = objs[old]
        L = layers[old]
        win = mask[L.y0 : L.y1, L.x0 : L.x1] == new
        ys, xs = np.nonzero(win)
        ys, xs = ys + L.y0, xs + L.x0
        box = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        pts = K.backproject(xs, ys, depth[ys, xs])
        centre = cam.world_to_optical(np.array([o.base[0], o.base[1], o.dims[2] / 2]))
        objects.append(
            SceneObject(
                index=new, kind=o.kind, color=o.color, size_word=o.size_word, box_xyxy=box,
                center_3d=tuple(float(c) for c in centre),
                visible_surface_center_3d=tuple(float(c) for c in pts.mean(0)),
                dimensions_3d=tuple(float(c) for c in o.dims),
                occluded_fraction=float(1.0 - vis[old] / max(full[old], 1)),
                scale=float(o.scale), yaw=float(o.yaw), base_world=(float(o.base[0]), float(o.base[1])),
                visible_pixels=int(vis[old]),
            )
        )
    return Scene(
        seed=seed, image=image, depth_m=depth.astype(np.float32), intrinsics=K, objects=objects,
        instance_mask=mask.astype(np.int16), camera_height_m=cam.h, camera_pitch_rad=cam.pitch,
        table_style=style,
    )


def depth_to_16uc1_mm(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres (float) -> ROS ``16UC1`` depth: uint16 millimetres, rounded; values beyond
    65.535 m saturate, and 0 (ROS: no reading) only where the input is not finite or <= 0."""
    d = np.asarray(depth_m, dtype=np.float64)
    mm = np.where(np.isfinite(d) & (d > 0), np.rint(d * 1000.0), 0.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def depth_to_32fc1_m(depth_m: np.ndarray) -> np.ndarray:
    """Depth in metres -> ROS ``32FC1`` depth: C-contiguous float32 metres."""
    return np.ascontiguousarray(depth_m, dtype=np.float32)


def scene_truth(scene: Scene) -> dict:
    """JSON-able ground truth of a scene: camera, and per object kind, colour, size, pixel box
    (xyxy, pixel-edge coordinates), 3D centre and visible-surface centre (optical frame, metres),
    dimensions (metres) and occluded fraction."""
    K = scene.intrinsics
    return {
        "seed": scene.seed,
        "width": K.width,
        "height": K.height,
        "intrinsics": {"fx": K.fx, "fy": K.fy, "cx": K.cx, "cy": K.cy, "width": K.width, "height": K.height},
        "camera": {"height_m": scene.camera_height_m, "pitch_rad": scene.camera_pitch_rad},
        "table_style": scene.table_style,
        "conventions": {
            "box_xyxy": "pixels, x right y down, pixel u spans [u, u+1)",
            "3d": "camera optical frame: x right, y down, z forward; metres",
            "depth": "optical z in metres",
        },
        "objects": [
            {
                "index": o.index,
                "kind": o.kind,
                "color": o.color,
                "size": o.size_word,
                "box_xyxy": [round(c, 2) for c in o.box_xyxy],
                "center_3d": [round(c, 5) for c in o.center_3d],
                "visible_surface_center_3d": [round(c, 5) for c in o.visible_surface_center_3d],
                "dimensions_3d": [round(c, 5) for c in o.dimensions_3d],
                "occluded_fraction": round(o.occluded_fraction, 4),
            }
            for o in scene.objects
        ],
    }


def write_scene(seed: int, out_png: str | Path, out_json: str | Path | None = None, width: int = 640, height: int = 480) -> Scene:
    """Render scene ``seed`` and write the RGB image to ``out_png`` (PNG) and, if given, its truth
    (``scene_truth``) to ``out_json``. Returns the scene. Used by ``groma scene``."""
    from PIL import Image

    scene = render_scene(seed, width=width, height=height)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(scene.image).save(out_png)
    if out_json is not None:
        out_json = Path(out_json)
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(scene_truth(scene), indent=2))
    return scene
