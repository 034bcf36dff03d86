"""Training runs end to end (the 'smoke' preset: a few steps of every stage) and its output loads."""

from __future__ import annotations

import json

from groma_core.pipeline import GromaPipeline
from groma_core.train import run_training
from groma_core.world import render_scene


def test_every_stage_runs_resumes_and_writes_a_loadable_checkpoint(tmp_path):
    final = run_training("smoke", tmp_path / "run", seed=3)
    info = json.loads((final / "training.json").read_text())
    assert info["command"].startswith("groma train --preset smoke --seed 3")
    for stage in (1, 2, 3, 4):
        assert (tmp_path / "run" / f"stage{stage}.pt").is_file()
    pipe = GromaPipeline.from_pretrained(final)
    frame = pipe.encode(render_scene(1).image)
    assert 1 <= len(frame.regions) <= pipe.model.config.max_region_num
    assert len(pipe.ground(frame, "pick up the blue mug", max_new_tokens=3).token_ids) <= 3
    # a resumed run finds every stage done and writes the same weights again
    again = run_training("smoke", tmp_path / "run", seed=3, resume=True)
    assert (again / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()
