"""Images whose channels are files (``data.channels``): nnU-Net's cases."""

from __future__ import annotations

import numpy as np
import pytest

from raysegment.data.channels import ChannelFilesSource, channel_cases
from raysegment.data.sources import MemorySource
from raysegment.errors import InputImageError


def test_a_cases_files_group_in_the_order_of_their_digits_others_alone() -> None:
    paths = [
        "in/brats_1_0001.nii.gz",
        "in/brats_1_0000.nii.gz",
        "in/notes.nii.gz",
        "in/brats_2_0000.nii.gz",
        "in/brats_2_0001.nii.gz",
        "other/brats_1_0000.nii.gz",
        "other/brats_1_0001.nii.gz",
    ]
    assert channel_cases(paths, ["T1", "FLAIR"]) == [
        ("brats_1", ["in/brats_1_0000.nii.gz", "in/brats_1_0001.nii.gz"]),
        (None, ["in/notes.nii.gz"]),
        ("brats_2", ["in/brats_2_0000.nii.gz", "in/brats_2_0001.nii.gz"]),
        ("brats_1", ["other/brats_1_0000.nii.gz", "other/brats_1_0001.nii.gz"]),  # its own
    ]


@pytest.mark.parametrize(
    ("files", "have"),
    [(["c_0000.nii", "c_0002.nii"], "_0000, _0002"), (["c_0001.nii"], "_0001")],
)
def test_a_case_of_other_channel_files_than_the_model_takes_is_one_error(files, have) -> None:
    with pytest.raises(InputImageError) as caught:
        channel_cases(files, ["T1", "FLAIR"])
    assert str(caught.value) == (
        f"c_XXXX: channel files {have}; the model takes 2 channel(s), one file each: give "
        f"_0000 (T1), _0001 (FLAIR)"
    )


def test_a_cases_files_read_as_the_channels_of_one_image() -> None:
    t1 = np.arange(2 * 3 * 4, dtype=np.uint16).reshape(1, 1, 2, 3, 4)
    flair = np.linspace(0, 1, 2 * 3 * 4, dtype=np.float32).reshape(1, 1, 2, 3, 4)
    case = ChannelFilesSource(
        [MemorySource(t1, "c_0000", "c_0000"), MemorySource(flair, "c_0001", "c_0001")], "c"
    )
    assert case.name == "c" and case.info.shape == (1, 2, 2, 3, 4)
    assert case.info.dtype == np.float32
    got = case.read(0, (1, 0), ((1, 2), (0, 3), (1, 4)))
    np.testing.assert_array_equal(got, np.stack([flair[0, 0, 1:, :, 1:], t1[0, 0, 1:, :, 1:]]))


def test_channel_files_of_other_voxels_are_one_error_naming_the_file() -> None:
    first = MemorySource(np.zeros((1, 1, 2, 3, 4), np.uint16), "c_0000", "c_0000")
    other = MemorySource(np.zeros((1, 1, 2, 3, 5), np.uint16), "c_0001", "c_0001")
    with pytest.raises(InputImageError, match=r"^c_0001: a channel of c_0000, but its shape"):
        ChannelFilesSource([first, other], "c")
