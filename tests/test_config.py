"""Config loading: YAML + overrides onto structured configs, one clear error per bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from raysegment.config import (
    Blend,
    FinalizeMode,
    InferConfig,
    PackageConfig,
    config_to_dict,
    load_config,
)
from raysegment.errors import ConfigError

REQUIRED = ["input=a.tif", "model=m.pth", "output=out"]
ROOT = Path(__file__).resolve().parents[1]


def test_shipped_yaml_files_load() -> None:
    cfg = load_config(InferConfig, [ROOT / "conf" / "infer.yaml"], REQUIRED)
    assert cfg.tile.blend is Blend.gaussian and cfg.finalize.mode is FinalizeMode.probabilities
    assert config_to_dict(cfg) == config_to_dict(load_config(InferConfig, (), REQUIRED))
    vol = load_config(
        InferConfig, [ROOT / "conf" / "infer.yaml", ROOT / "conf" / "volume.yaml"], REQUIRED
    )
    assert vol.device == "all" and vol.block is None and vol.finalize.mode is FinalizeMode.labels
    package = load_config(
        PackageConfig, [ROOT / "conf" / "package.yaml"], ["model=m", "output=p.zip"]
    )
    assert config_to_dict(package) == config_to_dict(
        load_config(PackageConfig, (), ["model=m", "output=p.zip"])
    )


def test_overrides_win_and_scalars_become_lists(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("tile:\n  size: 128\n  blend: crop\nchunks: 64\n")
    cfg = load_config(InferConfig, [f], REQUIRED + ["tile.size=[96,64]", "device=1,3,6"])
    assert cfg.tile.size == [96, 64] and cfg.chunks == [64] and cfg.tile.blend is Blend.crop
    assert cfg.device == "1,3,6"


@pytest.mark.parametrize(
    "override,match",
    [
        ("tile.sise=3", "unknown config key 'tile.sise'; valid keys under 'tile'"),
        ("nope=1", "unknown config key 'nope'"),
        ("tile.blend=median", "tile.blend.*expected one of \\[gaussian, constant, crop\\]"),
        ("finalize.mode=argmax", "finalize.mode"),
        ("tile.overlap=-0.1", "tile.overlap"),
        ("finalize.threshold=2", "finalize.threshold"),
        ("finalize.nifti_labels=true", "nifti_labels=true: .* finalize.nifti=true finalize.mode="),
        ("finalize.postprocessing=pp.pkl", "postprocessing=pp.pkl: .*finalize.nifti=true and"),
        ("batch_size=0", "batch_size=0 must be >= 1"),
        ("streams=0", "streams=0 must be >= 1"),
        ("io_tasks=0", "io_tasks=0 must be >= 1"),
        ("batch_size=many", "batch_size"),
        ("device=tpu", "device='tpu'"),
        ("channels=[1,1]", "distinct channel"),
        ("pattern=[", "not a regular expression"),
        ("sequence=y", "sequence=y: give z .* or t"),
        ("normalize.std=0", "normalize.std"),
        ("normalize.std=[1,0,2]", r"normalize.std=\[1.0, 0.0, 2.0\] must be > 0"),
        ("normalize.mean=[]", r"normalize.mean=\[\]: give one value"),
        ("normalize.low=99.9", "low < high"),
        ("tile.size=[1,2,3,4]", "1 to 3 positive sizes"),
        ("overwrite", "not key=value"),
    ],
)
def test_bad_values_name_the_key(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(InferConfig, (), REQUIRED + [override])


def test_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="missing required key 'output'"):
        load_config(InferConfig, (), REQUIRED[:2])
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(InferConfig, [tmp_path / "nope.yaml"], REQUIRED)
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(InferConfig, [bad], REQUIRED)


def test_a_text_key_set_back_to_null_on_the_command_line(tmp_path: Path) -> None:
    """Text keys are taken verbatim (a regex stays a regex), but ``null`` is none, as in
    YAML: a config file's value can be cleared (conf/nnunet.yaml's resample_to)."""
    from raysegment.config import TrainConfig

    need = ["images.dir=i", "labels.dir=l", "output=o"]
    nnunet = [ROOT / "conf" / "train.yaml", ROOT / "conf" / "nnunet.yaml"]
    cfg = load_config(TrainConfig, nnunet, [*need, "resample_to=null", "resample_size=[1,1,1]"])
    assert cfg.resample_to is None and cfg.resample_size == [1.0, 1.0, 1.0]
    cfg = load_config(TrainConfig, (), [*need, "labels.pattern=[ab]_mask", "images.pattern=null"])
    assert cfg.labels.pattern == "[ab]_mask" and cfg.images.pattern is None
    with pytest.raises(ConfigError, match="output"):  # a text key that cannot be none
        load_config(TrainConfig, (), ["images.dir=i", "labels.dir=l", "output=null"])


def test_train_yaml_loads_and_checks() -> None:
    from raysegment.config import TrainConfig, TrainMode

    need = ["images.dir=i", "labels.dir=l", "output=o"]
    cfg = load_config(TrainConfig, [ROOT / "conf" / "train.yaml"], need + ["patch_size=64"])
    assert cfg.mode is TrainMode.binary and cfg.patch_size == [64] and cfg.max_epochs == 100
    assert config_to_dict(cfg) == config_to_dict(
        load_config(TrainConfig, (), need + ["patch_size=64"])
    )
    for bad, match in (
        ("finetune=true", "needs pretrained"),
        ("device=tpu", "device='tpu'"),
        ("patch_size=[8,16,16,16]", "give 1 to 3 positive sizes"),
        ("model.features=0", "model.features=0 must be >= 1"),
        ("lr=0", "lr=0"),
        ("lr_schedule.name=step", "lr_schedule.name"),
        ("lr_schedule.warmup_epochs=100", r"warmup_epochs=100 must be >= 0 and below max_epochs"),
        ("lr_schedule.min_lr=0.001", r"min_lr=0.001 must be >= 0 and below lr=0.001"),
        ("lr_schedule.factor=1", r"factor=1.0 must be in \(0, 1\)"),
        ("lr_schedule.patience=0", "lr_schedule.patience=0 must be >= 1"),
        ("threads=0", "threads=0 must be >= 1"),
        ("batch_size=0", "batch_size=0 must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_config(TrainConfig, (), need + [bad])
    # One value: a square; three: a 3D network's (z, y, x).
    for given, patch in (("64", (64, 64)), ("[32,64]", (32, 64)), ("[16,64,64]", (16, 64, 64))):
        assert load_config(TrainConfig, (), [*need, f"patch_size={given}"]).patch() == patch
