"""The 3D side of a result as ROS messages: depth + camera_info -> Detection3DArray and markers.

No rclpy here (messages only), so everything is testable without a ROS graph; the node matches
the inputs by stamp (:class:`StampBuffer`), calls :func:`localize_detections` and publishes.

Contract (``msg/GroundingResult.msg``, ``msg/Detection3DStatus.msg``):

* ``Detection3DArray.header`` = the depth image's ``frame_id`` (its optical frame) and the colour
  image's stamp, so a consumer transforms the points with TF at the time the image was taken.
* One ``Detection3D`` per 2D detection whose estimate is OK, with the same ``id`` and
  ``results[0].hypothesis`` (``class_id`` = phrase, ``score``); ``bbox.center.position`` = the
  centre of the object's visible surface, ``bbox.size`` = its extent along the optical x, y, z
  axes, metres; orientation identity (axis-aligned in the optical frame).
  ``results[0].pose.pose.position`` repeats the centre.
* One ``Detection3DStatus`` per 2D detection, in the order of the 2D detections.
* Markers (:func:`marker_array`): a ``DELETEALL`` first, then per Detection3D a ``CUBE``
  (namespace ``groma_targets``) and a ``TEXT_VIEW_FACING`` label above it (``groma_labels``),
  coloured like the phrase in the annotated image, with ``lifetime`` set.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Optional

from builtin_interfaces.msg import Duration
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import ColorRGBA, Header
from vision_msgs.msg import Detection2DArray, Detection3D, Detection3DArray, ObjectHypothesisWithPose
from visualization_msgs.msg import Marker, MarkerArray

from groma_core.annotate import PALETTE
from groma_ros.conversions import bbox2d_to_xyxy, duration_msg
from groma_ros.depth3d import Estimate, Intrinsics, Params, Status, localize_box
from groma_ros.image_conversion import ImageConversionError, depth_image_to_metres
from groma_ros.msg import Detection3DStatus, GroundingResult

__all__ = [
    "stamp_ns",
    "StampBuffer",
    "NONE_RECEIVED",
    "intrinsics_from_camera_info",
    "Spatial",
    "unavailable",
    "localize_detections",
    "apply_to_result",
    "marker_array",
    "Target3D",
    "targets_3d",
    "status_3d_name",
]

#: Smallest edge of a marker cube (m), so a flat or one-pixel estimate stays visible in RViz.
MIN_MARKER_SIZE = 0.005
#: Height of the label text (m) and its gap above the cube.
LABEL_HEIGHT = 0.04


def stamp_ns(header: Header) -> int:
    """``header.stamp`` in integer nanoseconds."""
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


#: :meth:`StampBuffer.match`'s reason when the topic never delivered a message (the node's
#: ``depth_status_message`` ends with it while a depth stream has not reached the node yet).
NONE_RECEIVED = "none received"


class StampBuffer:
    """The last ``size`` messages of a topic, looked up by header stamp; thread-safe.

    Subscription callbacks :meth:`add`; the worker :meth:`match`-es the message whose stamp is
    nearest to a given one, optionally waiting a little for one that has not arrived yet (a depth
    image may come a few milliseconds after its colour image).
    """

    def __init__(self, size: int) -> None:
        self._items: deque[Any] = deque(maxlen=max(1, int(size)))
        self._cond = threading.Condition()
        self.received = 0  # messages ever added
        self._last_added = -float("inf")  # time.monotonic() of the last add

    def resize(self, size: int) -> None:
        """Keep at most ``size`` (>= 1) messages from now on (the newest ones)."""
        with self._cond:
            self._items = deque(self._items, maxlen=max(1, int(size)))

    def add(self, msg: Any) -> None:
        """Store ``msg`` (anything with a ``header``), dropping the oldest beyond the size."""
        with self._cond:
            self._items.append(msg)
            self.received += 1
            self._last_added = time.monotonic()
            self._cond.notify_all()

    def clear(self) -> None:
        """Forget every message."""
        with self._cond:
            self._items.clear()

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def newest_stamp(self) -> Optional[int]:
        """The largest header stamp (ns) buffered, None when empty."""
        with self._cond:
            return max((stamp_ns(m.header) for m in self._items), default=None)

    def _nearest(self, stamp: int) -> tuple[Optional[Any], Optional[int]]:
        best, best_diff = None, None
        for msg in self._items:  # oldest first: among equal differences the newest wins
            diff = abs(stamp_ns(msg.header) - stamp)
            if best_diff is None or diff <= best_diff:
                best, best_diff = msg, diff
        return best, best_diff

    def match(
        self, stamp: int, tolerance_ns: int, wait_s: float = 0.0, live_s: float = 1.0
    ) -> tuple[Optional[Any], str]:
        """The buffered message nearest to ``stamp`` (ns) if within ``tolerance_ns``.

        With ``wait_s`` > 0 and no match yet, waits up to that long for one, but only while a
        match can still come: the stream is live (a message was added in the last ``live_s``
        seconds) and nothing newer than ``stamp + tolerance_ns`` is buffered. Returns
        ``(message, "")`` or ``(None, reason)`` where the reason says what was buffered
        (nothing, or the nearest stamp difference).
        """
        end = time.monotonic() + max(0.0, wait_s)
        with self._cond:
            while True:
                msg, diff = self._nearest(stamp)
                if msg is not None and diff <= tolerance_ns:
                    return msg, ""
                newest = self.newest_stamp()  # (the condition's lock is re-entrant)
                live = time.monotonic() - self._last_added < live_s
                can_come = live and newest is not None and newest <= stamp + tolerance_ns
                remaining = end - time.monotonic()
                if not can_come or remaining <= 0:
                    break
                self._cond.wait(remaining)
            count = len(self._items)
        if msg is None:
            return None, NONE_RECEIVED if self.received == 0 else "none buffered"
        return None, f"the nearest of {count} buffered is {diff / 1e9:.3f} s away (tolerance {tolerance_ns / 1e9:g} s)"


def intrinsics_from_camera_info(info: CameraInfo) -> Intrinsics:
    """``CameraInfo.k`` and its ``width``/``height`` as :class:`~groma_ros.depth3d.Intrinsics`.

    ``K`` is the camera matrix of the raw image; for the rectified, undistorted depth images
    RGB-D drivers publish, ``P`` and ``K`` agree, and distortion is not applied here.
    """
    return Intrinsics.from_k(list(info.k), int(info.width), int(info.height))


@dataclass
class Spatial:
    """The 3D part of one result: overall status and message, the Detection3DArray (OK ones
    only) and one ``Detection3DStatus`` per 2D detection; ``estimates`` for diagnostics."""

    status: Status
    message: str
    detections: Detection3DArray = field(default_factory=Detection3DArray)
    statuses: list[Detection3DStatus] = field(default_factory=list)
    estimates: list[Estimate] = field(default_factory=list)


def unavailable(detections: Detection2DArray, status: Status, message: str) -> Spatial:
    """No 3D for any detection, for one reason (disabled, no depth, no camera_info, ...)."""
    statuses = [Detection3DStatus(detection_id=d.id, status=int(status), message=message) for d in detections.detections]
    return Spatial(status, message, Detection3DArray(), statuses)


def _detection3d(det2d: Any, estimate: Estimate, header: Header) -> Detection3D:
    det = Detection3D(header=header, id=det2d.id)
    cx, cy, cz = estimate.center  # type: ignore[misc]
    sx, sy, sz = estimate.size  # type: ignore[misc]
    det.bbox.center.position.x, det.bbox.center.position.y, det.bbox.center.position.z = cx, cy, cz
    det.bbox.center.orientation.w = 1.0
    det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = sx, sy, sz
    for hyp2d in det2d.results[:1]:
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = hyp2d.hypothesis.class_id
        hyp.hypothesis.score = hyp2d.hypothesis.score
        hyp.pose.pose.position = det.bbox.center.position
        hyp.pose.pose.orientation.w = 1.0
        det.results = [hyp]
    return det


def localize_detections(
    detections: Detection2DArray,
    image_header: Header,
    image_size: tuple[int, int],
    depth: Image,
    info: CameraInfo,
    params: Params = Params(),
) -> Spatial:
    """3D estimates of every detection from a matched depth image and camera_info.

    Args:
        detections: the 2D detections (boxes in colour-image pixels).
        image_header: the colour image's header (its stamp goes on the 3D detections).
        image_size: ``(width, height)`` of the colour image; the depth image may differ (the
            boxes are scaled, see ``groma_ros.depth3d``).
        depth: ``16UC1`` or ``32FC1`` depth image registered to the colour image.
        info: the depth image's camera_info.
        params: the estimator's settings (depth range etc.).

    Returns:
        ``Spatial`` with status OK when the inputs are readable (individual detections may still
        fail, each with its own status), or BAD_DEPTH / BAD_CAMERA_INFO for all of them.
    """
    try:
        depth_m = depth_image_to_metres(depth)
    except ImageConversionError as exc:
        return unavailable(detections, Status.BAD_DEPTH, f"depth image cannot be read: {exc}")
    try:
        intrinsics = intrinsics_from_camera_info(info)
    except ValueError as exc:
        return unavailable(detections, Status.BAD_CAMERA_INFO, f"camera_info cannot be used: {exc}")
    why = intrinsics.problem()
    if why is not None:
        return unavailable(detections, Status.BAD_CAMERA_INFO, f"camera_info cannot be used: {why}")
    header = Header(stamp=image_header.stamp, frame_id=depth.header.frame_id)
    out = Spatial(Status.OK, "", Detection3DArray(header=header))
    for det in detections.detections:
        estimate = localize_box(depth_m, intrinsics, bbox2d_to_xyxy(det.bbox), image_size, params)
        out.estimates.append(estimate)
        out.statuses.append(Detection3DStatus(detection_id=det.id, status=int(estimate.status), message=estimate.message))
        if estimate.status == Status.OK:
            out.detections.detections.append(_detection3d(det, estimate, header))
    n, ok = len(detections.detections), len(out.detections.detections)
    out.message = (
        f"depth {depth.width}x{depth.height} {depth.encoding} in '{depth.header.frame_id}': "
        f"{ok} of {n} detection(s) localised"
    )
    return out


def apply_to_result(result: GroundingResult, spatial: Spatial) -> None:
    """Copy ``spatial`` into the 3D fields of ``result``."""
    result.depth_status = int(spatial.status)
    result.depth_status_message = spatial.message
    result.detections_3d = spatial.detections
    result.detections_3d_status = spatial.statuses


def _colour(index: int, alpha: float) -> ColorRGBA:
    r, g, b = PALETTE[index % len(PALETTE)]
    return ColorRGBA(r=r / 255.0, g=g / 255.0, b=b / 255.0, a=alpha)


def marker_array(
    detections: Detection3DArray, header: Header, lifetime_s: float, colour_of: Optional[dict[str, int]] = None
) -> MarkerArray:
    """RViz markers of ``detections``: ``DELETEALL`` first (no stale targets stay), then a
    translucent ``CUBE`` and a ``TEXT_VIEW_FACING`` label ("phrase score, z m") per detection.

    ``header`` goes on every marker (the DELETEALL too, so it is valid even when there are no
    detections); ``lifetime_s`` <= 0 means forever; ``colour_of`` maps ``class_id`` to a
    ``groma_core.annotate.PALETTE`` index (default: order of first appearance).
    """
    colour_of = dict(colour_of or {})
    lifetime = duration_msg(lifetime_s) if lifetime_s > 0 else Duration()
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for k, det in enumerate(detections.detections):
        label = det.results[0].hypothesis.class_id if det.results else ""
        score = det.results[0].hypothesis.score if det.results else 0.0
        colour = colour_of.setdefault(label, len(colour_of))
        centre, size = det.bbox.center.position, det.bbox.size
        cube = Marker(header=header, ns="groma_targets", id=k, type=Marker.CUBE, action=Marker.ADD, lifetime=lifetime)
        cube.pose = det.bbox.center
        cube.scale.x, cube.scale.y, cube.scale.z = (max(MIN_MARKER_SIZE, v) for v in (size.x, size.y, size.z))
        cube.color = _colour(colour, 0.5)
        text = Marker(header=header, ns="groma_labels", id=k, type=Marker.TEXT_VIEW_FACING, action=Marker.ADD, lifetime=lifetime)
        text.pose.position.x, text.pose.position.z = centre.x, centre.z
        # optical y points down: "above" the cube is towards -y
        text.pose.position.y = centre.y - max(MIN_MARKER_SIZE, size.y) / 2 - LABEL_HEIGHT
        text.pose.orientation.w = 1.0
        text.scale.z = LABEL_HEIGHT
        text.color = _colour(colour, 1.0)
        text.text = f"{label} {score:.2f}, {centre.z:.2f} m"
        markers += [cube, text]
    return MarkerArray(markers=markers)


def status_3d_name(status: int) -> str:
    """``Detection3DStatus.STATUS_*`` value -> its name without the prefix, e.g. ``"NO_DEPTH"``."""
    try:
        return Status(status).name
    except ValueError:
        return f"UNKNOWN({status})"


@dataclass
class Target3D:
    """The 3D outcome of one detection of a result, for clients: ``status`` is the
    ``Detection3DStatus`` name without prefix (``"OK"``, ``"NO_DEPTH"``...); ``center``/``size``
    (metres, in ``frame_id``) only when OK."""

    detection_id: str
    status: str
    message: str
    frame_id: str = ""
    center: Optional[tuple[float, float, float]] = None
    size: Optional[tuple[float, float, float]] = None


def targets_3d(result: GroundingResult) -> dict[str, Target3D]:
    """Detection id -> :class:`Target3D` for every detection of ``result`` (in detection order)."""
    boxes = {d.id: d for d in result.detections_3d.detections}
    out: dict[str, Target3D] = {}
    for s in result.detections_3d_status:
        target = Target3D(s.detection_id, status_3d_name(s.status), s.message, result.detections_3d.header.frame_id)
        det = boxes.get(s.detection_id)
        if s.status == Status.OK and det is not None:
            p, size = det.bbox.center.position, det.bbox.size
            target.center, target.size = (p.x, p.y, p.z), (size.x, size.y, size.z)
        out[s.detection_id] = target
    return out
