"""groma_core results <-> ROS messages (vision_msgs 4.x and this package's GroundingResult).

Conventions (the contract documented in ``msg/GroundingResult.msg``):

* A detection is one (phrase, box) pair of the answer, in answer order; a box named by two
  phrases gives two detections, one per ``class_id``.
* ``Detection2D.id`` is ``"<command_id>/<k>"`` with ``k`` the 0-based index of the detection in
  the result, so ids are unique within the node's lifetime and link
  ``GroundedPhrase.detection_ids`` to detections.
* ``Detection2D.header`` and ``Detection2DArray.header`` are the header of the image the command
  was grounded on, unchanged.
* ``results[0].hypothesis.class_id`` is the phrase text, ``score`` the region's proposal score;
  ``pose`` is left zero (no 3D in 2D detections).
* ``bbox`` is axis-aligned (``theta`` = 0) in original image pixels: ``center`` = the box centre,
  ``size_x``/``size_y`` = full width/height, from pixel xyxy boxes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from builtin_interfaces.msg import Duration
from std_msgs.msg import Header
from vision_msgs.msg import BoundingBox2D, Detection2D, Detection2DArray, ObjectHypothesisWithPose

from groma_ros.msg import GroundedPhrase, GroundingResult

__all__ = [
    "BoxXYXY",
    "xyxy_to_bbox2d",
    "bbox2d_to_xyxy",
    "duration_msg",
    "detection_id",
    "grounding_to_messages",
    "fill_result",
    "boxes_of",
    "status_name",
]

BoxXYXY = tuple[float, float, float, float]


def xyxy_to_bbox2d(box: Sequence[float]) -> BoundingBox2D:
    """Pixel ``(x1, y1, x2, y2)`` -> axis-aligned ``BoundingBox2D`` (centre + full size, pixels)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    bbox = BoundingBox2D()
    bbox.center.position.x = (x1 + x2) / 2.0
    bbox.center.position.y = (y1 + y2) / 2.0
    bbox.center.theta = 0.0
    bbox.size_x = x2 - x1
    bbox.size_y = y2 - y1
    return bbox


def bbox2d_to_xyxy(bbox: BoundingBox2D) -> BoxXYXY:
    """``BoundingBox2D`` -> pixel ``(x1, y1, x2, y2)``; ``theta`` is ignored (Groma boxes are upright)."""
    cx, cy = float(bbox.center.position.x), float(bbox.center.position.y)
    hw, hh = float(bbox.size_x) / 2.0, float(bbox.size_y) / 2.0
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def duration_msg(seconds: float) -> Duration:
    """Seconds (>= 0, finite) -> ``builtin_interfaces/Duration``; negatives and NaN clamp to 0."""
    if not math.isfinite(seconds) or seconds < 0.0:
        seconds = 0.0
    nanos = int(round(seconds * 1e9))
    return Duration(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)


def detection_id(command_id: int, k: int) -> str:
    """The ``Detection2D.id`` of the ``k``-th detection of command ``command_id``."""
    return f"{command_id}/{k}"


def grounding_to_messages(
    grounding: Any, header: Header, command_id: int
) -> tuple[Detection2DArray, list[GroundedPhrase]]:
    """A ``groma_core`` ``Grounding`` -> (``Detection2DArray``, ``GroundedPhrase`` messages).

    ``grounding`` needs ``.phrases``, each with ``.text``, ``.start``, ``.end``, ``.boxes_xyxy``
    and ``.scores`` (pixel boxes on the image ``header`` belongs to).
    """
    array = Detection2DArray(header=header)
    phrases: list[GroundedPhrase] = []
    for phrase in grounding.phrases:
        ids: list[str] = []
        for box, score in zip(phrase.boxes_xyxy, phrase.scores):
            det = Detection2D(header=header, bbox=xyxy_to_bbox2d(box))
            det.id = detection_id(command_id, len(array.detections))
            hyp = ObjectHypothesisWithPose()
            hyp.hypothesis.class_id = str(phrase.text)
            hyp.hypothesis.score = float(score)
            det.results = [hyp]
            array.detections.append(det)
            ids.append(det.id)
        phrases.append(
            GroundedPhrase(text=str(phrase.text), start=int(phrase.start), end=int(phrase.end), detection_ids=ids)
        )
    return array, phrases


def fill_result(result: GroundingResult, grounding: Any, header: Header) -> GroundingResult:
    """Copy a ``Grounding`` into ``result`` (answer, raw text, phrases, detections, status).

    The status is ``STATUS_OK`` when at least one phrase has a box (``grounding.found``),
    ``STATUS_NOT_FOUND`` otherwise.  ``result.command_id`` must already be set.
    """
    detections, phrases = grounding_to_messages(grounding, header, int(result.command_id))
    result.header = header
    result.answer = str(grounding.answer)
    result.raw_answer = str(grounding.raw_text)
    result.phrases = phrases
    result.detections = detections
    if grounding.found:
        result.status = GroundingResult.STATUS_OK
        result.status_message = f"{len(detections.detections)} detection(s)"
    else:
        result.status = GroundingResult.STATUS_NOT_FOUND
        result.status_message = "the answer names no region"
    return result


def boxes_of(result: GroundingResult) -> Iterable[tuple[str, str, float, BoxXYXY]]:
    """(id, class_id, score, pixel xyxy) of each detection in ``result`` (for clients and tests)."""
    for det in result.detections.detections:
        hyp = det.results[0].hypothesis if det.results else None
        yield det.id, hyp.class_id if hyp else "", hyp.score if hyp else 0.0, bbox2d_to_xyxy(det.bbox)


def status_name(status: int) -> str:
    """``GroundingResult.STATUS_*`` value -> its name without the prefix, e.g. ``"NOT_FOUND"``."""
    for name in dir(GroundingResult):
        if name.startswith("STATUS_") and getattr(GroundingResult, name) == status:
            return name[len("STATUS_") :]
    return f"UNKNOWN({status})"
