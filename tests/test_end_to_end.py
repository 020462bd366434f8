"""The README's example, run as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
