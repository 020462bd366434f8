"""Connectomics and light-sheet volumes through tensorstore: Neuroglancer precomputed, N5."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

from raysegment.data.inputs import resolve_inputs
from raysegment.data.sources import open_sources
from raysegment.errors import InputImageError
from tests.conftest import random_image

SHARDING = {
    "@type": "neuroglancer_uint64_sharded_v1",
    "preshift_bits": 1,
    "hash": "identity",
    "minishard_bits": 1,
    "shard_bits": 1,
    "minishard_index_encoding": "gzip",
    "data_encoding": "gzip",
}
"""A precomputed scale's chunks in shard files (as large connectomics volumes are kept)."""


def write_precomputed(
    path: Path,
    volume: np.ndarray,
    offset: tuple[int, int, int] = (0, 0, 0),
    sharded: bool | dict = False,
) -> None:
    """``volume`` (z, y, x) as a precomputed volume of two scales (8 x 8 x 40 nm, then x
    and y halved), x-y-z-channel order, scale 0 starting at voxel ``offset`` (x, y, z);
    ``sharded``: its chunks in shard files (``SHARDING``, or the sharding given)."""
    for i, step in enumerate((1, 2)):
        level = volume[:, ::step, ::step]
        store = ts.open(
            {
                "driver": "neuroglancer_precomputed",
                "kvstore": {"driver": "file", "path": str(path)},
                "multiscale_metadata": {
                    "type": "image",
                    "data_type": str(volume.dtype),
                    "num_channels": 1,
                },
                "scale_metadata": {
                    "size": list(level.shape[::-1]),
                    "voxel_offset": list(offset) if i == 0 else [0, 0, 0],
                    "encoding": "raw",
                    "chunk_size": [16, 16, 4],
                    "resolution": [8 * step, 8 * step, 40],
                    **({"sharding": SHARDING if sharded is True else sharded} if sharded else {}),
                },
            },
            create=True,
        ).result()
        store.translate_to[0][...] = level.T[..., None]


def write_n5(path: Path, volume: np.ndarray, group: dict, levels: dict[str, dict]) -> None:
    """``volume`` ((z,) y, x) as N5 datasets (x, y, z listed fastest first, as N5 does)
    under a group with ``group`` attributes; ``levels``: dataset name -> its attributes,
    each the volume halved in x and y once more."""
    path.mkdir(parents=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "4.0.0", **group}))
    for i, (name, attrs) in enumerate(levels.items()):
        level = volume[..., :: 2**i, :: 2**i]
        store = ts.open(
            {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": str(path / name)},
                "metadata": {
                    "dimensions": list(level.shape[::-1]),
                    "dataType": str(volume.dtype),
                    "blockSize": [16, 16, 4][: volume.ndim],
                    "compression": {"type": "gzip"},
                },
            },
            create=True,
        ).result()
        store[...] = level.T
        meta = json.loads((path / name / "attributes.json").read_text())
        (path / name / "attributes.json").write_text(json.dumps(meta | attrs))


REGIONS = [((0, 10), (0, 48), (0, 40)), ((3, 9), (5, 37), (17, 40))]


def _reads_match(src: object, volume: np.ndarray) -> None:
    """``REGIONS`` of ``src`` (the whole volume, a region inside) equal ``volume``'s."""
    for region in REGIONS:
        (z0, z1), (y0, y1), (x0, x1) = region
        got = src.read(0, (0,), region)[0]  # type: ignore[attr-defined]
        np.testing.assert_array_equal(got, volume[z0:z1, y0:y1, x0:x1])


def test_precomputed_volume_levels_voxel_size_and_offset(tmp_path: Path) -> None:
    volume = random_image((10, 48, 40))
    write_precomputed(tmp_path / "em", volume, offset=(1000, 2000, 300))
    (src,) = open_sources(tmp_path / "em")
    assert src.kind == "tensorstore" and src.name == "em" and src.levels == 2
    assert src.info.shape == (1, 1, 10, 48, 40) and src.info.dtype == np.uint16
    assert src.info.scale == {"x": 8.0, "y": 8.0, "z": 40.0}
    assert src.info.units == dict.fromkeys("xyz", "nanometer")
    _reads_match(src, volume)
    (half,) = open_sources(tmp_path / "em", level=1)
    assert half.info.shape == (1, 1, 10, 24, 20) and half.info.scale["x"] == 16.0
    np.testing.assert_array_equal(
        half.read(0, (0,), ((2, 5), (0, 24), (3, 20)))[0], volume[2:5, ::2, ::2][:, :, 3:]
    )
    with pytest.raises(InputImageError, match="2 resolution level"):
        open_sources(tmp_path / "em", level=2)


def test_n5_multiscale_group_and_dataset(tmp_path: Path) -> None:
    """n5-viewer / Fiji's layout: a group of s0, s1 with its pixelResolution and each
    level's downsamplingFactors; and one dataset given alone, its axes named."""
    volume = random_image((10, 48, 40))
    write_n5(
        tmp_path / "sample.n5",
        volume,
        {"pixelResolution": {"dimensions": [0.4, 0.4, 2.0], "unit": "um"}},
        {"s0": {"downsamplingFactors": [1, 1, 1]}, "s1": {"downsamplingFactors": [2, 2, 1]}},
    )
    (src,) = open_sources(tmp_path / "sample.n5")
    assert src.name == "sample" and src.levels == 2 and src.info.shape == (1, 1, 10, 48, 40)
    assert src.info.scale == {"x": 0.4, "y": 0.4, "z": 2.0}
    assert src.info.units == dict.fromkeys("xyz", "micrometer")
    _reads_match(src, volume)
    (half,) = open_sources(tmp_path / "sample.n5", level=1)
    assert half.info.shape == (1, 1, 10, 24, 20) and half.info.scale == {
        "x": 0.8,
        "y": 0.8,
        "z": 2.0,
    }
    # A dataset alone, its axes given in its attributes (here stored z fastest: z, x, y).
    write_n5(
        tmp_path / "other",
        np.transpose(volume, (1, 2, 0)),
        {},
        {"data": {"axes": ["z", "x", "y"], "resolution": [2.0, 0.5, 0.5]}},
    )
    (one,) = open_sources(tmp_path / "other" / "data")
    assert one.info.shape == (1, 1, 10, 48, 40) and one.levels == 1
    assert one.info.scale == {"z": 2.0, "x": 0.5, "y": 0.5}
    np.testing.assert_array_equal(one.read(0, (0,), REGIONS[1])[0], volume[3:9, 5:37, 17:40])


def test_directories_list_n5_and_a_missing_tensorstore_is_named(
    tmp_path: Path, monkeypatch
) -> None:
    volume = random_image((4, 32, 32))
    write_n5(tmp_path / "in" / "a.n5", volume, {}, {"s0": {}})
    write_precomputed(tmp_path / "in" / "b", volume)
    assert resolve_inputs(str(tmp_path / "in")) == [str(tmp_path / "in" / "a.n5")]
    assert resolve_inputs(str(tmp_path / "in" / "b")) == [str(tmp_path / "in" / "b")]
    monkeypatch.setitem(sys.modules, "tensorstore", None)
    with pytest.raises(
        InputImageError, match=r"needs tensorstore: pip install 'raysegment\[tensorstore\]'"
    ):
        open_sources(tmp_path / "in" / "b")


def test_volumes_at_urls_over_http_gcs_and_s3(
    tmp_path: Path, http_server: str, gcs: str, s3: dict[str, str]
) -> None:
    """Connectomics volumes where they are kept: a precomputed volume on a static web
    server (pasted as Neuroglancer's layer source) and in a Google Cloud Storage bucket,
    an N5 group and a sharded precomputed volume in an S3 bucket, read as their local
    copies; a URL that names nothing fails naming the URL."""
    import s3fs

    from tests.conftest import BUCKET

    volume = random_image((10, 48, 40))
    write_precomputed(tmp_path / "em", volume, offset=(1000, 2000, 300))
    url = f"{http_server}/em"
    assert resolve_inputs(f"precomputed://{url}/") == [url]
    (src,) = open_sources(f"precomputed://{url}")
    assert src.kind == "tensorstore" and src.name == "em" and src.levels == 2
    assert src.info.scale == {"x": 8.0, "y": 8.0, "z": 40.0}
    # voxel_offset (x, y, z) 1000, 2000, 300: the origin, in nanometres
    assert src.info.origin == {"x": 8000.0, "y": 16000.0, "z": 12000.0}
    _reads_match(src, volume)
    (half,) = open_sources(url, level=1)
    whole = ((0, 10), (0, 24), (0, 20))
    np.testing.assert_array_equal(half.read(0, (0,), whole)[0], volume[:, ::2, ::2])

    write_precomputed(tmp_path / "plain", volume)
    bucket = ts.KvStore.open(f"gs://{BUCKET}/").result()  # through the emulator
    for file in (tmp_path / "plain").rglob("*"):
        if file.is_file():
            key = f"em/{file.relative_to(tmp_path / 'plain')}"
            bucket.write(key, file.read_bytes()).result()
    (gs,) = open_sources(f"gs://{BUCKET}/em")
    assert gs.levels == 2 and gs.info.scale == src.info.scale
    _reads_match(gs, volume)

    write_n5(
        tmp_path / "sample.n5",
        volume,
        {"pixelResolution": {"dimensions": [0.4, 0.4, 2.0], "unit": "um"}},
        {"s0": {}, "s1": {"downsamplingFactors": [2, 2, 1]}},
    )
    s3fs.S3FileSystem().put(str(tmp_path / "sample.n5"), f"{BUCKET}/vol/sample.n5", recursive=True)
    assert resolve_inputs(f"s3://{BUCKET}/vol") == [f"s3://{BUCKET}/vol/sample.n5"]
    (n5,) = open_sources(f"s3://{BUCKET}/vol/sample.n5")
    assert n5.name == "sample" and n5.levels == 2 and n5.info.scale["x"] == 0.4
    _reads_match(n5, volume)
    assert open_sources(f"s3://{BUCKET}/vol/sample.n5", level=1)[0].info.scale["x"] == 0.8
    # Sharded (large connectomics volumes): a shard's chunks read by byte range.
    write_precomputed(tmp_path / "sharded", volume, sharded=True)
    assert any(f.suffix == ".shard" for f in (tmp_path / "sharded").rglob("*"))
    s3fs.S3FileSystem().put(str(tmp_path / "sharded"), f"{BUCKET}/vol/sharded", recursive=True)
    (sharded,) = open_sources(f"s3://{BUCKET}/vol/sharded")
    assert sharded.levels == 2
    _reads_match(sharded, volume)

    with pytest.raises(InputImageError, match=f"{http_server}/nothing: no such file"):
        open_sources(f"{http_server}/nothing")


def test_a_server_that_does_not_answer_fails_naming_the_url(tmp_path: Path, monkeypatch) -> None:
    """Nothing listening when the run starts, and a server gone mid-run (after the
    volume was opened, and after a process opened it for reading): each fails naming the
    URL, in the time allowed, rather than waiting without end."""
    import threading

    from raysegment.data import sources
    from tests.conftest import WebServer, free_port

    monkeypatch.setattr(sources, "REMOTE_TIMEOUT_S", 2.0)
    monkeypatch.setattr(sources, "READ_TIMEOUT_S", 2.0)
    port = free_port()  # nothing listens on it
    with pytest.raises(InputImageError, match=f"127.0.0.1:{port}/em: no answer in 2 s"):
        open_sources(f"http://127.0.0.1:{port}/em")

    write_precomputed(tmp_path / "em", random_image((4, 16, 16)))
    server = WebServer(tmp_path)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"{server.url}/em"
    (unopened,) = open_sources(url)
    (opened,) = open_sources(url)
    assert opened.handle is not None
    server.shutdown()
    server.server_close()
    whole = ((0, 4), (0, 16), (0, 16))
    for source in (unopened, opened):
        raised: list[BaseException] = []

        def read(source: object = source, raised: list[BaseException] = raised) -> None:
            try:
                source.read(0, (0,), whole)  # type: ignore[attr-defined]
            except BaseException as e:  # noqa: BLE001 (checked below)
                raised.append(e)

        reader = threading.Thread(target=read, daemon=True)  # a hang fails, not hangs, the test
        reader.start()
        reader.join(60)
        assert raised, "the read still waits"
        assert isinstance(raised[0], InputImageError), raised
        assert f"{url}: no answer in 2 s; check the URL" in str(raised[0])


def test_unwritten_chunks_of_n5_and_precomputed_volumes_are_told(
    tmp_path: Path, http_server: str, s3: dict[str, str]
) -> None:
    """tensorstore (as CloudVolume and N5 writers) stores no chunk of zeros: an N5
    dataset's and a precomputed scale's listing (offset in space; sharded too) tells the
    regions in none, on disk and in an S3 bucket; a web server's cannot."""
    import s3fs

    from tests.conftest import BUCKET

    volume = np.zeros((12, 48, 40), np.uint16)
    volume[4:8, 16:32, 16:32] = 7  # one chunk of 16 x 16 x 4 (x, y, z)
    write_precomputed(tmp_path / "em", volume, offset=(1000, 2000, 300))
    write_n5(tmp_path / "v.n5", volume, {}, {"s0": {}, "s1": {}})
    write_precomputed(tmp_path / "sharded", volume, sharded=True)
    s3fs.S3FileSystem().put(str(tmp_path / "v.n5"), f"{BUCKET}/sparse/v.n5", recursive=True)
    for where in (tmp_path / "em", tmp_path / "v.n5", f"s3://{BUCKET}/sparse/v.n5"):
        (src,) = open_sources(str(where))
        test = src.unstored()
        assert test is not None, where
        assert not test(0, (0,), ((0, 12), (0, 48), (0, 40)))
        assert test(0, (0,), ((0, 4), (0, 48), (0, 40))) and test(
            0, (0,), ((0, 12), (0, 16), (0, 40))
        )
        assert not test(0, (0,), ((7, 9), (31, 33), (31, 33)))  # a corner reaching it
        assert test(0, (0,), ((8, 12), (32, 48), (32, 40)))
        # y and x halved: the data at 8:16, in the chunk at 0:16 (z 4:8).
        (half,) = open_sources(str(where), level=1)
        test = half.unstored()
        assert test is not None and not test(0, (0,), ((4, 8), (0, 8), (0, 8)))
        assert test(0, (0,), ((0, 12), (16, 24), (0, 20))) and test(
            0, (0,), ((0, 4), (0, 24), (0, 20))
        )
    # Sharded: the chunks of the shard holding data (4 of 12 x 3 x 3 chunks here) are read.
    test = open_sources(str(tmp_path / "sharded"))[0].unstored()
    assert test is not None and not test(0, (0,), ((4, 8), (16, 32), (16, 32)))
    assert test(0, (0,), ((8, 12), (32, 48), (32, 40)))
    assert open_sources(f"{http_server}/em")[0].unstored() is None


@pytest.mark.parametrize("hashed", ["identity", "murmurhash3_x86_128"])
def test_a_sharded_scale_tells_the_chunks_of_its_absent_shards(tmp_path: Path, hashed) -> None:
    """Each chunk's shard from its position: no chunk holding data is ever told unwritten
    (its region would be written as zeros), and most empty ones are, where the shards
    are spatial (the identity hash: 16 shards of two 2 x 2 x 2 bricks of chunks here); a hash that
    scatters the chunks over the shards gives no answer."""
    rng = np.random.default_rng(3)
    volume = np.zeros((16, 128, 128), np.uint16)  # chunks of 16 x 16 x 4 (x, y, z)
    grid = (4, 8, 8)  # z, y, x
    full = [tuple(int(v) for v in rng.integers(0, grid)) for _ in range(5)]
    for z, y, x in full:
        volume[4 * z : 4 * z + 4, 16 * y : 16 * y + 16, 16 * x : 16 * x + 16] = 9
    sharding = SHARDING | {"hash": hashed, "preshift_bits": 2, "shard_bits": 4}
    write_precomputed(tmp_path / "em", volume, offset=(64, 0, 8), sharded=sharding)
    shards = sorted(p.name for p in (tmp_path / "em").glob("8_8_40/*"))
    assert shards and all(name.endswith(".shard") for name in shards), shards
    (src,) = open_sources(str(tmp_path / "em"))
    test = src.unstored()
    if hashed != "identity":
        assert test is None
        return
    assert test is not None and len(shards) < 16
    told = set()
    for z, y, x in np.ndindex(*grid):
        region = ((4 * z, 4 * z + 4), (16 * y, 16 * y + 16), (16 * x, 16 * x + 16))
        if test(0, (0,), region):
            told.add((z, y, x))
    assert not told & set(full)
    # 256 chunks: Morton codes of 8 bits, 3 of them shifted out, 4 the shard: 16 chunks a
    # shard, every one of each absent shard told.
    assert len(told) == 256 - 16 * len(shards)
