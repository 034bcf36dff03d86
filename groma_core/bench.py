"""``groma bench``: medians of frame encoding and grounding, with and without prefix reuse.

All numbers come from one run on one machine, so their ratio is meaningful even on a noisy machine.
The scene is a synthetic tabletop (the same seed every time).
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import torch

from .pipeline import GromaPipeline


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_bench(model: str | None = None, device: str = "cpu", dtype: str = "float32", repeats: int = 7,
              command: str = "pick up the blue mug", seed: int = 123) -> dict:
    """Time encode(), ground() on an encoded frame, and the original's recompute-everything query."""
    from .world import render_scene

    pipe = GromaPipeline.from_pretrained(model, device=device, dtype=dtype)
    image = render_scene(seed).image
    sync = torch.cuda.synchronize if pipe.device.type == "cuda" else (lambda: None)

    def encode():
        pipe.encode(image)
        sync()

    frame = pipe.encode(image)
    # fix the generation length so both query paths decode the same number of tokens
    reference = pipe.ground(frame, command)
    new_tokens = max(1, len(reference.token_ids))

    def ground_reuse():
        pipe.ground(frame, command, max_new_tokens=new_tokens)
        sync()

    def ground_recompute():
        pipe.ground_without_reuse(image, command, max_new_tokens=new_tokens)
        sync()

    for fn in (encode, ground_reuse, ground_recompute):  # warm-up
        fn()
    encode_s = _median_seconds(encode, repeats)
    reuse_s = _median_seconds(ground_reuse, repeats)
    recompute_s = _median_seconds(ground_recompute, repeats)
    device_name = torch.cuda.get_device_name(pipe.device) if pipe.device.type == "cuda" else platform.processor() or platform.machine()
    return {
        "model": model or "embedded groma-tiny",
        "device": f"{pipe.device} ({device_name}), torch threads {torch.get_num_threads()}, cpus {os.cpu_count()}",
        "dtype": str(pipe.dtype).replace("torch.", ""),
        "repeats": repeats,
        "command": command,
        "answer": reference.raw_text,
        "generated_tokens": new_tokens,
        "regions": len(frame.regions),
        "encode_frame_median_ms": round(encode_s * 1000, 2),
        "ground_on_encoded_frame_median_ms": round(reuse_s * 1000, 2),
        "ground_recompute_everything_median_ms": round(recompute_s * 1000, 2),
        "speedup_prefix_reuse": round(recompute_s / reuse_s, 2),
    }
