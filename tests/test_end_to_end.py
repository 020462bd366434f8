"""The README's example, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_example_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "segment_slide.py"),
            "--size",
            "1536",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "IoU against the ground-truth nuclei" in result.stdout
    assert "raysegment: 1 image(s)" in result.stdout  # the summary
    assert "block/s" in result.stderr or "s/block" in result.stderr  # the progress bar
    assert (tmp_path / "out" / "slide.ome.zarr" / "zarr.json").is_file()


def test_a_slide_stopped_mid_write_leaves_nothing_at_its_path(tmp_path: Path, monkeypatch) -> None:
    """The example's slide is written beside its path and renamed once whole: a run
    stopped mid-write (Ctrl-C) leaves no half slide that a later run (benchmarks/run.py
    reuses slides) would take for a whole one."""
    import importlib.util

    import numpy as np
    import tifffile

    spec = importlib.util.spec_from_file_location(
        "segment_slide", ROOT / "examples" / "segment_slide.py"
    )
    assert spec and spec.loader
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    class Stopped(Exception):
        pass

    class TruthStoppingAfterOneStrip:  # the ground truth, written strip by strip
        strips = 0

        def __setitem__(self, key: object, value: object) -> None:
            self.strips += 1
            if self.strips > 1:
                raise Stopped

    monkeypatch.setattr(example.zarr, "create_array", lambda *a, **k: TruthStoppingAfterOneStrip())
    path = tmp_path / "slide.ome.tif"
    with pytest.raises(Stopped):
        example.make_slide(path, tmp_path / "truth.zarr", 1024)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    example.make_slide(path, tmp_path / "truth.zarr", 1024)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slide.ome.tif", "truth.zarr"]
    assert tifffile.imread(path).shape == (1024, 1024) and np.any(tifffile.imread(path))
