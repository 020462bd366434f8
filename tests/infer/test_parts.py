"""Partitions: ``num_parts`` independent jobs share one run's blocks and outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from raysegment.infer import infer
from raysegment.infer.writer import inspect_output
from tests.conftest import race_to_create, random_image

pytestmark = pytest.mark.usefixtures("ray_session")


def _run(tmp_path: Path, model: Path, out: str, **extra: object):
    return infer(
        input=str(tmp_path / "images"),
        model=str(model),
        output=str(tmp_path / out),
        chunks=[64],
        block=[64],
        tile={"size": [64]},
        progress=False,
        finalize={"mode": "raw"},
        **extra,
    )


def test_three_parts_run_separately_equal_one_run(tmp_path: Path, make_model) -> None:
    (tmp_path / "images").mkdir()
    for i, shape in enumerate([(200, 150), (130, 256)]):
        tifffile.imwrite(tmp_path / "images" / f"im{i}.tif", random_image(shape, seed=i))
    model, _ = make_model()
    whole = _run(tmp_path, model, "whole")
    names = ("im0.ome.zarr", "im1.ome.zarr")

    blocks = []
    for part in (1, 2, 0):  # any order; the last one to finish completes the outputs
        states = [inspect_output(tmp_path / "parts" / n) for n in names]
        assert not any(s.complete for s in states)
        summary = _run(tmp_path, model, "parts", part_id=part, num_parts=3)
        blocks.append(summary.blocks)
    assert sum(blocks) == whole.blocks == 12 + 12 and max(blocks) - min(blocks) <= 1
    for name in names:
        assert inspect_output(tmp_path / "parts" / name).complete
        got = zarr.open_array(str(tmp_path / "parts" / name / "0"), mode="r")[:]
        want = zarr.open_array(str(tmp_path / "whole" / name / "0"), mode="r")[:]
        np.testing.assert_array_equal(got, want)
        # The last part's quick-look: its own blocks' pixels, the rest read from the input.
        png = name.replace(".ome.zarr", ".png")
        assert (tmp_path / "parts" / png).read_bytes() == (tmp_path / "whole" / png).read_bytes()

    # A part started after the others finished has nothing left to do, and says so.
    again = _run(tmp_path, model, "parts", part_id=1, num_parts=3)
    assert again.resumed_blocks == again.blocks == blocks[0] and again.tiles == 0


def test_parts_racing_to_create_an_output_leave_exactly_one_creator(tmp_path: Path) -> None:
    results = race_to_create(tmp_path / "x.ome.zarr")
    assert sorted(results) == [False, False, False, True]
    state = inspect_output(tmp_path / "x.ome.zarr")
    assert state.ours and state.fingerprint == "f" and not state.complete
