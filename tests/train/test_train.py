"""Training on Ray Train: learns a separable task, writes a model directory that infer runs,
resumes and fine-tunes, and stops early at the same epoch on 1 and 2 workers."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import zarr

pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")

from raysegment.train import train  # noqa: E402
from tests.train.conftest import segment_big, zoo_package  # noqa: E402

pytestmark = pytest.mark.usefixtures("ray_session")


def _cfg(data: Path, out: Path, **extra: object) -> dict:
    return {
        "images": {"dir": str(data / "img")},
        "labels": {"dir": str(data / "lbl"), "pattern": r"(.*)_mask\.tif"},
        "output": str(out),
        "patch_size": [64],
        "patches_per_epoch": 64,
        "batch_size": 16,
        "lr": 0.003,
        "max_epochs": 10,
        "device": "cpu",
        "threads": 1,  # the suite runs up to 4 test processes on 2 cores
    } | extra


WALL = ("seconds", "wait_seconds", "step_seconds")
"""The metrics of wall time: all that differs between runs of one command."""


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "metrics.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize(
    "asked,node_cpus,local_workers,want",
    [
        (None, 2, 1, 2),  # one worker: every core of its node
        (None, 2, 2, 1),
        (None, 16, 3, 5),
        (None, 2, 4, 1),
        (8, 2, 1, 8),  # threads= as asked
    ],
)
def test_cpu_workers_compute_on_their_share_of_their_nodes_cores(
    asked, node_cpus, local_workers, want
) -> None:
    from raysegment.train.loop import worker_threads

    assert worker_threads(asked, node_cpus, local_workers) == want


@pytest.mark.parametrize(
    "asked,gpu,node_cpus,local_workers,want",
    [
        (None, False, 16, 1, 2),  # a CPU worker's cores compute its steps
        (None, True, 16, 1, 15),  # a GPU worker's node's CPUs, less its own process
        (None, True, 16, 4, 3),
        (None, True, 4, 2, 2),  # at least 2
        (6, True, 16, 1, 6),  # read_tasks= as asked
    ],
)
def test_gpu_workers_read_their_patches_on_their_share_of_the_nodes_cpus(
    asked, gpu, node_cpus, local_workers, want
) -> None:
    from raysegment.train.loop import read_tasks

    assert read_tasks(asked, gpu, node_cpus, local_workers) == want


@pytest.fixture(scope="module")
def trained(blob_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("model") / "unet"
    # 4 pairs train, 2 validate; new patches every epoch: 14 epochs (best 13) for the big
    # image's 0.94 (0.81 after 10).
    return out, train(_cfg(blob_data, out, folds=3, fold=1, max_epochs=14))


def test_trains_to_high_iou_and_writes_the_model_directory(trained) -> None:
    out, summary = trained
    assert summary.best_metric > 0.9, summary.history
    for name in (
        "model.pth",
        "weights.pt",
        "checkpoint.pt",
        "metrics.csv",
        "config.yaml",
        "training_curves.png",
        "model.json",
        "raysegment.json",
    ):
        assert (out / name).is_file(), name
    rows = _rows(out)
    assert [int(r["epoch"]) for r in rows] == list(range(1, summary.epochs + 1))
    assert {"train_loss", "val_loss", "iou", "fscore", "accuracy", "recall", "precision"} <= set(
        rows[0]
    )
    # The steps' wait for their patches and the steps: parts of the epoch.
    for r in rows:
        wait, steps, epoch = (float(r[k]) for k in ("wait_seconds", "step_seconds", "seconds"))
        assert 0 <= wait and 0 < steps and wait + steps < epoch
    split = json.loads((out / "model.json").read_text())["split"]
    assert (split["folds"], split["fold"], len(split["validation"])) == (3, 1, 2)
    names = sorted(Path(p).name for p in split["train"] + split["validation"])
    assert names == [f"im{i}.tif" for i in range(6)]
    meta = json.loads((out / "raysegment.json").read_text())
    assert meta["classes"] == ["foreground"] and meta["activation"] == "sigmoid"
    assert len(meta["normalize"]["mean"]) == 1 and meta["normalize"]["std"][0] > 1
    weights = torch.load(out / "weights.pt", weights_only=True)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "epoch", "stopper", "history", "best"} <= set(state)
    assert state["epoch"] == summary.epochs and set(weights) == set(state["best"])
    # CPU workers train channels-last (layout=auto); the weights are written channels-first.
    assert summary.layout == "channels_last" and "; channels-last" in str(summary)
    assert state["layout"] == "channels_last"
    assert summary.threads == state["threads"] == 1 and "; 1 thread per worker" in str(summary)
    assert all(w.is_contiguous() for w in weights.values())
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_infer_segments_a_larger_image_with_the_trained_model(trained, blob_data, tmp_path) -> None:
    out, _ = trained
    _, iou = segment_big(blob_data, out, tmp_path)
    attrs = dict(zarr.open_group(str(tmp_path / "big.ome.zarr"), mode="r").attrs)
    assert [c["label"] for c in attrs["ome"]["omero"]["channels"]] == ["foreground"]
    assert iou > 0.9, iou


def test_the_model_packaged_for_the_bioimage_model_zoo(trained, blob_data, tmp_path) -> None:
    """``raysegment package``: a package bioimageio.core tests as the zoo does (its
    format, its test output reproduced, every size it declares run), which infer runs
    as the model directory, to the same mask."""
    from raysegment.errors import ConfigError, OutputError
    from raysegment.train.package import package

    out, _ = trained
    archive = tmp_path / "unet.zip"
    rdf, files = zoo_package(out, archive)
    assert {"weights_torchscript.pt", "README.md", "metrics.csv"} <= set(files)
    raw, prediction = rdf["inputs"][0], rdf["outputs"][0]
    assert raw["axes"][2]["size"] == {"min": 16, "step": 16}  # found: 16, 32, 48 run whole
    assert prediction["axes"][1]["channel_names"] == ["foreground"]
    assert prediction["postprocessing"] == [{"id": "sigmoid"}]
    assert rdf["name"] == "unet (Unet)"  # the directory's name, too short alone
    masks = []
    for model, where in ((out, "dir"), (archive, "zip")):
        _, iou = segment_big(blob_data, model, tmp_path / where)
        assert iou > 0.9
        masks.append(zarr.open_array(str(tmp_path / where / "big.ome.zarr" / "0"), mode="r")[:])
    assert (masks[0] != masks[1]).mean() < 1e-4  # bioimage.io adds 1e-6 to the deviation
    with pytest.raises(OutputError, match=r"unet.zip exists; .* overwrite=true$"):
        package(model=str(out), output=str(archive), authors=["A. Tester"])
    with pytest.raises(ConfigError, match=r"^authors=\[\]: .* names its authors"):
        package(model=str(out), output=str(tmp_path / "b.zip"))
    with pytest.raises(ConfigError, match=r"^name='U/N': .* e.g. name='U_N__'$"):
        package(model=str(out), output=str(tmp_path / "b.zip"), authors=["A"], name="U/N")


def test_resume_continues_epochs_and_optimizer(trained, blob_data, tmp_path) -> None:
    out, summary = trained
    # A channels-last run's optimizer state goes on in channels-first.
    resumed = train(
        _cfg(
            blob_data,
            tmp_path / "more",
            pretrained=str(out),
            max_epochs=summary.epochs + 2,
            layout="channels_first",
            threads=2,
        )
    )
    rows = _rows(tmp_path / "more")
    assert [int(r["epoch"]) for r in rows] == list(range(1, summary.epochs + 3))
    assert rows[: summary.epochs] == _rows(out)  # the history carried over unchanged
    state = torch.load(tmp_path / "more" / "checkpoint.pt", weights_only=True)
    assert state["optimizer"]["state"]  # Adam moments continued, not restarted
    assert resumed.epochs == summary.epochs + 2
    assert resumed.layout == "channels_first" and "channels-last" not in str(resumed)
    assert resumed.threads == 2 and "; 2 threads per worker" in str(resumed)
    assert float(rows[-1]["iou"]) > 0.9


def test_finetune_keeps_weights_and_restarts_epochs(trained, blob_data, tmp_path) -> None:
    out, _ = trained
    tuned = train(
        _cfg(
            blob_data,
            tmp_path / "tuned",
            pretrained=str(out),
            finetune=True,
            lr=1e-4,
            max_epochs=2,
            lr_schedule={"name": "cosine", "warmup_epochs": 1},
            threads=None,
        )
    )
    # By default one worker on the test Ray's 2 CPUs computes on both (Ray alone gives
    # it one thread).
    assert tuned.threads == 2 and "; 2 threads per worker" in str(tuned)
    rows = _rows(tmp_path / "tuned")
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[0]["iou"]) > 0.85  # started from the trained weights
    # The schedule starts again with the new rate: half of it while warming up, then all.
    assert [float(r["lr"]) for r in rows] == pytest.approx([5e-5, 1e-4])
    assert tuned.epochs == 2


def test_the_same_command_trains_alike(trained, blob_data, tmp_path) -> None:
    """Each epoch's patches come from the seed and the epoch, in that order: a run of the
    trained fixture's settings for 2 epochs repeats its first 2 to the last digit (only
    wall times differ; its learning rate is constant, so max_epochs changes nothing)."""
    out, _ = trained
    train(_cfg(blob_data, tmp_path / "again", folds=3, fold=1, max_epochs=2))
    rows, again = (
        [{k: v for k, v in r.items() if k not in WALL} for r in _rows(d)]
        for d in (out, tmp_path / "again")
    )
    assert len(again) == 2 and again == rows[:2]


class _Recorder:
    """Collects every worker's reported metrics (runs in the Ray Train controller)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def after_report(self, run_context, metrics, checkpoint) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(metrics) + "\n")

    def after_exception(self, run_context, worker_exceptions) -> None:
        pass


def test_early_stopping_epoch_is_exact_and_identical_on_every_worker(blob_data, tmp_path) -> None:
    import ray.train

    recorder = type("Recorder", (_Recorder, ray.train.UserCallback), {})(tmp_path / "log")
    # min_delta larger than any loss: only the first epoch improves, so with patience 2
    # training must stop after epoch 3, whatever the losses are.
    cfg = _cfg(
        blob_data,
        tmp_path / "out",
        patience=2,
        min_delta=10.0,
        num_workers=2,
        # Small steps: bfloat16 without the CPU's kernels ran a 64^2 epoch in ~10 s.
        patch_size=[32],
        batch_size=4,
        patches_per_epoch=8,
        val_patches=8,
        max_epochs=20,
        lr_schedule={"name": "plateau", "patience": 1, "factor": 0.5},
        precision="bfloat16",  # data-parallel workers under autocast
        threads=None,
    )
    summary = train(cfg, callbacks=[recorder])
    assert summary.epochs == 3 and summary.stopped_early and summary.best_epoch == 1
    assert summary.layout == "channels_last"  # DistributedDataParallel over channels-last
    assert summary.threads == 1  # by default the node's 2 CPUs shared by its 2 workers
    # The plateau schedule reads the same losses: epoch 2 did not improve, epoch 3 runs
    # at half the rate, on every worker (the reports below are compared rank by rank).
    assert [float(r["lr"]) for r in _rows(tmp_path / "out")] == pytest.approx(
        [0.003, 0.003, 0.0015]
    )
    reports = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()]
    assert len(reports) == 3
    for per_worker in reports:
        assert len(per_worker) == 2
        # every rank saw the same all-reduced numbers (only its own wall time differs)
        same = [{k: v for k, v in m.items() if k not in WALL} for m in per_worker]
        assert all(m == same[0] for m in same)
    assert [r[0]["stopped"] for r in reports] == [False, False, True]
    # Killed after its early stop, before the model was written: the same command trains
    # no further epoch (one more would change the model an uninterrupted run gives) and
    # writes the same model, saying it resumed after epoch 3.
    written = (tmp_path / "out" / "weights.pt").read_bytes()
    marker = tmp_path / "out" / ".raysegment" / "train.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "status": "training"}))
    again = train(cfg)
    assert (again.epochs, again.resumed, again.best_epoch) == (3, [3], 1)
    assert len(_rows(tmp_path / "out")) == 3
    assert (tmp_path / "out" / "weights.pt").read_bytes() == written


def test_float16_without_gpus_is_refused_once_ray_says_so(blob_data, tmp_path) -> None:
    from raysegment.errors import ConfigError

    with pytest.raises(ConfigError, match="precision=float16 trains on GPUs and Ray sees 0"):
        train(_cfg(blob_data, tmp_path / "out", device="auto", precision="float16"))
    assert not (tmp_path / "out").exists()  # a rerun with other settings is not refused


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs Linux's /dev/full")
def test_model_files_meet_a_full_disk_with_its_error() -> None:
    """/dev/full fails every write with ENOSPC, as a full disk does. Written by torch's own
    file writer, torch.save raised a RuntimeError that does not say why and torch.jit.save
    aborted the process."""
    import errno

    from raysegment.train.loop import save_file

    module = torch.jit.trace(torch.nn.Conv2d(1, 1, 3), torch.zeros(1, 1, 8, 8))
    for save, obj in ((torch.save, {"w": torch.zeros(1000)}), (torch.jit.save, module)):
        with pytest.raises(OSError) as caught:
            save_file(save, obj, Path("/dev/full"))
        assert caught.value.errno == errno.ENOSPC


def test_a_checkpoint_meeting_a_full_disk_fails_in_one_line(
    blob_data, tmp_path, monkeypatch
) -> None:
    """As Ray Train reports a worker's error once its retries are spent: the storage error
    inside it becomes one line naming where the checkpoints go and what to do."""
    import errno

    from ray.train import WorkerGroupError
    from ray.train.torch import TorchTrainer
    from ray.train.v2._internal.exceptions import UserExceptionWithTraceback

    from raysegment.errors import OutputError

    def failing(error: Exception) -> Any:
        def fit(self: object) -> None:
            raise WorkerGroupError("rank 0", {0: UserExceptionWithTraceback(error, "Traceback")})

        return fit

    full = OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(TorchTrainer, "fit", failing(full))
    store = tmp_path / "checkpoints"
    with pytest.raises(OutputError) as caught:
        train(_cfg(blob_data, tmp_path / "out", storage_path=str(store)))
    assert str(caught.value) == (
        f"{store}: No space left on device writing a checkpoint; free space there or give "
        "another storage_path=, then run the same command again: it resumes from its last "
        "checkpoint"
    )
    # Any other failure of the workers keeps Ray's error and its traceback.
    monkeypatch.setattr(TorchTrainer, "fit", failing(KeyError("x")))
    with pytest.raises(WorkerGroupError):
        train(_cfg(blob_data, tmp_path / "out", storage_path=str(store)))


_ORDER = """
import sys, time
import raysegment.runtime as runtime
from raysegment.train import train

def start_ray():
    smp = sys.modules.get("segmentation_models_pytorch")
    initializing = getattr(getattr(smp, "__spec__", None), "_initializing", False)
    print("imported before Ray" if smp is not None and not initializing else "not yet")
    raise SystemExit(0)

runtime.start_ray = start_ray
train(images={"dir": sys.argv[1]}, labels={"dir": sys.argv[1]}, output=sys.argv[2])
"""


def test_ray_starts_before_the_model_library_is_imported(tmp_path) -> None:
    """The encoder's name is checked against segmentation-models-pytorch, whose import
    (4.4 s here) ran before ``ray.init`` and delayed Ray's start: it runs in the thread
    beside Ray's start now."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _ORDER, str(tmp_path), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout.strip() == "not yet", out.stdout + out.stderr[-2000:]
    assert not (tmp_path / "out").exists()
