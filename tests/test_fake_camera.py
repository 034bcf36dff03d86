"""The fake camera publishes the scene of its seed with consistent image, depth and camera_info."""

from __future__ import annotations

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from sensor_msgs.msg import CameraInfo, Image

from groma_core.world import depth_to_16uc1_mm, render_scene
from groma_ros.fake_camera import FakeCamera
from groma_ros.image_conversion import image_msg_to_rgb


def record(ros_context: object, ros_executor: SingleThreadedExecutor, params: dict, frames: int) -> dict[str, list]:
    """Run a FakeCamera with ``params`` (160x120, 50 Hz, with depth) until ``frames`` images and
    at least one depth and camera_info have arrived (or 10 s); return the messages per topic."""
    params = {"rate": 50.0, "width": 160, "height": 120, "publish_depth": True, **params}
    camera = FakeCamera(context=ros_context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()])
    probe = rclpy.create_node("probe", context=ros_context)
    got: dict[str, list] = {"image": [], "depth": [], "camera_info": []}
    for topic, kind in (("image", Image), ("depth", Image), ("camera_info", CameraInfo)):
        probe.create_subscription(kind, topic, got[topic].append, 10)
    ros_executor.add_node(camera)
    ros_executor.add_node(probe)
    for _ in range(100):
        if len(got["image"]) >= frames and got["depth"] and got["camera_info"]:
            break
        ros_executor.spin_once(timeout_sec=0.1)
    return got


def test_publishes_scene_depth_and_info(ros_context: object, ros_executor: SingleThreadedExecutor) -> None:
    got = record(ros_context, ros_executor, {"seed": 3, "change_every": 2}, frames=4)
    assert len(got["image"]) >= 4 and got["depth"] and got["camera_info"]
    first = got["image"][0]
    assert first.header.frame_id == "camera_color_optical_frame" and first.header.stamp.sec > 0
    assert (first.width, first.height, first.encoding) == (160, 120, "rgb8")
    rendered = {seed: render_scene(seed, 160, 120) for seed in (3, 4)}
    frames = [image_msg_to_rgb(m) for m in got["image"]]
    assert all(any(np.array_equal(f, s.image) for s in rendered.values()) for f in frames)
    assert any(np.array_equal(f, rendered[4].image) for f in frames), "change_every had no effect"
    info = got["camera_info"][0]
    k = rendered[3].intrinsics
    assert list(info.k) == pytest.approx([k.fx, 0, k.cx, 0, k.fy, k.cy, 0, 0, 1])
    depth = got["depth"][0]
    # One header per frame, shared by image, depth and camera_info.
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["image"]}
    for msg in (depth, info):
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in stamps
        assert msg.header.frame_id == "camera_color_optical_frame"
    assert depth.encoding == "32FC1"
    values = np.frombuffer(bytes(depth.data), "<f4").reshape(120, 160)
    assert np.isfinite(values).all() and (values > 0).all()


def test_16uc1_depth_in_millimetres_shares_the_image_header(ros_context: object, ros_executor: SingleThreadedExecutor) -> None:
    got = record(ros_context, ros_executor, {"seed": 611, "depth_encoding": "16UC1", "frame_id": "cam_optical"}, frames=2)
    depth = got["depth"][-1]
    assert (depth.encoding, depth.step, depth.header.frame_id) == ("16UC1", 320, "cam_optical")
    stamps = {(m.header.stamp.sec, m.header.stamp.nanosec) for m in got["image"] + got["camera_info"]}
    assert (depth.header.stamp.sec, depth.header.stamp.nanosec) in stamps
    mm = np.frombuffer(bytes(depth.data), "<u2").reshape(120, 160)
    assert np.array_equal(mm, depth_to_16uc1_mm(render_scene(611, 160, 120).depth_m))


def test_unknown_depth_encoding_is_refused(ros_context: object) -> None:
    with pytest.raises(ValueError, match="depth_encoding"):
        FakeCamera(context=ros_context, parameter_overrides=[Parameter("depth_encoding", value="mono16")])
