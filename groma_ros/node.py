"""``groma_node``: a lifecycle node that grounds natural-language commands on camera images.

Topics are relative, so a namespace or remaps place them (see ``DESIGN.md``):

* in: ``image`` (sensor_msgs/Image), ``image/compressed`` (CompressedImage, when
  ``subscribe_compressed``), ``command`` (std_msgs/String); with ``use_depth``: ``depth``
  (sensor_msgs/Image, 16UC1 mm or 32FC1 m, registered to the colour image) and ``camera_info``
  (its sensor_msgs/CameraInfo), names set by ``depth_topic``/``camera_info_topic``
* out: ``detections`` (vision_msgs/Detection2DArray), ``grounding`` (groma_ros/GroundingResult),
  ``annotated_image`` (sensor_msgs/Image, rgb8); with ``use_depth``: ``detections_3d``
  (vision_msgs/Detection3DArray) and ``markers`` (visualization_msgs/MarkerArray)
* service: ``~/ground`` (groma_ros/Ground)

Lifecycle: *configure* loads the model; *activate* creates subscriptions, publishers, the service
and the worker thread; *deactivate* destroys them (queued commands get an ERROR result);
*cleanup* frees the model.  Deactivate keeps the model so that pause/resume is instant;
cleanup is the transition that gives memory back.  ``autostart`` runs configure + activate at
start-up, so the node works without a lifecycle manager.

Threading: image callbacks only store the latest message (KEEP_LAST 1).  Commands go into one
FIFO queue that a single worker thread drains, so commands run in arrival order, never inside
an image callback, and an image flood cannot delay them beyond the model's own time.  Every
callback returns at once (the service awaits its job without blocking), so one
SingleThreadedExecutor serves them all.  rclpy's MultiThreadedExecutor is not used: on a 2-core
machine it delivered images up to 5 s late (medians 20-45 ms; single-threaded, at most 1 ms;
measured with the test harness, rclpy 9.1.2).

3D: depth and camera_info callbacks only store the message in a small stamp-indexed buffer
(``groma_ros.spatial.StampBuffer``), and the image callback keeps as many recent images.  For
each command the worker takes the depth image whose stamp is nearest the latest colour image's
(within ``depth_max_stamp_diff``, waiting up to ``depth_wait`` for one still on its way) and the
camera_info nearest that depth image.  When the latest image's depth was lost (best-effort
transport drops a large depth frame now and then, more often on a loaded machine: the depth
stream went on past it), the newest buffered image that has both and is not older than
``max_frame_age`` is grounded instead (the result's header says which), so one lost frame does
not cost the planner its 3D targets.  Every detection is then
localised (``groma_ros.depth3d``).  Missing or unusable inputs never fail the command: the
result's ``depth_status`` and per-detection ``detections_3d_status`` say what is missing.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import time
import traceback
import unicodedata
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from sensor_msgs.msg import CameraInfo, CompressedImage, Image
from std_msgs.msg import Header, String
from vision_msgs.msg import BoundingBox2D, Detection2DArray, Detection3DArray
from visualization_msgs.msg import MarkerArray

from groma_core.errors import GromaInputError
from groma_core.annotate import annotate
from groma_ros.conversions import bbox2d_to_xyxy, duration_msg, fill_result
from groma_ros.depth3d import Params as DepthParams
from groma_ros.depth3d import Status as DepthStatus
from groma_ros.spatial import (
    Spatial,
    StampBuffer,
    apply_to_result,
    localize_detections,
    marker_array,
    stamp_ns,
    unavailable,
)
from groma_ros.image_conversion import ImageConversionError, msg_to_rgb, rgb_to_image_msg
from groma_ros.ros_process import run_node
from groma_ros.msg import GroundingResult
from groma_ros.srv import Ground

__all__ = ["GromaNode", "PipelineFactory", "validate_command", "main"]

#: ``factory(path, device=..., dtype=..., nms_thres=..., box_score_thres=..., max_region_num=...)``
#: -> an object with ``encode``, ``ground``, ``ask`` (the ``GromaPipeline`` API).
PipelineFactory = Callable[..., Any]

ImageMsg = Union[Image, CompressedImage]

_RELIABILITY = {
    "best_effort": ReliabilityPolicy.BEST_EFFORT,
    "reliable": ReliabilityPolicy.RELIABLE,
    "system_default": ReliabilityPolicy.SYSTEM_DEFAULT,
}
_DTYPES = ("float32", "float16", "bfloat16")
# Depth of the command subscription and the result publishers: commands are small and each one
# must get a result, so allow a burst to wait in DDS rather than be overwritten.
_COMMAND_DEPTH = 100


def _describe(text: str, **kwargs: Any) -> ParameterDescriptor:
    return ParameterDescriptor(description=text, **kwargs)


# name -> (default, descriptor). Read at configure (model), activate (topics) or per command
# ("live"); the description says which, so `ros2 param describe` tells the user.
PARAMETERS: dict[str, tuple[Any, ParameterDescriptor]] = {
    "autostart": (True, _describe("Configure and activate at start-up, without a lifecycle manager.", read_only=True)),
    "model_path": ("", _describe("Groma model directory; empty = the embedded groma-tiny model. Applied at configure.")),
    "device": ("cpu", _describe("Torch device for the model, e.g. 'cpu', 'cuda', 'cuda:1'. Applied at configure.")),
    "dtype": ("float32", _describe(f"Model weights dtype, one of {', '.join(_DTYPES)}. Applied at configure.")),
    "nms_threshold": (
        -1.0,
        _describe(
            "IoU threshold of the region proposer's NMS; negative = the model's default. Applied at configure.",
            floating_point_range=[FloatingPointRange(from_value=-1.0, to_value=1.0)],
        ),
    ),
    "box_score_threshold": (
        -1.0,
        _describe(
            "Minimum proposal score of a region; negative = the model's default. Applied at configure.",
            floating_point_range=[FloatingPointRange(from_value=-1.0, to_value=1.0)],
        ),
    ),
    "max_regions": (
        -1,
        _describe(
            "Most regions proposed per frame; negative = the model's default. Applied at configure.",
            integer_range=[IntegerRange(from_value=-1, to_value=1000, step=1)],
        ),
    ),
    "max_new_tokens": (
        0,
        _describe(
            "Most tokens generated per answer; 0 = the model's default. Live.",
            integer_range=[IntegerRange(from_value=0, to_value=4096, step=1)],
        ),
    ),
    "image_reliability": (
        "best_effort",
        _describe(
            "Reliability of the image subscriptions: best_effort (sensor data; matches every camera), "
            "reliable (only matches reliable publishers), system_default. Applied at activate."
        ),
    ),
    "subscribe_compressed": (False, _describe("Also subscribe 'image/compressed' (JPEG/PNG). Applied at activate.")),
    "max_frame_age": (
        2.0,
        _describe(
            "Commands fail with STALE_IMAGE when the latest image is older than this (seconds, "
            "now minus header stamp); <= 0 disables the check. Live."
        ),
    ),
    "no_image_warning_delay": (
        5.0,
        _describe("Warn once if no image arrived this many seconds after activation; <= 0 disables. Applied at activate."),
    ),
    "publish_detections": (True, _describe("Publish vision_msgs/Detection2DArray on 'detections'. Live.")),
    "publish_annotated_image": (
        True,
        _describe("Publish the image with boxes and phrases on 'annotated_image' (drawn only when subscribed). Live."),
    ),
    "use_depth": (
        True,
        _describe(
            "Subscribe the depth image and camera_info and add 3D to every result (GroundingResult "
            "3D fields, 'detections_3d', 'markers'). Applied at activate."
        ),
    ),
    "depth_topic": (
        "depth",
        _describe(
            "Depth image topic (sensor_msgs/Image, 16UC1 millimetres or 32FC1 metres, registered to "
            "the colour image); relative names follow the namespace. Applied at activate."
        ),
    ),
    "camera_info_topic": (
        "camera_info",
        _describe("sensor_msgs/CameraInfo of the depth image. Applied at activate."),
    ),
    "depth_max_stamp_diff": (
        0.05,
        _describe(
            "Largest stamp difference (seconds) between the colour image and its depth image, and "
            "between the depth image and its camera_info. Live.",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=10.0)],
        ),
    ),
    "depth_wait": (
        0.2,
        _describe(
            "Seconds a command waits for a matching depth image or camera_info that has not arrived "
            "yet (only while one still can). Live.",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=5.0)],
        ),
    ),
    "depth_buffer_size": (
        10,
        _describe(
            "Recent depth images, camera_infos and colour images kept for stamp matching. Applied at activate.",
            integer_range=[IntegerRange(from_value=1, to_value=1000, step=1)],
        ),
    ),
    "depth_range_min": (
        0.1,
        _describe(
            "Depth readings nearer than this (metres) count as no reading. Live.",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1000.0)],
        ),
    ),
    "depth_range_max": (
        10.0,
        _describe(
            "Depth readings farther than this (metres) count as no reading. Live.",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=1000.0)],
        ),
    ),
    "publish_markers": (
        True,
        _describe(
            "Publish visualization_msgs/MarkerArray on 'markers' with use_depth: a DELETEALL, then a "
            "cube and a label per 3D target. Live."
        ),
    ),
    "marker_lifetime": (
        10.0,
        _describe(
            "Lifetime of the markers in seconds; 0 = until the next command's DELETEALL. Live.",
            floating_point_range=[FloatingPointRange(from_value=0.0, to_value=3600.0)],
        ),
    ),
    "max_queue": (
        100,
        _describe(
            "Most commands waiting; further commands get an ERROR result at once. Live.",
            integer_range=[IntegerRange(from_value=1, to_value=100000, step=1)],
        ),
    ),
}


def validate_command(command: Any, max_chars: Optional[int], allow_empty: bool = False) -> Optional[str]:
    """Return why ``command`` cannot be grounded, or ``None`` when it is usable text.

    Rejected: non-``str``, empty or whitespace-only (unless ``allow_empty``), longer than
    ``max_chars`` (when given), containing control characters or U+FFFD (what undecodable bytes
    become), or without a single letter or digit.
    """
    if not isinstance(command, str):
        return f"command must be text, got {type(command).__name__}"
    if not command.strip():
        if allow_empty:
            return None
        return "command is empty" if not command else "command is only whitespace"
    if max_chars is not None and len(command) > max_chars:
        return f"command is too long ({len(command)} characters > {max_chars})"
    for ch in command:
        if ch == "\ufffd" or (unicodedata.category(ch) == "Cc" and ch not in "\t\n\r"):
            return f"command is not text (contains {ch!r})"
    if not any(ch.isalnum() for ch in command):
        return "command is not text (no letter or digit)"
    return None


@dataclass
class _Job:
    """One command waiting for the worker, from the topic or the service."""

    command_id: int
    command: Any
    received: float  # time.monotonic() at arrival, for the latency
    image: Optional[Image] = None  # service: its own image
    regions: list[BoundingBox2D] = field(default_factory=list)
    done: Optional[Future] = None  # service: completed with the result by the worker


@dataclass
class _Latest:
    """An image message and when it arrived (receive sequence number, ROS time)."""

    msg: ImageMsg
    seq: int
    received_ns: int


_STOP = object()


def _frame_age(frame: _Latest, now_ns: int) -> float:
    """Seconds from ``frame``'s header stamp to ``now_ns``.  An unstamped image (stamp 0) would
    always look decades old; its arrival time is the best estimate of when it was taken."""
    return (now_ns - (stamp_ns(frame.msg.header) or frame.received_ns)) / 1e9


class GromaNode(LifecycleNode):
    """The Groma lifecycle node; see the module docstring for topics and lifecycle."""

    def __init__(self, pipeline_factory: Optional[PipelineFactory] = None, **kwargs: Any) -> None:
        """Create the node (unconfigured) and declare its parameters.

        Args:
            pipeline_factory: builds the model at configure; default
                ``groma_core.pipeline.GromaPipeline.from_pretrained``.  Tests inject a double.
            kwargs: passed to ``LifecycleNode`` (e.g. ``context``, ``parameter_overrides``).
        """
        kwargs.setdefault("node_name", "groma_node")
        super().__init__(**kwargs)
        self._pipeline_factory = pipeline_factory
        for name, (default, descriptor) in PARAMETERS.items():
            self.declare_parameter(name, default, descriptor)
        self.add_on_set_parameters_callback(self._check_parameters)
        bad = self._check_parameters([self.get_parameter(n) for n in PARAMETERS])
        if not bad.successful:
            raise ValueError(f"invalid parameter: {bad.reason}")

        self._pipeline: Any = None
        self._lock = threading.Lock()  # guards _recent, _command_seq
        # Recent images, newest last: the latest, and with 3D on (depth_buffer_size of them) the
        # ones to fall back on when the latest one's depth was lost.
        self._recent: deque[_Latest] = deque(maxlen=1)
        self._image_seq = 0
        self._command_seq = 0
        # (image receive seq, rgb, encoded frame) of the last frame the model saw; one entry
        # only, so memory does not grow with the stream.
        self._cache: Optional[tuple[int, Any, Any]] = None
        self._queue: "queue.Queue[Any]" = queue.Queue()
        self._worker: Optional[threading.Thread] = None
        self._publish_lock = threading.Lock()
        self._output_pubs: list[Any] = []
        self._input_subs: list[Any] = []
        self._ground_srv = None
        self._pub_grounding = self._pub_detections = self._pub_annotated = None
        self._pub_detections_3d = self._pub_markers = None
        self._depth_buffer = StampBuffer(int(self._param("depth_buffer_size")))
        self._info_buffer = StampBuffer(int(self._param("depth_buffer_size")))
        self._depth_active = False  # use_depth as applied at the last activation
        self._warn_timer = None
        self._activated_at = time.monotonic()
        self._image_qos_name = str(self._param("image_reliability"))

    # ------------------------------------------------------------------ parameters

    def _check_parameters(self, params: list[Any]) -> SetParametersResult:
        for p in params:
            if p.name == "image_reliability" and p.value not in _RELIABILITY:
                return SetParametersResult(
                    successful=False, reason=f"image_reliability must be one of {sorted(_RELIABILITY)}, got {p.value!r}"
                )
            if p.name == "dtype" and p.value not in _DTYPES:
                return SetParametersResult(successful=False, reason=f"dtype must be one of {_DTYPES}, got {p.value!r}")
            if p.name == "device" and not str(p.value).strip():
                return SetParametersResult(successful=False, reason="device must not be empty")
            if p.name in ("depth_topic", "camera_info_topic") and not str(p.value).strip():
                return SetParametersResult(successful=False, reason=f"{p.name} must not be empty")
        new = {p.name: p.value for p in params}
        if "depth_range_min" in new or "depth_range_max" in new:
            lo = new.get("depth_range_min", self._param_or_default("depth_range_min"))
            hi = new.get("depth_range_max", self._param_or_default("depth_range_max"))
            if not lo < hi:
                return SetParametersResult(
                    successful=False, reason=f"depth_range_min ({lo}) must be less than depth_range_max ({hi})"
                )
        return SetParametersResult(successful=True)

    def _param_or_default(self, name: str) -> Any:
        return self._param(name) if self.has_parameter(name) else PARAMETERS[name][0]

    def _param(self, name: str) -> Any:
        return self.get_parameter(name).value

    # ------------------------------------------------------------------ lifecycle

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Load the model with the model parameters; FAILURE (logged) if it cannot be loaded."""
        factory = self._pipeline_factory
        if factory is None:
            from groma_core.pipeline import GromaPipeline

            factory = GromaPipeline.from_pretrained
        path = self._param("model_path") or None
        nms, score, regions = (self._param(n) for n in ("nms_threshold", "box_score_threshold", "max_regions"))
        started = time.monotonic()
        try:
            self._pipeline = factory(
                path,
                device=self._param("device"),
                dtype=self._param("dtype"),
                nms_thres=nms if nms >= 0 else None,
                box_score_thres=score if score >= 0 else None,
                max_region_num=regions if regions >= 0 else None,
            )
        except Exception as exc:  # noqa: BLE001 - any load failure must leave the node alive
            self.get_logger().error(
                f"cannot load the model from {path or 'the embedded groma-tiny'}: {type(exc).__name__}: {exc}"
            )
            return TransitionCallbackReturn.FAILURE
        self.get_logger().info(
            f"model {path or 'groma-tiny (embedded)'} loaded on {self._param('device')} "
            f"({self._param('dtype')}) in {time.monotonic() - started:.1f} s"
        )
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Create publishers, subscriptions, the service, the no-image warning and the worker."""
        results = QoSProfile(depth=_COMMAND_DEPTH, reliability=ReliabilityPolicy.RELIABLE)
        self._pub_grounding = self.create_publisher(GroundingResult, "grounding", results)
        self._pub_detections = self.create_publisher(Detection2DArray, "detections", results)
        self._pub_annotated = self.create_publisher(Image, "annotated_image", QoSProfile(depth=1))
        self._output_pubs = [self._pub_grounding, self._pub_detections, self._pub_annotated]
        self._depth_active = bool(self._param("use_depth"))
        if self._depth_active:
            self._pub_detections_3d = self.create_publisher(Detection3DArray, "detections_3d", results)
            self._pub_markers = self.create_publisher(MarkerArray, "markers", QoSProfile(depth=10))
            self._output_pubs += [self._pub_detections_3d, self._pub_markers]

        reliability = self._param("image_reliability")
        image_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=1,
            reliability=_RELIABILITY[reliability],
            durability=DurabilityPolicy.VOLATILE,
        )
        self._image_qos_name = reliability
        topics: list[tuple[type, str]] = [(Image, "image")]
        if self._param("subscribe_compressed"):
            topics.append((CompressedImage, "image/compressed"))
        self._input_subs = [
            self.create_subscription(kind, topic, self._on_image, image_qos)
            for kind, topic in topics
        ]
        if self._depth_active:
            size = int(self._param("depth_buffer_size"))
            self._depth_buffer, self._info_buffer = StampBuffer(size), StampBuffer(size)
            with self._lock:
                self._recent = deque(maxlen=size)
            depth_qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST, depth=size, reliability=_RELIABILITY[reliability],
                durability=DurabilityPolicy.VOLATILE,
            )
            for kind, topic, buffer in (
                (Image, self._param("depth_topic"), self._depth_buffer),
                (CameraInfo, self._param("camera_info_topic"), self._info_buffer),
            ):
                self._input_subs.append(
                    self.create_subscription(kind, topic, buffer.add, depth_qos)
                )
        self._input_subs.append(
            self.create_subscription(
                String,
                "command",
                self._on_command,
                QoSProfile(depth=_COMMAND_DEPTH, reliability=ReliabilityPolicy.RELIABLE),
            )
        )
        self._ground_srv = self.create_service(Ground, "~/ground", self._on_ground)
        self._activated_at = time.monotonic()
        delay = float(self._param("no_image_warning_delay"))
        if delay > 0:
            self._warn_timer = self.create_timer(delay, self._warn_no_image)
        self._worker = threading.Thread(target=self._work, name="groma_worker", daemon=True)
        self._worker.start()
        depth_note = (
            f", depth on '{self.resolve_topic_name(self._param('depth_topic'))}' and "
            f"'{self.resolve_topic_name(self._param('camera_info_topic'))}'"
            if self._depth_active
            else ", 3D off"
        )
        self.get_logger().info(
            f"active: image on '{self.resolve_topic_name('image')}' ({reliability}), "
            f"commands on '{self.resolve_topic_name('command')}'{depth_note}"
        )
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop taking input, answer queued commands with ERROR, stop the worker, destroy entities."""
        # Input first, so nothing is queued after the drain; publishers last, so the drained
        # commands' results still go out.
        for sub in self._input_subs:
            self.destroy_subscription(sub)
        if self._ground_srv is not None:
            self.destroy_service(self._ground_srv)
        if self._warn_timer is not None:
            self.destroy_timer(self._warn_timer)
            self._warn_timer = None
        self._stop_worker("the node was deactivated before the command ran")
        for pub in self._output_pubs:
            self.destroy_publisher(pub)
        self._input_subs, self._ground_srv, self._output_pubs = [], None, []
        self._pub_grounding = self._pub_detections = self._pub_annotated = None
        self._pub_detections_3d = self._pub_markers = None
        self._depth_buffer.clear()
        self._info_buffer.clear()
        with self._lock:
            self._recent = deque(maxlen=1)
        self._cache = None
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Free the model (and the accelerator memory it held)."""
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """Stop everything from any state."""
        if self._worker is not None:
            self.on_deactivate(state)
        self._release_model()
        return TransitionCallbackReturn.SUCCESS

    def _release_model(self) -> None:
        self._pipeline = None
        self._cache = None
        torch = sys.modules.get("torch")  # only if the model brought it in
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def _stop_worker(self, reason: str) -> None:
        if self._worker is None:
            return
        # Drain first so that queued commands are answered now instead of run after the stop,
        # and again after the join for any that a callback still in flight queued meanwhile.
        self._drain(reason)
        self._queue.put(_STOP)
        self._worker.join()
        self._worker = None
        self._drain(reason)

    def _drain(self, reason: str) -> None:
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._finish(job, self._new_result(job), GroundingResult.STATUS_ERROR, reason)

    # ------------------------------------------------------------------ callbacks

    def _on_image(self, msg: ImageMsg) -> None:
        # Only store: conversion and the model run in the worker, so the executor thread that
        # serves the image topic is free again in microseconds whatever the frame rate.
        now = self.get_clock().now().nanoseconds
        with self._lock:
            self._image_seq += 1
            self._recent.append(_Latest(msg, self._image_seq, now))

    def _latest_frame(self) -> Optional[_Latest]:
        with self._lock:
            return self._recent[-1] if self._recent else None

    def _warn_no_image(self) -> None:
        if self._warn_timer is not None:
            self.destroy_timer(self._warn_timer)
            self._warn_timer = None
        if self._latest_frame() is not None:
            return
        self.get_logger().warning(self._no_image_reason(time.monotonic() - self._activated_at))

    def _no_image_reason(self, waited: float) -> str:
        topic = self.resolve_topic_name("image")
        publishers = self.get_publishers_info_by_topic(topic)
        text = f"no image received on '{topic}' in {waited:.1f} s since activation. "
        if not publishers:
            return text + "Nothing publishes there: check the camera and topic remaps (e.g. image:=/camera/image_raw)."
        theirs = sorted({p.qos_profile.reliability.name.lower() for p in publishers})
        text += f"{len(publishers)} publisher(s) with reliability {', '.join(theirs)}; this node subscribes with {self._image_qos_name}. "
        if self._image_qos_name == "reliable" and "best_effort" in theirs:
            return text + "A reliable subscription does not match best-effort publishers: set image_reliability:=best_effort."
        return text + (
            "Check the QoS (reliability/durability) and, for large images, that "
            "FASTDDS_DEFAULT_PROFILES_FILE points to the large-message profile."
        )

    def _next_command_id(self) -> int:
        with self._lock:
            self._command_seq += 1
            return self._command_seq

    def _on_command(self, msg: String) -> None:
        job = _Job(self._next_command_id(), msg.data, time.monotonic())
        if self._queue.qsize() >= int(self._param("max_queue")):
            self._finish(
                job, self._new_result(job), GroundingResult.STATUS_ERROR,
                f"command queue is full ({self._queue.qsize()} waiting); command dropped",
            )
            return
        self._queue.put(job)

    async def _on_ground(self, request: Ground.Request, response: Ground.Response) -> Ground.Response:
        # Served by the same worker as topic commands so the model runs one command at a time
        # and in arrival order.  A coroutine: awaiting the job leaves the executor free for
        # images, depth and commands meanwhile.
        has_image = request.image.width > 0 and request.image.height > 0
        job = _Job(
            self._next_command_id(),
            request.command,
            time.monotonic(),
            image=request.image if has_image else None,
            regions=list(request.regions),
            done=Future(),
        )
        self._queue.put(job)
        response.result = await job.done
        return response

    # ------------------------------------------------------------------ worker

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is _STOP:
                return
            result = self._new_result(job)
            try:
                status, message = self._run(job, result)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                self.get_logger().error(f"command {job.command_id} failed: {exc!r}")
                status, message = GroundingResult.STATUS_ERROR, f"internal error: {type(exc).__name__}: {exc}"
            self._finish(job, result, status, message)

    def _new_result(self, job: _Job) -> GroundingResult:
        return GroundingResult(command_id=job.command_id, command=job.command if isinstance(job.command, str) else "")

    def _run(self, job: _Job, result: GroundingResult) -> tuple[int, str]:
        """Ground one job into ``result``; return (status, status_message)."""
        pipe = self._pipeline
        if pipe is None:
            return GroundingResult.STATUS_ERROR, "no model loaded"
        # One user region and no text asks for a caption of that region ("describe region 0").
        why = validate_command(job.command, getattr(pipe, "max_input_chars", None), allow_empty=len(job.regions) == 1)
        if why is not None:
            return GroundingResult.STATUS_BAD_INPUT, why

        now_ns = self.get_clock().now().nanoseconds
        if job.image is not None:
            frame_in = _Latest(job.image, 0, now_ns)
        else:
            frame_in = self._latest_frame()
            if frame_in is None:
                return GroundingResult.STATUS_NO_IMAGE, self._no_image_reason(time.monotonic() - self._activated_at)
        age = _frame_age(frame_in, now_ns)
        max_age = float(self._param("max_frame_age"))
        if job.image is None and max_age > 0 and age > max_age:
            result.header, result.frame_age = frame_in.msg.header, duration_msg(age)
            return GroundingResult.STATUS_STALE_IMAGE, (
                f"the latest image is {age:.2f} s old (max_frame_age {max_age:g} s); is the camera still publishing?"
            )
        depth = self._match_depth(frame_in.msg.header, float(self._param("depth_wait")))
        fallback_note = ""
        if job.image is None and isinstance(depth, Spatial) and self._depth_was_lost(frame_in):
            older = self._older_frame_with_depth(frame_in, now_ns, max_age)
            if older is not None:
                skipped = (stamp_ns(frame_in.msg.header) - stamp_ns(older[0].msg.header)) / 1e9
                fallback_note = f"; the latest image's depth was lost, so the image {skipped:.3f} s before it was grounded"
                frame_in, depth = older
                age = _frame_age(frame_in, now_ns)
        msg, seq = frame_in.msg, (frame_in.seq if job.image is None else None)
        result.header, result.frame_age = msg.header, duration_msg(age)

        try:
            rgb, frame = self._encode(msg, seq, pipe)
        except (ImageConversionError, GromaInputError) as exc:
            return GroundingResult.STATUS_BAD_INPUT, f"bad image: {exc}"
        except Exception as exc:  # noqa: BLE001 - a model failure is a result, not a crash
            return self._model_failure("encoding the image", exc)

        boxes = []
        for i, region in enumerate(job.regions):
            x1, y1, x2, y2 = bbox2d_to_xyxy(region)
            if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
                return GroundingResult.STATUS_BAD_INPUT, f"region {i} is not a box with positive size"
            if x2 <= 0 or y2 <= 0 or x1 >= rgb.shape[1] or y1 >= rgb.shape[0]:
                return GroundingResult.STATUS_BAD_INPUT, (
                    f"region {i} ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}) lies outside the "
                    f"{rgb.shape[1]}x{rgb.shape[0]} image"
                )
            boxes.append((x1, y1, x2, y2))

        max_new = int(self._param("max_new_tokens")) or None
        try:
            if boxes:
                grounding = pipe.ask(frame, job.command, boxes, max_new_tokens=max_new)
            else:
                grounding = pipe.ground(frame, job.command, max_new_tokens=max_new)
        except GromaInputError as exc:
            return GroundingResult.STATUS_BAD_INPUT, f"the model rejected the command: {exc}"
        except Exception as exc:  # noqa: BLE001 - a model failure is a result, not a crash
            return self._model_failure("grounding the command", exc)
        fill_result(result, grounding, msg.header)
        if isinstance(depth, Spatial):  # no 3D: the same reason for every detection
            spatial = unavailable(result.detections, depth.status, depth.message)
        else:
            params = DepthParams(
                range_min=float(self._param("depth_range_min")), range_max=float(self._param("depth_range_max"))
            )
            spatial = localize_detections(result.detections, msg.header, (rgb.shape[1], rgb.shape[0]), *depth, params)
            spatial.message += fallback_note
        apply_to_result(result, spatial)
        self._publish_outputs(result, rgb)
        return result.status, result.status_message

    def _match_depth(self, header: Header, wait: float) -> Union[tuple[Image, CameraInfo], Spatial]:
        """The depth image nearest ``header``'s stamp and the camera_info nearest the depth's.

        Returns the pair, or a detection-less :class:`Spatial` whose status and message say what
        is missing (3D off, no depth image, no camera_info).  ``wait``: seconds to wait for one
        still on its way (``StampBuffer.match``).
        """
        if not self._depth_active:
            return Spatial(DepthStatus.DISABLED, "3D is off (use_depth was false at activation)")
        tolerance = self._depth_tolerance_ns()
        depth, why = self._depth_buffer.match(stamp_ns(header), tolerance, wait)
        if depth is None:
            topic = self.resolve_topic_name(self._param("depth_topic"))
            return Spatial(DepthStatus.NO_DEPTH, f"no depth image on '{topic}' for this image: {why}")
        info, why = self._info_buffer.match(stamp_ns(depth.header), tolerance, wait)
        if info is None:
            topic = self.resolve_topic_name(self._param("camera_info_topic"))
            return Spatial(DepthStatus.NO_CAMERA_INFO, f"no camera_info on '{topic}' for the depth image: {why}")
        return depth, info

    def _depth_was_lost(self, frame: _Latest) -> bool:
        """True when the depth stream has gone past ``frame`` without a depth image for it: one
        newer than its stamp (beyond ``depth_max_stamp_diff``) is buffered.  Only then is an older
        image grounded instead: a depth stream that stopped, or an image that never had depth,
        gets the latest image and NO_DEPTH."""
        newest = self._depth_buffer.newest_stamp()
        return newest is not None and newest > stamp_ns(frame.msg.header) + self._depth_tolerance_ns()

    def _depth_tolerance_ns(self) -> int:
        return int(float(self._param("depth_max_stamp_diff")) * 1e9)

    def _older_frame_with_depth(
        self, latest: _Latest, now_ns: int, max_age: float
    ) -> Optional[tuple[_Latest, tuple[Image, CameraInfo]]]:
        """The newest buffered image before ``latest`` that has a depth image and camera_info
        and is not older than ``max_age`` seconds (<= 0: any age), with that pair; or None."""
        with self._lock:
            older = [f for f in reversed(self._recent) if f.seq < latest.seq]
        for frame in older:
            if max_age > 0 and _frame_age(frame, now_ns) > max_age:
                break
            depth = self._match_depth(frame.msg.header, 0.0)
            if not isinstance(depth, Spatial):
                return frame, depth
        return None

    def _model_failure(self, stage: str, exc: BaseException) -> tuple[int, str]:
        self.get_logger().error(f"model failed while {stage}:\n{''.join(traceback.format_exception(exc))}")
        return GroundingResult.STATUS_ERROR, f"model failed while {stage}: {type(exc).__name__}: {exc}"

    def _encode(self, msg: ImageMsg, seq: Optional[int], pipe: Any) -> tuple[Any, Any]:
        """RGB array and encoded frame of ``msg``, reusing the cached encoding of the same frame.

        The cache key is the receive sequence number, not the header: cameras that leave the
        stamp at zero or repeat it would otherwise make a new frame reuse an old encoding.
        """
        cache = self._cache
        if seq is not None and cache is not None and cache[0] == seq:
            return cache[1], cache[2]
        rgb = msg_to_rgb(msg)
        frame = pipe.encode(rgb)
        if seq is not None:
            self._cache = (seq, rgb, frame)
        return rgb, frame

    def _publish_outputs(self, result: GroundingResult, rgb: Any) -> None:
        """Detections and the annotated image of a grounded result (``grounding`` comes later)."""
        with self._publish_lock:
            if self._pub_detections is not None and self._param("publish_detections"):
                self._pub_detections.publish(result.detections)
            if self._pub_detections_3d is not None and result.depth_status == DepthStatus.OK:
                self._pub_detections_3d.publish(result.detections_3d)
            if self._pub_markers is not None and self._param("publish_markers"):
                # Every grounded command replaces the markers, so a command without 3D targets
                # clears the last one's (the DELETEALL needs a frame: the image's will do).
                header = Header(
                    stamp=result.header.stamp, frame_id=result.detections_3d.header.frame_id or result.header.frame_id
                )
                colours = {p.text: i for i, p in enumerate(result.phrases)}
                self._pub_markers.publish(
                    marker_array(result.detections_3d, header, float(self._param("marker_lifetime")), colours)
                )
        pub = self._pub_annotated
        # Drawing costs tens of ms per frame: only when enabled and someone is looking.
        if pub is None or not self._param("publish_annotated_image") or pub.get_subscription_count() == 0:
            return
        colours = {p.text: i for i, p in enumerate(result.phrases)}
        boxes = []
        for det in result.detections.detections:
            hyp = det.results[0].hypothesis
            boxes.append((bbox2d_to_xyxy(det.bbox), f"{hyp.class_id} {hyp.score:.2f}", colours.get(hyp.class_id, 0)))
        try:
            image = rgb_to_image_msg(annotate(rgb, boxes, result.answer), result.header)
            with self._publish_lock:
                pub.publish(image)
        except Exception as exc:  # noqa: BLE001 - a drawing problem must not fail the command
            self.get_logger().warning(f"annotated image of command {result.command_id} not published: {exc!r}")

    def _finish(self, job: _Job, result: GroundingResult, status: int, message: str) -> None:
        result.status = status
        result.status_message = message
        result.latency = duration_msg(time.monotonic() - job.received)
        if status not in (GroundingResult.STATUS_OK, GroundingResult.STATUS_NOT_FOUND):
            self.get_logger().warning(f"command {job.command_id}: {message}")
        try:
            with self._publish_lock:
                if self._pub_grounding is not None:
                    self._pub_grounding.publish(result)
        except Exception as exc:  # noqa: BLE001 - e.g. the context is already shut down at exit
            self.get_logger().warning(f"could not publish the result of command {job.command_id}: {exc}")
        if job.done is not None:
            job.done.set_result(result)
            executor = self.executor
            if executor is not None:
                executor.wake()  # so that the service coroutine awaiting it resumes now


def main(args: Optional[list[str]] = None) -> int:
    """Console script ``groma_node``: run the node with standard ``--ros-args``.

    With ``autostart`` (the default) the node configures and activates itself and the process
    exits with status 1 if that fails (e.g. the model cannot be loaded), so that launch files,
    the demo and service managers see the failure at once; an invalid parameter value exits
    with status 2.  Without it the node waits, unconfigured, for a lifecycle manager.  Returns
    the process exit code.
    """

    def start(node: GromaNode) -> int:
        if node.get_parameter("autostart").value:
            for transition in (node.trigger_configure, node.trigger_activate):
                if transition() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().fatal(f"autostart failed at {transition.__name__[len('trigger_'):]}; exiting")
                    return 1
        return 0

    return run_node(
        args, GromaNode, logger_name="groma_node", start=start,
        stop=lambda node: node._stop_worker("the node is shutting down"),
    )


if __name__ == "__main__":
    sys.exit(main())
