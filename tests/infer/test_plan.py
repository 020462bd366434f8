"""The plan's default unit of work: blocks that hold several tiles a side, within memory."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from raysegment.data.tiling import Tiling, seam_repeats
from raysegment.infer.plan import (
    DEFAULT_BLOCK_CHUNKS,
    MAX_DEFAULT_BLOCK_BYTES,
    default_block,
    fitted_tile,
)
from tests.conftest import conv_model, driver_plan, random_image, save_torchscript


@pytest.mark.parametrize(
    "shape,tile,chunks,channels,want",
    [
        # 2D slides: 4 chunks of 1024 hold 8 tiles of 512 already.
        ((65536, 65536), (512, 512), (1024, 1024), 2, (4096, 4096)),
        ((65536, 65536), (2048, 2048), (1024, 1024), 4, (8192, 8192)),
        # 3D: 4 tiles a side, not 2 chunks (256^3), where the tile is 96 or more.
        ((8192,) * 3, (128,) * 3, (128,) * 3, 2, (512,) * 3),
        ((8192,) * 3, (128,) * 3, (128,) * 3, 4, (512,) * 3),
        ((8192,) * 3, (96,) * 3, (128,) * 3, 2, (384,) * 3),
        ((8192,) * 3, (64,) * 3, (128,) * 3, 2, (256,) * 3),
        ((8192,) * 3, (160,) * 3, (128,) * 3, 2, (640,) * 3),
        # Anisotropic EM tiles: 4 a side on every axis.
        ((8192,) * 3, (32, 256, 256), (128,) * 3, 2, (256, 1024, 1024)),
        # Many channels: the axes with the most tiles per block give way, to 2 chunks.
        ((8192,) * 3, (128,) * 3, (128,) * 3, 5, (384, 512, 512)),
        ((8192,) * 3, (128,) * 3, (128,) * 3, 15, (256, 256, 384)),
        ((8192,) * 3, (128,) * 3, (128,) * 3, 105, (256, 256, 256)),
        # Never fewer chunks than before: large chunks keep their blocks.
        ((8192,) * 3, (128,) * 3, (512,) * 3, 2, (1024,) * 3),
        # No larger than the image, rounded up to its chunks.
        ((300, 300, 300), (128,) * 3, (128,) * 3, 2, (384,) * 3),
        ((3000, 5000), (512, 512), (1024, 1024), 2, (3072, 4096)),
    ],
)
def test_default_blocks_hold_four_tiles_a_side_within_their_memory(
    shape, tile, chunks, channels, want
) -> None:
    block = default_block(shape, tile, chunks, channels)
    assert block == want
    assert all(b % c == 0 for b, c in zip(block, chunks, strict=True))
    before = tuple(
        min(c * DEFAULT_BLOCK_CHUNKS[len(shape)], -(-n // c) * c)
        for n, c in zip(shape, chunks, strict=True)
    )
    assert block == before or 4 * channels * math.prod(block) <= MAX_DEFAULT_BLOCK_BYTES


def test_volume_blocks_of_four_tiles_repeat_far_fewer_tiles_at_their_seams() -> None:
    """What the rule is for: a large volume with 128^3 tiles ran 2.5x the image's tiles in
    2-chunk (256^3) blocks; 512^3 blocks run 1.6x."""
    tiling = Tiling.plan((8192,) * 3, (128,) * 3, 0.25, "gaussian")
    old = seam_repeats(tiling, (256,) * 3)
    new = seam_repeats(tiling, default_block(tiling.shape, tiling.tile, (128,) * 3, 2))
    assert old > 2.5 and new < 1.65


def test_a_volume_run_plans_its_default_blocks_from_the_tile(tmp_path: Path, make_model) -> None:
    volume = tmp_path / "vol.zarr"  # no chunk written: the plan reads no pixel
    zarr.create_array(str(volume), shape=(1024, 1024, 1024), chunks=(128,) * 3, dtype="uint8")
    model, _ = make_model(dims=3)
    settings = {"input": str(volume), "model": str(model), "output": str(tmp_path / "out")}
    _, plan = driver_plan(settings | {"tile": {"size": [128]}, "axes": "zyx"})
    assert plan.block == (512, 512, 512) and plan.num_blocks == 8
    _, plan = driver_plan(settings | {"tile": {"size": [64]}, "axes": "zyx"})
    assert plan.block == (256, 256, 256) and plan.num_blocks == 64
    _, plan = driver_plan(settings | {"tile": {"size": [128]}, "axes": "zyx", "block": [256]})
    assert plan.block == (256, 256, 256)
    # A 14-class model's sums take 14 channels: its blocks give way (input 1 + output 14).
    many, _ = make_model(dims=3, out_ch=14, name="many.pth")
    _, plan = driver_plan(settings | {"model": str(many), "tile": {"size": [128]}, "axes": "zyx"})
    assert plan.block == (256, 256, 384)


@pytest.mark.usefixtures("ray_session")
def test_an_output_begun_with_the_earlier_default_blocks_resumes_with_them(
    tmp_path: Path, make_model
) -> None:
    """Before blocks held 4 tiles a side, a volume's default block was 2 chunks: a run
    begun then (here: the first of two parts, with that block) resumes with its blocks
    when rerun without ``block``, to the same output as a run with today's."""
    from raysegment.errors import OutputError
    from raysegment.infer import infer

    volume = tmp_path / "vol.zarr"
    array = zarr.create_array(str(volume), shape=(64, 128, 128), chunks=(32,) * 3, dtype="uint16")
    array[:] = random_image((64, 128, 128))
    model, _ = make_model(dims=3)
    settings = {
        "input": str(volume),
        "model": str(model),
        "axes": "zyx",
        "tile": {"size": [32]},
        "chunks": [16],
        "finalize": {"mode": "raw"},
        "progress": False,
        "quicklook": False,
    }
    begun = settings | {"output": str(tmp_path / "a"), "block": [32]}
    assert infer(**begun, num_parts=2, part_id=0).blocks == 16  # of 32: incomplete
    with pytest.raises(OutputError, match="other settings"):
        infer(
            **(
                settings
                | {"output": str(tmp_path / "a"), "tile": {"size": [32], "blend": "constant"}}
            )
        )
    resumed = infer(**(settings | {"output": str(tmp_path / "a")}))
    assert resumed.resumed_blocks == 16 and resumed.blocks == 32
    fresh = infer(**(settings | {"output": str(tmp_path / "b")}))
    assert fresh.blocks == 1  # today's default: the whole volume
    a = zarr.open_array(str(tmp_path / "a" / "vol.ome.zarr" / "0"), mode="r")[:]
    b = zarr.open_array(str(tmp_path / "b" / "vol.ome.zarr" / "0"), mode="r")[:]
    np.testing.assert_array_equal(a, b)


def test_tiles_fitted_to_an_image_shorter_than_the_tile() -> None:
    """Each short axis: the image's length rounded up to the model's multiple along it;
    none where the image fills the tile."""
    assert fitted_tile((128, 128, 128), (40, 500, 500), (16, None, None)) == (48, 128, 128)
    assert fitted_tile((128, 128, 128), (40, 100, 500), (1, 32, 8)) == (40, 128, 128)
    assert fitted_tile((512, 512), (256, 300), (32, 32)) == (256, 320)
    assert fitted_tile((512, 512), (700, 9), (None, 1)) == (512, 9)
    assert fitted_tile((64, 64), (64, 1000), (1, 1)) is None
    assert fitted_tile((64, 64), (20, 20), (None, None)) is None


def test_probes_find_each_axis_multiple_then_check_each_fitted_tile(
    tmp_path: Path, make_model, monkeypatch
) -> None:
    """The multiple along an axis is the model's (its first tile otherwise whole it
    takes), not the images': an image gets the same tile whatever runs beside it."""
    from raysegment.infer import model as model_module
    from raysegment.infer.model import probe_models, read_models

    any_size, _ = make_model(name="any.pth")
    by_eight, _ = make_model(name="eight.pth", stride=8)
    images = [(20, 27), (64, 9), (70, 80)]
    tile = lambda spec: (64, 64)  # noqa: E731
    shapes = lambda spec: images  # noqa: E731
    probed: list[tuple[int, ...]] = []
    real = model_module.probe_model

    def counting(model, module, spec, tile):
        probed.append(tuple(tile))
        return real(model, module, spec, tile)

    monkeypatch.setattr(model_module, "probe_model", counting)
    assert probe_models(read_models([str(any_size)]), tile, shapes)[1] == [(20, 27), (64, 9), None]
    assert probed == [(64, 64), (63, 64), (64, 63), (20, 27), (64, 9)]
    assert probe_models(read_models([str(by_eight)]), tile, shapes)[1] == [(24, 32), (64, 16), None]
    # Each image alone: the same tile as beside the others.
    for image, want in zip(images[:2], [(24, 32), (64, 16)], strict=True):
        alone = probe_models(read_models([str(by_eight)]), tile, lambda spec, i=image: [i])[1]
        assert alone == [want]
    # An ensemble takes the multiple every member takes.
    both = read_models([str(any_size), str(by_eight)])
    assert probe_models(both, tile, shapes)[1] == [(24, 32), (64, 16), None]
    # A model of multiples of 32 rounds up to them.
    by_32, _ = make_model(name="thirtytwo.pth", stride=32)
    assert probe_models(read_models([str(by_32)]), tile, lambda spec: [(20, 64)])[1] == [(32, 64)]
    # A fitted tile shorter than a model's least size (here 16, any length above) is not
    # taken: the image keeps the tile.
    least = tmp_path / "least.pth"
    save_torchscript(_Least(conv_model()), least, dims=2, in_ch=1)
    assert probe_models(read_models([str(least)]), tile, lambda spec: [(9, 64), (20, 64)])[1] == [
        None,
        (20, 64),
    ]


class _Least(torch.nn.Module):
    """``inner`` for tiles of 16 or more a side only."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) + 0 * torch.nn.functional.avg_pool2d(x, 16).mean()


def test_an_output_begun_before_tiles_were_fitted_resumes_with_the_tile(
    tmp_path: Path, make_model, monkeypatch
) -> None:
    """A z-stack thinner than the tile, half segmented with the configured tile (as before
    tiles were fitted to images), resumes with it; a new output gets the fitted tile."""
    from raysegment.infer import infer

    stack = tmp_path / "stack.zarr"
    zarr.create_array(str(stack), data=random_image((6, 64, 64)), chunks=(6, 16, 16))
    model, _ = make_model(dims=3)
    settings = {
        "input": str(stack),
        "model": str(model),
        "tile": {"size": [16]},
        "chunks": [16],
        "block": [16],
        "finalize": {"mode": "raw"},
        "progress": False,
        "quicklook": False,
    }
    from raysegment.infer import model as model_module

    with monkeypatch.context() as patch:  # as before tiles were fitted
        patch.setattr(model_module, "FIT_MULTIPLES", ())
        assert infer(**settings, output=str(tmp_path / "a"), num_parts=2, part_id=0).blocks == 8
    resumed = infer(**settings, output=str(tmp_path / "a"))
    assert resumed.resumed_blocks == 8 and resumed.blocks == 16
    attrs = dict(zarr.open_group(str(tmp_path / "a" / "stack.ome.zarr"), mode="r").attrs)
    assert attrs["raysegment"]["tile"] == [16, 16, 16]
    infer(**settings, output=str(tmp_path / "b"))
    attrs = dict(zarr.open_group(str(tmp_path / "b" / "stack.ome.zarr"), mode="r").attrs)
    assert attrs["raysegment"]["tile"] == [6, 16, 16]
