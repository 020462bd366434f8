"""``shards=true``: each block's chunks stored as one zarr v3 shard, at every level the
blocks write; the pixels are those of an unsharded run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from raysegment.infer import infer
from tests.conftest import random_image

pytestmark = pytest.mark.usefixtures("ray_session")


def _files(array: Path) -> list[str]:
    return sorted(str(p.relative_to(array / "c")) for p in (array / "c").rglob("*") if p.is_file())


def _run(tmp_path: Path, name: str, source: str, model: Path, **settings) -> Path:
    infer(
        input=source,
        model=str(model),
        output=str(tmp_path / name),
        progress=False,
        quicklook=False,
        **settings,
    )
    return next((tmp_path / name).glob("*.ome.zarr"))


def test_a_shard_per_block_at_the_levels_the_blocks_write(tmp_path, make_model, ome_tiff) -> None:
    image = random_image((200, 150))
    image[:100, :100] = 5  # the first block and its tiles' margin: no model, no shard
    source = str(ome_tiff(image))
    model, _ = make_model(out_ch=1)
    settings = {
        "chunks": [32],
        "block": [64],
        "levels": 3,
        "tile": {"size": [32]},
        "finalize": {"mode": "probabilities"},
    }
    plain = _run(tmp_path, "plain", source, model, **settings)
    sharded = _run(tmp_path, "sharded", source, model, shards=True, **settings)
    for level in range(3):
        a = zarr.open_array(str(plain / str(level)), mode="r")
        b = zarr.open_array(str(sharded / str(level)), mode="r")
        np.testing.assert_array_equal(a[:], b[:])
        assert a.chunks == b.chunks and a.shards is None
    # Blocks of 2 x 2 chunks write level 1 (one chunk each) themselves, not level 2.
    assert zarr.open_array(str(sharded / "0"), mode="r").shards == (1, 64, 64)
    assert zarr.open_array(str(sharded / "1"), mode="r").shards == (1, 32, 32)
    assert zarr.open_array(str(sharded / "2"), mode="r").shards is None
    # Valid OME-Zarr that its readers open whole.
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(zarr.open_group(str(sharded), mode="r"))
    (node, *_) = Reader(parse_url(str(sharded)))()
    np.testing.assert_array_equal(np.asarray(node.data[1]), zarr.open_array(str(plain / "1"))[:])
    blocks = {f"0/{y}/{x}" for y in range(4) for x in range(3)} - {"0/0/0"}
    assert set(_files(sharded / "0")) == blocks  # 11 files, not 35 chunks
    assert len(_files(plain / "0")) == 7 * 5 - 4  # the constant block's 4 chunks not stored
    assert set(_files(sharded / "1")) == blocks


def test_a_volume_shard_holds_every_channel_of_its_block(tmp_path, make_model) -> None:
    volume = random_image((40, 48, 56))
    zarr.create_array(str(tmp_path / "vol.zarr"), data=volume, chunks=(16, 16, 16))
    model, _ = make_model(dims=3, out_ch=2)
    settings = {"chunks": [16], "block": [32], "tile": {"size": [16]}}
    plain = _run(tmp_path, "plain", str(tmp_path / "vol.zarr"), model, **settings)
    sharded = _run(tmp_path, "sharded", str(tmp_path / "vol.zarr"), model, shards=True, **settings)
    b = zarr.open_array(str(sharded / "0"), mode="r")
    assert b.shards == (2, 32, 32, 32) and b.chunks == (1, 16, 16, 16)
    np.testing.assert_array_equal(zarr.open_array(str(plain / "0"), mode="r")[:], b[:])
    assert len(_files(sharded / "0")) == 2 * 2 * 2  # one per block
