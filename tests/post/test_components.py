"""nnU-Net's postprocessing of a label map, slab by slab (``post.components``), against
nnU-Net's own (``nnunetv2.postprocessing``)."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from scipy.ndimage import zoom

from raysegment.errors import ConfigError
from raysegment.post.components import largest_components, read_postprocessing


def _cubes() -> np.ndarray:
    """Label 1 in two cubes of 8 voxels touching at a corner only, across planes 2 and 3,
    and one of 12 voxels apart; label 2 in two blocks of 6 voxels (a tie); label 3 in
    blobs."""
    rng = np.random.default_rng(3)
    coarse = 3 * (rng.random((4, 5, 5)) < 0.4)
    seg = zoom(coarse, (14 / 4, 20 / 5, 18 / 5), order=0).astype(np.uint8)
    seg[:, :8, :8] = 0
    seg[1:3, 1:3, 1:3] = 1
    seg[3:5, 3:5, 3:5] = 1
    seg[8:11, 1:3, 1:3] = 1
    seg[:, 10:, :3] = 0
    seg[1:4, 11:13, 0] = 2
    seg[8:11, 11:13, 2] = 2
    return seg


def _nnunet(seg: np.ndarray, steps: list) -> np.ndarray:
    module = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")
    fn = module.remove_all_but_largest_component_from_segmentation
    kwargs = [{"labels_or_regions": step} for step in steps]
    return module.apply_postprocessing(seg, [fn] * len(steps), kwargs)


@pytest.mark.parametrize("planes", [1, 3, 14])
def test_each_step_keeps_its_labels_largest_components_as_nnunet_does(planes) -> None:
    """Steps in order (a label, a region; the foreground, a label), each on what the
    ones before left, slabs of ``planes``: nnU-Net's postprocessing voxel for voxel,
    components joined across slabs by a corner too (full connectivity), both of a tie
    kept."""
    seg = _cubes()
    slabs = [seg[z : z + planes] for z in range(0, len(seg), planes)]
    for steps in ([1, (2,)], [[1, 2, 3], 3]):
        labels = [tuple(s) if isinstance(s, (list, tuple)) else (s,) for s in steps]
        cleaned = largest_components(lambda: iter(slabs), labels)
        got = np.concatenate([cleaned(k) for k in range(len(slabs))])
        np.testing.assert_array_equal(got, _nnunet(seg, steps))
        assert (got != seg).any()
    # Label 1's cubes joined at a corner (16 voxels) outweigh its 12 apart; both blocks of
    # label 2 stay.
    cleaned = largest_components(lambda: iter(slabs), [(1,), (2,)])
    got = np.concatenate([cleaned(k) for k in range(len(slabs))])
    assert got[1:3, 1:3, 1:3].all() and got[3:5, 3:5, 3:5].all() and not got[8:11, 1:3, 1:3].any()
    assert (got[1:4, 11:13, 0] == 2).all() and (got[8:11, 11:13, 2] == 2).all()


def test_nnunets_postprocessing_files_are_read_without_running_them(tmp_path) -> None:
    """``postprocessing.pkl`` as nnU-Net saves it (its function, a list of labels, a
    region) and ``postprocessing.json``: the steps' labels; a pickle of any other
    callable is one error, and nothing of it runs."""
    module = pytest.importorskip("nnunetv2.postprocessing.remove_connected_components")
    fn = module.remove_all_but_largest_component_from_segmentation
    kwargs = [
        {"labels_or_regions": [1, 2]},
        {"labels_or_regions": (2, 3)},
        {"labels_or_regions": 1},
    ]
    (tmp_path / "postprocessing.pkl").write_bytes(pickle.dumps(([fn] * 3, kwargs)))
    want = [(1, 2), (2, 3), (1,)]
    assert read_postprocessing(str(tmp_path / "postprocessing.pkl")) == want
    described = {"postprocessing_fns": [fn.__name__] * 3, "postprocessing_kwargs": kwargs}
    (tmp_path / "postprocessing.json").write_text(json.dumps(described))
    assert read_postprocessing(str(tmp_path / "postprocessing.json")) == want
    marker = tmp_path / "ran"
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(([os.system], [{"labels_or_regions": 1}])))
    with pytest.raises(ConfigError, match="evil.pkl: holds (posix|os).system, not a step"):
        read_postprocessing(str(tmp_path / "evil.pkl"))
    assert not marker.exists()
    with pytest.raises(ConfigError, match="missing.pkl: no such file"):
        read_postprocessing(str(tmp_path / "missing.pkl"))
