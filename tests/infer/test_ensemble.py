"""``model=[a,b,...]``: an ensemble (nnU-Net's folds), the members' logits averaged tile
by tile; members must take and return the same."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from raysegment.errors import ModelContractError
from raysegment.infer import infer
from tests.conftest import (
    conv_model,
    driver_plan,
    random_image,
    save_torchscript,
    whole_image_prediction,
)


def _members(tmp_path, count: int = 2, out_ch: int = 2) -> tuple[list[str], list]:
    modules = [conv_model(out_ch=out_ch, seed=i) for i in range(count)]
    paths = [
        str(save_torchscript(m, tmp_path / f"fold{i}.pth", 2, 1)) for i, m in enumerate(modules)
    ]
    return paths, modules


@pytest.mark.usefixtures("ray_session")
def test_an_ensemble_writes_the_mean_of_its_members_logits(tmp_path, ome_tiff) -> None:
    image = random_image((150, 130))
    paths, modules = _members(tmp_path, 3)
    summary = infer(
        input=str(ome_tiff(image)),
        model=paths,
        output=str(tmp_path / "out"),
        progress=False,
        chunks=[64],
        block=[64],
        tile={"size": [32], "blend": "crop"},  # crop: each pixel as the whole image's
        finalize={"mode": "raw"},
    )
    out = tmp_path / "out" / "img.ome.zarr"
    got = zarr.open_array(str(out / "0"), mode="r")[:]
    want = np.mean([whole_image_prediction(m, image) for m in modules], axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    for single in modules:  # not any one member's
        assert np.abs(got - whole_image_prediction(single, image)).max() > 0.01
    model = dict(zarr.open_group(str(out), mode="r").attrs)["raysegment"]["model"]
    assert model["path"] == paths and [m["path"] for m in model["members"]] == paths
    assert len({model["sha256"], *(m["sha256"] for m in model["members"])}) == 4
    assert all("[ensemble of 3]" in device for device in summary.devices)


def test_members_that_return_other_channels_are_refused(tmp_path, ome_tiff) -> None:
    (one,), _ = _members(tmp_path, 1, out_ch=1)
    two = str(save_torchscript(conv_model(out_ch=2, seed=5), tmp_path / "two.pth", 2, 1))
    image = str(ome_tiff(random_image((40, 50))))
    with pytest.raises(ModelContractError, match=r"two\.pth: out_channels is 2, 1 for .*fold0"):
        driver_plan({"input": image, "model": [one, two], "output": str(tmp_path / "out")})


def test_an_ensemble_is_its_members_in_their_order(tmp_path, ome_tiff) -> None:
    """An unfinished output resumes only with the same models in the same order: the sum
    of their logits rounds by its order."""
    (a, b), _ = _members(tmp_path)
    image = str(ome_tiff(random_image((40, 50))))
    prints = set()
    for model in ([a], [a, b], [b, a], a):
        models, plan = driver_plan({"input": image, "model": model, "output": str(tmp_path)})
        assert len(models) == (1 if isinstance(model, str) else len(model))
        prints.add(plan.fingerprint)
    assert len(prints) == 3  # a and [a] are one run
