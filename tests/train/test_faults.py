"""Training faults: a worker that dies is restarted from the last checkpoint
(FailureConfig), and after a kill -9 of the whole run the same command resumes."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import cli_command
from tests.faults import install

pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")

# In the training worker: the first worker to validate epoch RAYSEGMENT_TEST_KILL_EPOCH
# (0-based) dies there, once Ray Train has registered the checkpoint of the epoch before
# (its controller collects reports by polling: a report still in flight would be lost).
# With RAYSEGMENT_TEST_HOLD_EPOCH, every worker waits at that epoch (0-based) to be
# killed: the run cannot finish before the test kills it, however late it looks.
PATCH = """
import json, os, time
update = m.EarlyStopping.update

def registered(run):
    try:
        with open(os.path.join(run, "checkpoint_manager_snapshot.json")) as f:
            return json.load(f)["latest_checkpoint_result"]["metrics"]["epoch"]
    except Exception:
        return 0

def dying(self, loss, epoch):
    root = os.environ["RAYSEGMENT_TEST_DIR"]
    if epoch == int(os.environ["RAYSEGMENT_TEST_KILL_EPOCH"]):
        try:
            os.close(os.open(os.path.join(root, "killed"), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return update(self, loss, epoch)
        deadline = time.time() + 120
        while registered(os.path.join(root, "model", "ray_train", "run")) < epoch:
            if time.time() > deadline:
                break
            time.sleep(0.2)
        os._exit(1)
    held = os.environ.get("RAYSEGMENT_TEST_HOLD_EPOCH")
    if held is not None and epoch >= int(held):  # until the test kills the run
        time.sleep(600)
    return update(self, loss, epoch)

m.EarlyStopping.update = dying
"""


def _command(data: Path, threads: int = 1) -> list[str]:
    return cli_command(
        "train",
        f"images.dir={data / 'img'}",
        f"labels.dir={data / 'lbl'}",
        r"labels.pattern=(.*)_mask\.tif",
        "output=model",
        "patch_size=32",
        "patches_per_epoch=32",
        "val_patches=16",
        "batch_size=16",
        "max_epochs=5",
        "patience=50",
        "device=cpu",
        f"threads={threads}",  # the suite runs up to 4 test processes on 2 cores
    )


def _latest_epoch(run: Path) -> int:
    """Epoch of the newest checkpoint Ray Train has registered in its run storage."""
    try:
        snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
        return int(snapshot["latest_checkpoint_result"]["metrics"]["epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def test_worker_death_and_kill_dash_9_resume_from_the_last_checkpoint(
    blob_data: Path, tmp_path: Path
) -> None:
    site = install(tmp_path / "site", "raysegment.train.loop", PATCH)
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
        "RAYSEGMENT_TEST_DIR": str(tmp_path),
        "RAYSEGMENT_TEST_KILL_EPOCH": "1",
    }
    held = env | {"RAYSEGMENT_TEST_HOLD_EPOCH": "4"}  # the last epoch
    log = tmp_path / "killed.log"  # what the run said, should it end on its own
    with open(log, "w") as out:
        run = subprocess.Popen(
            _command(blob_data),
            cwd=tmp_path,
            env=held,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.time() + 300
    # Kill once Ray Train has registered the checkpoint of epoch 3: the worker died in
    # epoch 2 and was restarted from epoch 1's.
    while _latest_epoch(tmp_path / "model" / "ray_train" / "run") < 3:
        assert run.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.2)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert (tmp_path / "killed").exists()
    assert not (tmp_path / "model" / "model.pth").exists()

    # threads may change on resuming (float rounding only, as layout and device).
    again = subprocess.run(
        _command(blob_data, threads=2),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    assert "resuming the unfinished run" in again.stderr
    assert "; 2 threads per worker" in again.stdout, again.stdout
    # Ray's chatter stays out of the user's terminal (Ray Train's placement-group cleaner
    # warned every second that the state API, a dashboard service, was unavailable).
    assert "State API" not in again.stderr, again.stderr[-3000:]
    # One short line per epoch instead of Ray Train's per-report lines: the resumed run's
    # epochs (from the last checkpoint on) in order, ending with the last.
    output = again.stdout + again.stderr
    assert "Reporting training result" not in output, output[-3000:]
    # Nor Ray Data's, from the processes that run it for Ray Train: one line per dataset
    # and epoch ("Dataset train_... execution finished in 0.4 seconds").
    # Nor Ray Train's preemption watcher's creation error line, nor the deprecation
    # warning Ray Train's data configuration causes in Ray Data.
    for chatter in (
        "execution finished",
        "Progress bars disabled",
        "PreemptionWatcher",
        "exclude_resources",
    ):
        assert chatter not in output, output[-3000:]
    epochs = [int(e) for e in re.findall(r"raysegment train: epoch (\d+)/5: train loss", output)]
    assert epochs and epochs == sorted(epochs) and epochs[-1] == 5, output[-3000:]
    # Resumed twice: after the worker died (from epoch 1), after the kill (epoch 3 or 4).
    resumed = again.stdout.split("resumed after epoch ")[1].split(")")[0].split(", ")
    assert len(resumed) == 2, again.stdout + again.stderr[-3000:]
    first, second = (int(v) for v in resumed)
    assert first == 1 and second >= 3, again.stdout
    with open(tmp_path / "model" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5]
    # Checkpoints hold tensors and plain values only: they load without running code.
    for name in ("checkpoint.pt", "weights.pt"):
        torch.load(tmp_path / "model" / name, weights_only=True)

    finished = subprocess.run(
        _command(blob_data), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 2
    assert "a finished model exists" in finished.stderr
