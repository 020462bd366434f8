"""HDF5 and Imaris inputs: ilastik's, CREMI's and PlantSeg's files, Imaris pyramids."""

from __future__ import annotations

import itertools
import pickle
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import zarr

from raysegment.config import InferConfig, load_config
from raysegment.data.hdf5 import hdf5_parts
from raysegment.data.inputs import resolve_inputs
from raysegment.data.pairs import pair_images
from raysegment.data.sources import open_sources
from raysegment.errors import ConfigError, InputImageError
from tests.conftest import random_image, whole_image_prediction


def write_cremi(path: Path, raw: np.ndarray) -> None:
    """A CREMI-style volume: raw and labels of one sample, 40 x 4 x 4 nm voxels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        d = f.create_dataset("volumes/raw", data=raw, chunks=(5, 32, 16), compression="gzip")
        d.attrs["resolution"] = [40.0, 4.0, 4.0]
        d.attrs["unit"] = "nm"
        f.create_dataset("volumes/labels/neuron_ids", data=raw.astype(np.uint64) // 100)


def _chars(text: str) -> np.ndarray:
    """Text as Imaris stores its attributes: an array of one-byte strings."""
    return np.frombuffer(text.encode(), dtype="S1")


def write_imaris(
    path: Path,
    image: np.ndarray,
    pixel: tuple[float, float, float] = (2.0, 0.5, 0.25),
    names: tuple[str, ...] = ("DAPI", "GFP"),
    chunk: tuple[int, int, int] = (4, 32, 32),
) -> None:
    """``image`` ((t,) c, z, y, x) in Imaris's layout, as its writers lay it out: two
    resolution levels (the second halved in y and x), each time point's and channel's data
    padded to whole chunks (its size in ``ImageSize*``), gzip, the extent in micrometres.
    """
    image = image if image.ndim == 5 else image[None]
    _, c, z, y, x = image.shape
    with h5py.File(path, "w") as f:
        f.attrs["ImarisDataSet"] = _chars("ImarisDataSet")
        f.attrs["ImarisVersion"] = _chars("5.5.0")
        info = f.create_group("DataSetInfo/Image")
        for key, value in {"X": x, "Y": y, "Z": z, "Unit": "um"}.items():
            info.attrs[key] = _chars(str(value))
        for i, (n, p) in enumerate(zip((x, y, z), pixel[::-1], strict=True)):
            info.attrs[f"ExtMin{i}"] = _chars("-10.0")
            info.attrs[f"ExtMax{i}"] = _chars(str(-10.0 + n * p))
        for ch, name in enumerate(names):
            f.create_group(f"DataSetInfo/Channel {ch}").attrs["Name"] = _chars(name)
        for (level, step), t, ch in itertools.product(
            enumerate((1, 2)), range(len(image)), range(c)
        ):
            data = image[t, ch, :, ::step, ::step]
            group = f.create_group(f"DataSet/ResolutionLevel {level}/TimePoint {t}/Channel {ch}")
            for axis, n in zip("ZYX", data.shape, strict=True):
                group.attrs[f"ImageSize{axis}"] = _chars(str(n))
            padded = [-(-n // k) * k for n, k in zip(data.shape, chunk, strict=True)]
            d = group.create_dataset(
                "Data", shape=padded, dtype=image.dtype, chunks=chunk, compression="gzip"
            )
            d[: data.shape[0], : data.shape[1], : data.shape[2]] = data


def test_a_dataset_is_named_after_its_file_or_found_alone(tmp_path) -> None:
    raw = random_image((10, 64, 48), "uint8")
    write_cremi(tmp_path / "sample_A.hdf", raw)
    path = f"{tmp_path}/sample_A.hdf/volumes/raw"
    assert hdf5_parts(path) == (str(tmp_path / "sample_A.hdf"), "volumes/raw")
    assert hdf5_parts(str(tmp_path / "nothing.h5/raw")) is None  # no such file
    assert resolve_inputs(path) == [path]
    # Training's pairs: a sample's raw data with its labels of the same file.
    labels = f"{tmp_path}/sample_A.hdf/volumes/labels/neuron_ids"
    assert pair_images(path, None, labels, None) == [((path,), labels)]
    (source,) = open_sources(path)
    assert source.name == "sample_A" and source.axes == "zyx"
    assert source.info.shape == (1, 1, 10, 64, 48) and source.info.dtype == np.uint8
    assert source.info.scale == {"z": 40.0, "y": 4.0, "x": 4.0}
    assert source.info.units == dict.fromkeys("zyx", "nanometer")
    region = ((3, 9), (5, 60), (17, 48))
    np.testing.assert_array_equal(source.read(0, (0,), region)[0], raw[3:9, 5:60, 17:48])

    # A file of several image datasets names them and how to choose; of one, takes it.
    with pytest.raises(
        InputImageError,
        match=r"holds 2 datasets \(volumes/labels/neuron_ids "
        r"10x64x48 uint64, volumes/raw 10x64x48 uint8\); give the one to "
        r"segment after the file's name, e.g. input=.*sample_A.hdf/volumes/raw$",
    ):
        open_sources(tmp_path / "sample_A.hdf")
    with pytest.raises(InputImageError, match=r"volumes/mito: no such dataset in .*; its image"):
        open_sources(f"{tmp_path}/sample_A.hdf/volumes/mito")
    with pytest.raises(InputImageError, match="volumes/labels: a group in"):
        open_sources(f"{tmp_path}/sample_A.hdf/volumes/labels")
    with h5py.File(tmp_path / "one.h5", "w") as f:
        f.create_dataset("exported_data", data=raw[0])
        f.create_dataset("s00/resolutions", data=np.ones((4, 3)))  # a table, not an image
        f.attrs["note"] = "not an image"
    (alone,) = open_sources(tmp_path / "one.h5")
    assert alone.path == f"{tmp_path / 'one.h5'}/exported_data" and alone.info.shape[3:] == (64, 48)
    # A directory's HDF5 files are images by default.
    assert resolve_inputs(str(tmp_path)) == [
        str(tmp_path / "one.h5"),
        str(tmp_path / "sample_A.hdf"),
    ]
    # Datasets named like BigDataViewer's groups (a pyramid's s0, s1) are plain datasets.
    with h5py.File(tmp_path / "levels.h5", "w") as f:
        f["s0"], f["t00000"] = raw[0], raw[0, ::2, ::2]
    with pytest.raises(InputImageError, match=r"levels.h5: holds 2 datasets \(s0 64x48 uint8"):
        open_sources(tmp_path / "levels.h5")
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(InputImageError, match="broken.h5: not a readable HDF5 file"):
        open_sources(tmp_path / "broken.h5")


def test_training_pairs_each_files_raw_dataset_with_its_labels(tmp_path) -> None:
    """CREMI's samples: a directory of files, each holding raw data and labels."""
    for name in ("sample_A", "sample_B", "sample_C"):
        write_cremi(tmp_path / f"{name}.hdf", random_image((5, 32, 32), "uint8"))
    (tmp_path / "notes.tif").write_bytes(b"")
    pattern = r".*\.hdf"
    raw, labels = "volumes/raw", "volumes/labels/neuron_ids"
    pairs = pair_images(str(tmp_path), pattern, str(tmp_path), pattern, raw, f"/{labels}")
    assert pairs == [
        ((f"{tmp_path}/sample_{s}.hdf/{raw}",), f"{tmp_path}/sample_{s}.hdf/{labels}")
        for s in "ABC"
    ]
    with pytest.raises(
        InputImageError,
        match=r"notes.tif: images.dataset=volumes/raw names a "
        r"dataset of HDF5 files; this is none \(narrow images.pattern",
    ):
        pair_images(str(tmp_path), r".*\.(hdf|tif)", str(tmp_path), pattern, raw, labels)
    # infer's dataset= reads it from each file of a directory, and from a file.
    assert resolve_inputs(str(tmp_path), pattern, raw) == [p for (p,), _ in pairs]
    assert resolve_inputs(f"{tmp_path}/sample_A.hdf", None, raw) == [pairs[0][0][0]]
    with pytest.raises(InputImageError, match=r"notes.tif: dataset=volumes/raw names .* pattern"):
        resolve_inputs(str(tmp_path), None, raw)
    with pytest.raises(InputImageError, match=r"sample_A.hdf/volumes/raw: names a dataset already"):
        resolve_inputs(pairs[0][0][0], None, raw)
    need = [f"input={tmp_path}", "model=m.pt", "output=o", f"dataset={raw}"]
    with pytest.raises(ConfigError, match="dataset=volumes/raw reads HDF5 files, sequence=z"):
        load_config(InferConfig, (), [*need, "sequence=z"])


def test_without_h5py_an_hdf5_input_says_what_to_install(tmp_path, monkeypatch) -> None:
    write_cremi(tmp_path / "sample_A.hdf", random_image((5, 32, 32), "uint8"))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(InputImageError, match=r"needs h5py: pip install 'raysegment\[hdf5\]'"):
        open_sources(f"{tmp_path}/sample_A.hdf/volumes/raw")


def test_ilastik_axistags_and_element_size_um_give_axes_and_pixel_size(tmp_path) -> None:
    image = random_image((6, 40, 30, 2))  # z, y, x, c: ilastik's order
    with h5py.File(tmp_path / "stack.h5", "w") as f:
        d = f.create_dataset("data", data=image, chunks=(2, 16, 16, 2))
        d.attrs["axistags"] = (
            '{"axes": [{"key": "z", "typeFlags": 2}, {"key": "y", "typeFlags": 2}, '
            '{"key": "x", "typeFlags": 2}, {"key": "c", "typeFlags": 1}]}'
        )
        d.attrs["element_size_um"] = [1.5, 0.2, 0.2]
    (source,) = open_sources(tmp_path / "stack.h5")
    assert source.axes == "zyxc" and source.info.shape == (1, 2, 6, 40, 30)
    assert source.info.scale == {"z": 1.5, "y": 0.2, "x": 0.2}
    assert source.info.units == dict.fromkeys("zyx", "micrometer")
    got = source.read(0, (1, 0), ((1, 5), (0, 40), (7, 30)))
    np.testing.assert_array_equal(got, image[1:5, :, 7:30, [1, 0]].transpose(3, 0, 1, 2))
    with h5py.File(tmp_path / "noted.h5", "w") as f:
        f.create_dataset("data", data=image[..., 0]).attrs["element_size_um"] = "unknown"
    (noted,) = open_sources(tmp_path / "noted.h5")  # text, not a pixel size: none
    assert noted.info.scale == {} and noted.info.shape == (1, 1, 6, 40, 30)
    # axes= wins over the file's, as for any array.
    (given,) = open_sources(tmp_path / "stack.h5", axes="tyxc")
    assert given.info.shape == (6, 2, 1, 40, 30)


def test_chunks_never_written_are_told_without_reading(tmp_path) -> None:
    with h5py.File(tmp_path / "sparse.h5", "w") as f:
        d = f.create_dataset("em", shape=(64, 64, 64), dtype="uint8", chunks=(16, 16, 16))
        d[16:32, 0:16, 48:64] = 7  # one chunk written
        f.create_dataset("dense", data=np.ones((8, 8), "uint8"))  # contiguous
    (source,) = open_sources(f"{tmp_path}/sparse.h5/em")
    unstored = source.unstored()
    assert unstored is not None
    assert not unstored(0, (0,), ((16, 32), (0, 16), (48, 64)))
    assert not unstored(0, (0,), ((0, 20), (0, 20), (40, 64)))  # reaches into it
    assert unstored(0, (0,), ((0, 16), (0, 64), (0, 64)))
    assert unstored(0, (0,), ((16, 32), (16, 64), (0, 64)))
    (dense,) = open_sources(f"{tmp_path}/sparse.h5/dense")
    assert dense.unstored() is None


def test_a_filter_this_installation_lacks_is_named_before_any_read(tmp_path, monkeypatch) -> None:
    # Blosc's registered HDF5 filter id; h5py itself has no Blosc.
    with h5py.File(tmp_path / "blosc.h5", "w") as f:
        d = f.create_dataset(
            "raw",
            shape=(32, 32),
            dtype="uint8",
            chunks=(16, 16),
            compression=32001,
            allow_unknown_filter=True,
        )
        d.id.write_direct_chunk((0, 0), b"\0" * 64)
    monkeypatch.setitem(sys.modules, "hdf5plugin", None)  # not installed
    if h5py.h5z.filter_avail(32001):
        pytest.skip("this process registered Blosc's filter with HDF5 already")
    with pytest.raises(
        InputImageError,
        match=r"blosc.h5/raw: compressed with the HDF5 filter "
        r".*\(32001\), which this installation cannot decode; pip install hdf5plugin",
    ):
        open_sources(tmp_path / "blosc.h5")


def test_an_imaris_file_reads_its_channels_levels_and_extent(tmp_path) -> None:
    image = random_image((2, 2, 5, 70, 50))  # two time points of two channels
    write_imaris(tmp_path / "cells.ims", image)
    (source,) = open_sources(tmp_path / "cells.ims")
    assert source.kind == "imaris" and source.levels == 2 and source.name == "cells"
    assert source.info.shape == (2, 2, 5, 70, 50)  # not the padded data's 8 x 96 x 64
    assert source.info.channel_names == ("DAPI", "GFP")
    assert source.info.scale == pytest.approx({"z": 2.0, "y": 0.5, "x": 0.25})
    assert source.info.units == dict.fromkeys("zyx", "micrometer")
    whole = ((0, 5), (0, 70), (0, 50))
    for t in (0, 1):
        np.testing.assert_array_equal(source.read(t, (1, 0), whole), image[t, [1, 0]])
    (half,) = open_sources(tmp_path / "cells.ims", level=1)
    assert half.info.shape == (2, 2, 5, 35, 25)
    assert half.info.scale == pytest.approx({"z": 2.0, "y": 1.0, "x": 0.5})
    np.testing.assert_array_equal(
        half.read(1, (0,), ((1, 4), (3, 35), (0, 20))), image[1, :1, 1:4, 3 * 2 : 70 : 2, :40:2]
    )
    with pytest.raises(InputImageError, match="has 2 resolution level"):
        open_sources(tmp_path / "cells.ims", level=2)


@pytest.mark.usefixtures("ray_session")
def test_infer_segments_a_dataset_and_an_imaris_level_into_ome_zarr(tmp_path, make_model) -> None:
    """``raysegment infer`` on a directory of CREMI volumes' raw datasets (3D model) and on
    an Imaris file's second level (2-channel 2D model): each output equals the model on
    the whole image, with the input's voxel size."""
    from raysegment.infer import infer

    raws = {s: random_image((10, 64, 48), "uint8") for s in "AB"}
    for s, raw in raws.items():
        write_cremi(tmp_path / "cremi" / f"sample_{s}.hdf", raw)
    model, module = make_model(dims=3, out_ch=1)
    settings = {"progress": False, "finalize": {"mode": "raw"}, "quicklook": False}
    tile = {"size": [16], "overlap": 0.5, "blend": "crop"}
    infer(  # a directory of files of several datasets
        input=str(tmp_path / "cremi"),
        dataset="volumes/raw",
        model=str(model),
        output=str(tmp_path / "out"),
        tile=tile,
        **settings,
    )
    for s, raw in raws.items():
        out = tmp_path / "out" / f"sample_{s}.ome.zarr"
        ms = dict(zarr.open_group(str(out), mode="r").attrs)["ome"]["multiscales"][0]
        assert ms["axes"][1]["unit"] == "nanometer"
        assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1, 40, 4, 4]
        got = zarr.open_array(str(out / "0"), mode="r")[:]
        np.testing.assert_allclose(got, whole_image_prediction(module, raw), rtol=1e-5, atol=1e-4)

    image = random_image((2, 1, 70, 50))
    write_imaris(tmp_path / "cells.ims", image)
    model2, module2 = make_model(in_ch=2, out_ch=1, name="two.pth")
    infer(
        input=str(tmp_path / "cells.ims"),
        model=str(model2),
        output=str(tmp_path / "out"),
        input_level=1,
        tile={"size": [16], "overlap": 0.25, "blend": "crop"},
        **settings,
    )
    out = tmp_path / "out" / "cells.ome.zarr"
    ms = dict(zarr.open_group(str(out), mode="r").attrs)["ome"]["multiscales"][0]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"][-2:] == [1.0, 0.5]
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    with torch.inference_mode():
        x = torch.from_numpy(image[:, 0, ::2, ::2].astype(np.float32))[None]
        want = module2(x)[0].numpy()
    np.testing.assert_allclose(got.reshape(want.shape), want, rtol=1e-5, atol=1e-4)


def write_bdv(path: Path, views: dict[int, np.ndarray], attributes: dict[int, dict]) -> None:
    """A BigDataViewer project: ``path`` (.h5) and its XML beside it. ``views``: setup id
    -> (t, z, y, x) uint16, stored as BigDataViewer stores it (int16 bits, a pyramid of two
    levels, the second halved in x and y); ``attributes``: each setup's (channel, tile)."""
    with h5py.File(path, "w") as f:
        for setup, data in views.items():
            f[f"s{setup:02d}/resolutions"] = np.array([[1, 1, 1], [2, 2, 1]], np.float64)
            f[f"s{setup:02d}/subdivisions"] = np.array([[16, 16, 4], [16, 16, 4]], np.int32)
            for t, level in itertools.product(range(len(data)), (0, 1)):
                step = 2**level
                cells = data[t, :, ::step, ::step].view(np.int16)
                f.create_dataset(f"t{t:05d}/s{setup:02d}/{level}/cells", data=cells, chunks=True)
    _bdv_xml(path.with_suffix(".xml"), views, attributes, "hdf5", path.name)


def _bdv_xml(
    xml: Path,
    views: dict[int, np.ndarray],
    attributes: dict[int, dict],
    loader: str,
    where: str,
    zgroups: str = "",
) -> None:
    """The XML project of ``views`` (setup id -> (t, z, y, x)), its images in ``where``
    (relative) through BigDataViewer's image loader ``loader`` (hdf5, n5, multimg.zarr;
    the last's views as ``zgroups``)."""
    element = loader.rsplit(".", 1)[-1]
    setups = "".join(
        f"<ViewSetup><id>{s}</id><name>{s}</name>"
        f"<size>{views[s].shape[3]} {views[s].shape[2]} {views[s].shape[1]}</size>"
        "<voxelSize><unit>µm</unit><size>0.4 0.4 2.5</size></voxelSize><attributes>"
        + "".join(f"<{k}>{v}</{k}>" for k, v in attributes[s].items())
        + "</attributes></ViewSetup>"
        for s in views
    )
    xml.write_text(
        '<?xml version="1.0" encoding="UTF-8"?><SpimData version="0.2">'
        '<BasePath type="relative">.</BasePath><SequenceDescription>'
        f'<ImageLoader format="bdv.{loader}"><{element} type="relative">{where}</{element}>'
        f"{zgroups}</ImageLoader><ViewSetups>{setups}</ViewSetups></SequenceDescription></SpimData>"
    )


def write_bdv_n5(xml: Path, views: dict[int, np.ndarray], attributes: dict[int, dict]) -> None:
    """A BigDataViewer N5 project as BigStitcher resaves one: ``xml`` and the N5 beside it,
    each view ``setup<s>/timepoint<t>/s<level>`` (x, y, z; gzip; two levels, the second
    halved in x and y), the levels' factors in each setup's ``downsamplingFactors``."""
    import tensorstore as ts

    n5 = xml.with_suffix(".n5")
    n5.mkdir()
    (n5 / "attributes.json").write_text('{"n5": "2.2.0"}')
    for setup, data in views.items():
        (n5 / f"setup{setup}").mkdir()
        (n5 / f"setup{setup}/attributes.json").write_text(
            '{"downsamplingFactors": [[1, 1, 1], [2, 2, 1]], "dataType": "uint16"}'
        )
        for t, level in itertools.product(range(len(data)), (0, 1)):
            view = data[t, :, :: 2**level, :: 2**level].T  # x, y, z
            spec = {
                "driver": "n5",
                "kvstore": {"driver": "file", "path": f"{n5}/setup{setup}/timepoint{t}/s{level}"},
                "metadata": {
                    "dimensions": list(view.shape),
                    "blockSize": [16, 16, 4],
                    "dataType": "uint16",
                    "compression": {"type": "gzip"},
                },
                "create": True,
            }
            ts.open(spec).result().write(view).result()
    _bdv_xml(xml, views, attributes, "n5", n5.name)


def write_bdv_zarr(
    xml: Path, views: dict[int, np.ndarray], attributes: dict[int, dict], layout: str
) -> None:
    """A BigDataViewer OME-Zarr project (``bdv.multimg.zarr``): ``xml`` and the store
    beside it (``<stem>.ome.zarr``), of OME-Zarr 0.4 images of two levels (the second
    halved in x and y, its scale saying so). ``layout`` "5d": as BigStitcher-Spark writes
    them, one (t, c, z, y, x) image of every setup as a channel and every time point,
    each view a ``zgroup`` with its ``indicies`` (channel, time point); "3d": as
    BigDataViewer's first OME-Zarr loader read them, an image of each view (z, y, x),
    the ``zgroup``'s path an element."""
    store = xml.with_suffix(".ome.zarr")
    zarr.open_group(str(store), mode="w")
    setups = sorted(views)

    def image(path: str, data: np.ndarray) -> None:  # (..., z, y, x)
        axes = [
            {"name": a, "type": "time" if a == "t" else "channel" if a == "c" else "space"}
            for a in "tczyx"[5 - data.ndim :]
        ]
        lead = [1.0] * (data.ndim - 3)
        group = zarr.open_group(str(store / path), mode="w")
        group.attrs["multiscales"] = [
            {
                "version": "0.4",
                "axes": axes,
                "datasets": [
                    {
                        "path": str(level),
                        "coordinateTransformations": [
                            {"type": "scale", "scale": [*lead, 1.0, 2.0**level, 2.0**level]}
                        ],
                    }
                    for level in (0, 1)
                ],
            }
        ]
        for level in (0, 1):
            step = 2**level
            level_data = data[..., ::step, ::step]
            chunks = (*(1,) * (data.ndim - 3), 4, 16, 16)
            group.create_array(str(level), data=level_data, chunks=chunks)

    entries = []
    if layout == "5d":  # setups as the channels of one image of every time point
        times = max(len(v) for v in views.values())
        data = np.zeros((times, len(setups), *views[setups[0]].shape[1:]), np.uint16)
        for c, setup in enumerate(setups):
            data[: len(views[setup]), c] = views[setup]
        image("views.zarr", data)
        entries = [
            f'<zgroup setup="{s}" tp="{t}" path="views.zarr" indicies="{c} {t}" />'
            for c, s in enumerate(setups)
            for t in range(len(views[s]))
        ]
    else:
        for s in setups:
            for t in range(len(views[s])):
                image(f"s{s}-t{t}.zarr", views[s][t])
                entries.append(
                    f'<zgroup setup="{s}" timepoint="{t}"><path>s{s}-t{t}.zarr</path></zgroup>'
                )
    zgroups = f"<zgroups>{''.join(entries)}</zgroups>"
    _bdv_xml(xml, views, attributes, "multimg.zarr", store.name, zgroups)


def _write_project(loader: str, xml: Path, views: dict[int, np.ndarray], attrs: dict) -> None:
    """``xml`` and its views, in BigDataViewer HDF5 (``xml``'s .h5), N5 (its .n5) or
    OME-Zarr (its .ome.zarr: ``zarr-5d``, ``zarr-3d``, ``write_bdv_zarr``'s layouts)."""
    if loader == "hdf5":
        write_bdv(xml.with_suffix(".h5"), views, attrs)
    elif loader == "n5":
        write_bdv_n5(xml, views, attrs)
    else:
        write_bdv_zarr(xml, views, attrs, loader.removeprefix("zarr-"))


@pytest.mark.parametrize("loader", ["hdf5", "n5", "zarr-5d", "zarr-3d"])
def test_a_bigdataviewer_project_gives_a_volume_per_tile_its_setups_as_channels(
    tmp_path, loader, s3
) -> None:
    """BigStitcher's projects in HDF5, N5 (its "Resave as N5") and OME-Zarr (BigStitcher-
    Spark's 5D images, each view a channel and time point of one; BigDataViewer's first
    OME-Zarr loader's image per view) read alike; N5 and OME-Zarr projects from an object
    store too."""
    import s3fs

    from tests.conftest import BUCKET

    volume = random_image((2, 2, 6, 40, 48)) * 60  # t, channel, z, y, x: past 32767
    views = {0: volume[:, 1], 1: volume[:, 0]}
    _write_project(loader, tmp_path / "fused.xml", views, {0: {"channel": 2}, 1: {"channel": 1}})
    for given in ("fused.xml", "fused.h5") if loader == "hdf5" else ("fused.xml",):
        (source,) = open_sources(tmp_path / given)
        assert source.kind == {"hdf5": "bdv", "n5": "bdv-n5"}.get(loader, "bdv-zarr")
        assert source.name == "fused" and source.levels == 2
        assert source.info.shape == (2, 2, 6, 40, 48) and source.info.dtype == np.uint16
        assert source.info.scale == pytest.approx({"x": 0.4, "y": 0.4, "z": 2.5})
        assert source.info.units == dict.fromkeys("zyx", "micrometer")
        assert source.info.channel_names == ("channel 1", "channel 2")
        region = ((1, 5), (3, 40), (0, 31))
        got = source.read(1, (0, 1), region)  # setup 1 (channel 1) first
        np.testing.assert_array_equal(got, volume[1, :, 1:5, 3:40, :31])
        again = pickle.loads(pickle.dumps(source))  # as a worker gets it
        np.testing.assert_array_equal(again.read(0, (1,), region)[0], volume[0, 1, 1:5, 3:40, :31])
    (half,) = open_sources(tmp_path / "fused.xml", level=1)
    assert half.info.shape == (2, 2, 6, 20, 24)
    assert half.info.scale == pytest.approx({"x": 0.8, "y": 0.8, "z": 2.5})
    np.testing.assert_array_equal(
        half.read(0, (1,), ((0, 6), (0, 20), (0, 24)))[0], volume[0, 1, :, ::2, ::2]
    )
    with pytest.raises(InputImageError, match=r"has 2 resolution level\(s\)"):
        open_sources(tmp_path / "fused.xml", level=2)

    # Two tiles of one channel each: an image per tile, as a file of several series.
    tiles = {0: volume[:1, 0], 1: volume[:1, 1]}
    attrs = {0: {"channel": 0, "tile": 0}, 1: {"channel": 0, "tile": 1}}
    _write_project(loader, tmp_path / "tiles.xml", tiles, attrs)

    def tiles_read(given: str | Path) -> None:  # as their images
        sources = open_sources(given)
        assert [s.name for s in sources] == ["tiles_s0", "tiles_s1"]
        for s, (_, data) in zip(sources, sorted(tiles.items()), strict=True):
            np.testing.assert_array_equal(s.read(0, (0,), ((0, 6), (0, 40), (0, 48)))[0], data[0])

    tiles_read(tmp_path / "tiles.xml")
    # Stitched (BigStitcher's registrations, newest first): tile 1 shifted 100 world units
    # (0.4 um each) in x after the calibration (z x 6.25), tile 0 turned: not applied.
    calibration = "1 0 0 0 0 1 0 0 0 0 6.25 0"
    turned, shifted = "0 -1 0 50 1 0 0 0 0 0 1 0", "1 0 0 100 0 1 0 0 0 0 1 0"
    registrations = "".join(
        f'<ViewRegistration timepoint="0" setup="{s}">'
        + "".join(f'<ViewTransform type="affine"><affine>{a}</affine></ViewTransform>' for a in t)
        + "</ViewRegistration>"
        for s, t in ((0, (turned, calibration)), (1, (shifted, calibration)))
    )
    stitched = (tmp_path / "tiles.xml").read_text()
    stitched = stitched.replace(
        "</SequenceDescription>", f"</SequenceDescription><ViewRegistrations>{registrations}"
    ).replace("</SpimData>", "</ViewRegistrations></SpimData>")
    (tmp_path / "stitched.xml").write_text(stitched)
    assert [s.info.origin for s in open_sources(tmp_path / "stitched.xml")] == [{}, {"x": 40.0}]
    # Level 1 (x and y halved): its first pixel half a full-resolution pixel further in.
    half = open_sources(tmp_path / "stitched.xml", level=1)[1].info.origin
    assert half == pytest.approx({"x": 40.2, "y": 0.2})
    # In an object store, where BigStitcher-Spark keeps its projects: N5 and OME-Zarr read
    # from there (the XML given, or its store: a directory's entry); HDF5 is refused.
    url = f"s3://{BUCKET}/bdv-{loader}"
    for entry in tmp_path.glob("tiles.*"):
        s3fs.S3FileSystem().put(str(entry), f"{url}/{entry.name}", recursive=True)
    if loader == "hdf5":
        refused = rf"tiles.xml: its HDF5 file is at {url}/tiles.h5; HDF5 is read from local"
        with pytest.raises(InputImageError, match=refused):
            open_sources(f"{url}/tiles.xml")
    else:
        (store_url,) = resolve_inputs(url)  # the default pattern picks the store
        for given in (f"{url}/tiles.xml", store_url):
            tiles_read(given)
    # A view missing (setup 1 at time point 1): the time points holding every channel.
    views = {0: volume[:, 1], 1: volume[:1, 0]}
    _write_project(loader, tmp_path / "gap.xml", views, {0: {"channel": 1}, 1: {"channel": 0}})
    (gap,) = open_sources(tmp_path / "gap.xml")
    assert gap.info.shape == (1, 2, 6, 40, 48)
    np.testing.assert_array_equal(gap.read(0, (0, 1), region), volume[0, :, 1:5, 3:40, :31])
    if loader != "hdf5":  # the N5 / zarr given (a directory's entry) reads through its project
        store = "tiles.n5" if loader == "n5" else "tiles.ome.zarr"
        tiles_read(tmp_path / store)
        assert str(tmp_path / store) in resolve_inputs(str(tmp_path))  # the default pattern
        (tmp_path / "tiles.xml").rename(tmp_path / "kept.xml")
        without = (
            r"tiles.n5: a BigDataViewer N5 .*without its"
            if loader == "n5"
            else r"tiles.ome.zarr: zarr group without OME-Zarr 'multiscales' .*it holds the "
            r"OME-Zarr images (s0-t0.zarr, s1-t0.zarr|views.zarr): give one, or the Big"
        )
        with pytest.raises(InputImageError, match=without):
            open_sources(tmp_path / store)
        (tmp_path / "kept.xml").rename(tmp_path / "tiles.xml")
        xml = (tmp_path / "tiles.xml").read_text()
        if loader == "zarr-5d":  # a view of a 5D image must say which channel it is
            (tmp_path / "tiles.xml").write_text(xml.replace('indicies="1 0"', 'indicies="[]"'))
            with pytest.raises(InputImageError, match=r"setup 1 at time point 0: views.zarr hol"):
                open_sources(tmp_path / "tiles.xml")
            (tmp_path / "tiles.xml").write_text(
                xml.replace(' path="views.zarr" indicies="1 0"', "")
            )
            with pytest.raises(InputImageError, match=r"xml: a zgroup without its time point or"):
                open_sources(tmp_path / "tiles.xml")
            (tmp_path / "tiles.xml").write_text(xml)
        shutil.rmtree(tmp_path / store)
        with pytest.raises(InputImageError, match=rf"tiles.xml: its \w+ \w+ .*{store} does not"):
            open_sources(tmp_path / "tiles.xml")
        return
    (tmp_path / "other.xml").write_text(
        '<SpimData><SequenceDescription><ImageLoader format="spimreconstruction.filelist">'
        "</ImageLoader></SequenceDescription></SpimData>"
    )
    with pytest.raises(
        InputImageError,
        match=r"other.xml: .*not BigDataViewer HDF5, N5 or OME-Zarr \(image loader spimrec",
    ):
        open_sources(tmp_path / "other.xml")
    xml = (tmp_path / "tiles.xml").read_text().replace("<id>1</id>", "<id>one</id>")
    (tmp_path / "tiles.xml").write_text(xml)
    with pytest.raises(
        InputImageError,
        match=r"tiles.xml: a view setup, time point or registration that is not a numb",
    ):
        open_sources(tmp_path / "tiles.xml")
