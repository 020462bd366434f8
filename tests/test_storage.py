"""Object storage: zarr inputs and OME-Zarr outputs at fsspec URLs, against a real
S3-compatible server (moto in server mode) on loopback."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from raysegment import storage
from raysegment.infer.writer import (
    complete_output,
    done_blocks,
    inspect_output,
    mark_done,
)
from tests.conftest import (
    BUCKET,
    SMALL_BLOCKS,
    cli_command,
    infer_with,
    race_to_create,
    random_image,
)
from tests.data.test_tensorstore import write_n5


def test_locations_local_file_urls_and_object_stores(tmp_path: Path) -> None:
    assert storage.resolve(f"file://{tmp_path}/a/") == str(tmp_path / "a")
    assert storage.resolve("s3://b/dir/") == "s3://b/dir"
    # A Neuroglancer layer's source as pasted: the format comes from the data.
    assert storage.resolve("precomputed://gs://b/em/") == "gs://b/em"
    assert storage.resolve(f"n5://{tmp_path}/a.n5") == str(tmp_path / "a.n5")
    assert storage.join("s3://b/dir", "x.ome.zarr", "0") == "s3://b/dir/x.ome.zarr/0"
    assert storage.parent("s3://b/dir/x.ome.zarr") == "s3://b/dir"
    assert storage.basename("gs://b/dir/x.ome.zarr/") == "x.ome.zarr"
    assert storage.join(str(tmp_path), "x") == str(tmp_path / "x")
    assert storage.claim(str(tmp_path / "new" / "out")) and not storage.claim(
        str(tmp_path / "new" / "out")
    )


def test_storage_errors_name_the_output_and_the_fix_and_leave_bugs_alone(tmp_path: Path) -> None:
    import errno

    from raysegment.errors import OutputError

    out = tmp_path / "m"
    try:  # as Ray hands back a worker's error: the storage error a cause or two down
        try:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")
        except OSError as e:
            raise RuntimeError("the worker failed") from e
    except RuntimeError as e:
        error = storage.storage_error(e, out, "a checkpoint", "it resumes from its last one")
    assert isinstance(error, OutputError) and str(error) == (
        f"{out}: Disk quota exceeded writing a checkpoint; free space within the quota or "
        "give another output=, then run the same command again: it resumes from its last one"
    )
    with pytest.raises(OutputError, match=r"m: Read-only file system writing its metadata; make"):
        with storage.storage_errors(out, "its metadata", "it resumes"):
            raise OSError(errno.EROFS, "Read-only file system")
    # Any other error is a bug's, or the caller's to explain: raised as it is.
    assert storage.storage_error(ValueError("x"), out, "it", "") is None
    with pytest.raises(FileNotFoundError):
        with storage.storage_errors(out, "its metadata", "it resumes"):
            (tmp_path / "missing" / "file").write_bytes(b"")


@pytest.fixture(params=["s3", "gs"])
def bucket(request: pytest.FixtureRequest) -> str:
    """The URL of the test bucket in an S3 server, then in a Google Cloud Storage emulator."""
    request.getfixturevalue("s3" if request.param == "s3" else "gcs")
    if request.param == "gs":
        pytest.importorskip("gcsfs")
    return f"{request.param}://{BUCKET}"


def test_parts_racing_to_create_an_s3_output_leave_exactly_one_creator(s3) -> None:
    # (Not gs://: the GCS emulator ignores ifGenerationMatch=0, which gcsfs sends for an
    # exclusive create and whose 412 it raises as FileExistsError.)
    url = f"s3://{BUCKET}/race/x.ome.zarr"
    results = race_to_create(url)
    assert sorted(results) == [False, False, False, True]
    state = inspect_output(url)
    assert state.ours and state.fingerprint == "f" and not state.complete
    # Done markers (what a resumed run or another part reads) and completion.
    assert done_blocks(url) == set()
    mark_done(url, "t0_y0_x0")
    mark_done(url, "t0_y0_x1")
    assert done_blocks(url) == {"t0_y0_x0", "t0_y0_x1"}
    complete_output(url, {"blocks_done": 2})
    assert inspect_output(url).complete and not storage.exists(f"{url}/.raysegment")


def test_files_written_piece_by_piece_and_read_back(
    bucket: str, tmp_path: Path, monkeypatch
) -> None:
    """What the GeoJSON outlines take: a file written in pieces (a slide's outlines are
    never in memory at once), read back whole; on disk (parents made) and in a bucket;
    an output claimed once in the bucket, listed and removed."""
    claimed = f"{bucket}/claimed/x.ome.zarr"
    assert storage.claim(claimed) and not storage.claim(claimed)
    assert storage.listdir(f"{bucket}/claimed") == ["x.ome.zarr"]
    storage.remove(f"{bucket}/claimed")
    assert not storage.exists(claimed)
    for location in (str(tmp_path / "new" / "a.geojson"), f"{bucket}/pieces/a.geojson"):
        with storage.open_write(location) as out:
            for piece in (b"{", b"1" * 100_000, b"}"):
                out.write(piece)
        assert storage.read_bytes(location) == b"{" + b"1" * 100_000 + b"}"
        assert storage.size(location) == 100_002
        assert storage.read_ranges(location, [0, 99_999], [2, 100_002]) == [b"{1", b"11}"]
        # Neighbours fetched together, overlapping ones, and requests of bounded size.
        whole = b"{" + b"1" * 100_000 + b"}"
        starts, ends = [40_000, 0, 3, 1, 99_990, 5], [70_000, 2, 9, 5, 100_002, 60_000]
        for gap, most in [(storage.RANGE_GAP, storage.RANGE_MERGED), (2, 50_000)]:
            monkeypatch.setattr(storage, "RANGE_GAP", gap)
            monkeypatch.setattr(storage, "RANGE_MERGED", most)
            got = storage.read_ranges(location, starts, ends)
            assert got == [whole[a:b] for a, b in zip(starts, ends, strict=True)]


def _ome_zarr(path: Path, data: np.ndarray) -> None:
    """A local OME-Zarr 0.5 image with anisotropic pixel sizes."""
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    group.create_array("0", data=data, chunks=(1, 64, 64))
    axes = [{"name": "c", "type": "channel"}] + [
        {"name": a, "type": "space", "unit": "micrometer"} for a in "yx"
    ]
    transform = {"type": "scale", "scale": [1.0, 0.5, 0.25]}
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [transform]}]}
    group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}


@pytest.mark.usefixtures("ray_session")
def test_s3_input_and_output_equal_the_local_disk_run(s3, tmp_path: Path, make_model) -> None:
    import s3fs

    local_in = tmp_path / "in"
    local_in.mkdir()
    for i, shape in enumerate([(1, 200, 150), (1, 130, 256)]):
        _ome_zarr(local_in / f"im{i}.ome.zarr", random_image(shape, seed=i))
    # And an N5 image (tensorstore reads it from the bucket, in the workers too), and a
    # tiled OME-TIFF (its tiles fetched by ranged requests).
    write_n5(local_in / "im2.n5", random_image((180, 140), seed=2), {}, {"s0": {}})
    tifffile.imwrite(
        local_in / "im3.ome.tif",
        random_image((170, 190), seed=3),
        ome=True,
        tile=(64, 64),
        compression="zlib",
        metadata={"axes": "YX"},
    )
    fs = s3fs.S3FileSystem()
    fs.put(str(local_in), f"{BUCKET}/in", recursive=True)
    model, _ = make_model()
    settings = [f"model={model}", *SMALL_BLOCKS, "levels=2"]
    infer_with(f"input={local_in}", f"output={tmp_path / 'local'}", *settings)

    # A separate process, as on a cluster: its Ray workers reach the server through the
    # environment alone.
    out = f"s3://{BUCKET}/out"
    run = subprocess.run(
        cli_command("infer", f"input=s3://{BUCKET}/in/", f"output={out}", *settings),
        env=os.environ | s3,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]

    for name in ("im0", "im1", "im2", "im3"):
        url = f"{out}/{name}.ome.zarr"
        assert inspect_output(url).complete
        assert not storage.exists(f"{url}/.raysegment")  # markers gone once complete
        remote = zarr.open_group(url, mode="r")
        local = zarr.open_group(str(tmp_path / "local" / f"{name}.ome.zarr"), mode="r")
        assert remote.attrs["ome"] == local.attrs["ome"]
        for level in ("0", "1"):
            np.testing.assert_array_equal(np.asarray(remote[level][:]), np.asarray(local[level][:]))
        png = (tmp_path / "local" / f"{name}.png").read_bytes()
        assert fs.cat(f"{BUCKET}/out/{name}.png") == png
    im1 = zarr.open_group(f"{out}/im1.ome.zarr", mode="r").attrs["ome"]
    scale = im1["multiscales"][0]["datasets"][0]["coordinateTransformations"]
    assert scale == [{"type": "scale", "scale": [1.0, 0.5, 0.25]}]


def test_a_url_whose_client_is_not_installed_names_the_extra(monkeypatch) -> None:
    import sys

    from raysegment.data.sources import open_sources
    from raysegment.errors import ConfigError

    monkeypatch.setitem(sys.modules, "gcsfs", None)
    monkeypatch.setitem(sys.modules, "tensorstore", None)
    for scheme in ("gs", "gcs"):  # imported by an earlier test: fsspec keeps the class
        monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, scheme, raising=False)
    with pytest.raises(ConfigError, match=r"gs://b/em: gs:// URLs need .*'raysegment\[gcs\]'"):
        open_sources("gs://b/em")


def test_each_reads_urls_at_once_and_local_paths_in_turn() -> None:
    """``storage.each``: results in the locations' order; URLs read concurrently (two
    reads meet at a barrier only if they run at once), local paths on one thread."""
    import threading

    barrier = threading.Barrier(2, timeout=10)

    def meet(location: str) -> str:
        barrier.wait()
        return location.upper()

    assert storage.each(meet, ["s3://b/x", "s3://b/y"]) == ["S3://B/X", "S3://B/Y"]
    threads = storage.each(lambda _: threading.get_ident(), ["/a", "/b", "/c"])
    assert len(set(threads)) == 1
