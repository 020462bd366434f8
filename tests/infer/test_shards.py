"""``shards=true``: each block's chunks stored as one zarr v3 shard, at every level the
blocks write; the pixels are the model's, the levels each the one before halved."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from raysegment.infer import infer
from raysegment.infer.pyramid import downsample
from tests.conftest import random_image, whole_image_prediction

pytestmark = pytest.mark.usefixtures("ray_session")


def _files(array: Path) -> list[str]:
    return sorted(str(p.relative_to(array / "c")) for p in (array / "c").rglob("*") if p.is_file())


def _run(tmp_path: Path, source: str, model: Path, **settings) -> Path:
    infer(
        input=source,
        model=str(model),
        output=str(tmp_path / "out"),
        progress=False,
        quicklook=False,
        shards=True,
        finalize={"mode": "raw"},
        **settings,
    )
    return next((tmp_path / "out").glob("*.ome.zarr"))


def test_a_shard_per_block_at_the_levels_the_blocks_write(tmp_path, make_model, ome_tiff) -> None:
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    image = random_image((200, 150))
    image[:100, :100] = 5  # the first block and its tiles' margin: no model, no shard
    model, module = make_model(out_ch=1)
    settings = {"chunks": [32], "block": [64], "levels": 3}
    out = _run(
        tmp_path, str(ome_tiff(image)), model, tile={"size": [32], "blend": "crop"}, **settings
    )
    want = whole_image_prediction(module, image)
    want[:, :64, :64] = 0  # the constant block keeps the fill value
    arrays = [zarr.open_array(str(out / str(level)), mode="r") for level in range(3)]
    np.testing.assert_allclose(arrays[0][:], want, rtol=1e-5, atol=1e-4)
    for level in (1, 2):
        halved = downsample(arrays[level - 1][:], (False, True, True))
        np.testing.assert_array_equal(arrays[level][:], halved)
    # Blocks of 2 x 2 chunks write level 1 (a chunk each) themselves, not level 2.
    assert [a.shards for a in arrays] == [(1, 64, 64), (1, 32, 32), None]
    assert [a.chunks for a in arrays] == [(1, 32, 32)] * 3
    blocks = {f"0/{y}/{x}" for y in range(4) for x in range(3)} - {"0/0/0"}
    assert set(_files(out / "0")) == set(_files(out / "1")) == blocks  # 11 files, not 35
    # Valid OME-Zarr that its readers open whole.
    Image.from_zarr(zarr.open_group(str(out), mode="r"))
    (node, *_) = Reader(parse_url(str(out)))()
    np.testing.assert_array_equal(np.asarray(node.data[1]), arrays[1][:])


def test_a_volume_shard_holds_every_channel_of_its_block(tmp_path, make_model) -> None:
    volume = random_image((40, 48, 56))
    zarr.create_array(str(tmp_path / "vol.zarr"), data=volume, chunks=(16, 16, 16))
    model, module = make_model(dims=3, out_ch=2)
    settings = {"chunks": [16], "block": [32], "tile": {"size": [16], "blend": "crop"}}
    out = _run(tmp_path, str(tmp_path / "vol.zarr"), model, **settings)
    b = zarr.open_array(str(out / "0"), mode="r")
    assert b.shards == (2, 32, 32, 32) and b.chunks == (1, 16, 16, 16)
    np.testing.assert_allclose(b[:], whole_image_prediction(module, volume), rtol=1e-5, atol=1e-4)
    assert len(_files(out / "0")) == 2 * 2 * 2  # one per block


@pytest.mark.parametrize("where", ["disk", "s3"])
@pytest.mark.parametrize("shards", [None, (1, 64, 64)], ids=["chunks", "shards"])
def test_an_empty_blocks_fill_value_drops_its_chunks_and_nothing_else(
    tmp_path: Path, where: str, shards, request
) -> None:
    """``write_block`` of the fill value: the keys of the chunks (shards) the block covers
    deleted, written ones (a stale attempt's) and unwritten alike; a region covering part
    of a chunk is written through zarr, the rest of that chunk kept."""
    from zarr.core.sync import sync

    from raysegment.data.sources import _listed
    from raysegment.infer.writer import OutputLayout, create_output, write_block

    if where == "s3":
        from tests.conftest import BUCKET

        request.getfixturevalue("s3")
        out = f"s3://{BUCKET}/empty-{shards is None}/img.ome.zarr"
    else:
        out = str(tmp_path / "img.ome.zarr")
    layout = OutputLayout(
        "cyx", (1, 128, 96), (1, 32, 32), "uint8", (1.0,) * 3, {}, ("a",), "img", shards=shards
    )
    assert create_output(out, layout, {"fingerprint": "f"})
    array = zarr.open_array(f"{out}/0", mode="r+")
    array[:] = 7
    block = (slice(0, 1), slice(0, 64), slice(64, 96))  # ends at the edge in x
    write_block(out, block, 0, "f")
    write_block(out, (slice(0, 1), slice(64, 128), slice(0, 64)), 0, "f")  # never written
    got = zarr.open_array(f"{out}/0", mode="r")
    want = np.full((1, 128, 96), 7, np.uint8)
    want[block] = want[:, 64:, :64] = 0
    np.testing.assert_array_equal(got[:], want)
    keys = sync(_listed(got.store, "c/"))
    assert len(keys) == (12 - 2 - 4 if shards is None else 4 - 1 - 1), keys
    write_block(out, (slice(0, 1), slice(0, 16), slice(0, 32)), 0, "f")  # half a chunk
    want[0, :16, :32] = 0
    np.testing.assert_array_equal(zarr.open_array(f"{out}/0", mode="r")[:], want)
