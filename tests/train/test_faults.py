"""Training faults: a worker that dies is restarted from the last checkpoint
(FailureConfig), and after a kill -9 of the whole run the same command resumes."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.faults import install

pytest.importorskip("segmentation_models_pytorch", reason="needs the train extra")

# In the training worker: each epoch that reaches validation is noted in
# RAYSEGMENT_TEST_DIR/epochs, and the first worker to validate epoch
# RAYSEGMENT_TEST_KILL_EPOCH (0-based) dies there, a few seconds later so that the reports
# made before have reached the controller.
PATCH = """
import os, time
update = m.EarlyStopping.update

def dying(self, loss, epoch):
    root = os.environ["RAYSEGMENT_TEST_DIR"]
    if epoch == int(os.environ["RAYSEGMENT_TEST_KILL_EPOCH"]):
        try:
            os.close(os.open(os.path.join(root, "killed"), os.O_CREAT | os.O_EXCL))
            time.sleep(3)
            os._exit(1)
        except FileExistsError:
            pass
    open(os.path.join(root, "epochs", str(epoch)), "w").close()
    return update(self, loss, epoch)

m.EarlyStopping.update = dying
"""


def _command(data: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "raysegment.cli",
        "train",
        f"images.dir={data / 'img'}",
        f"labels.dir={data / 'lbl'}",
        r"labels.pattern=(.*)_mask\.tif",
        "output=model",
        "patch_size=32",
        "patches_per_epoch=32",
        "val_patches=16",
        "batch_size=16",
        "max_epochs=7",
        "patience=50",
        "device=cpu",
    ]


def test_worker_death_and_kill_dash_9_resume_from_the_last_checkpoint(
    blob_data: Path, tmp_path: Path
) -> None:
    site = install(tmp_path / "site", "raysegment.train.loop", PATCH)
    (tmp_path / "epochs").mkdir()
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(site), os.getcwd()]),
        "PYTHONWARNINGS": "ignore",
        "RAYSEGMENT_TEST_DIR": str(tmp_path),
        "RAYSEGMENT_TEST_KILL_EPOCH": "2",
    }
    run = subprocess.Popen(
        _command(blob_data),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    # Epoch index 4 validated: the worker died in epoch index 2 and was restarted.
    while not (tmp_path / "epochs" / "4").exists():
        assert run.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline, "training made no progress"
        time.sleep(0.2)
    time.sleep(2.0)  # let the controller take in the report of epoch 4
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert (tmp_path / "killed").exists()
    assert not (tmp_path / "model" / "model.pth").exists()

    again = subprocess.run(
        _command(blob_data), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    assert "resuming the unfinished run" in again.stderr
    # Resumed twice: after the worker died (from epoch 2), after the kill (epoch 4 or 5).
    resumed = again.stdout.split("resumed after epoch ")[1].split(")")[0]
    first, second = (int(v) for v in resumed.split(", "))
    assert first == 2 and second >= 4, again.stdout
    with open(tmp_path / "model" / "metrics.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6, 7]
    # Checkpoints hold tensors and plain values only: they load without running code.
    for name in ("checkpoint.pt", "weights.pt"):
        torch.load(tmp_path / "model" / name, weights_only=True)

    finished = subprocess.run(
        _command(blob_data), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert finished.returncode == 2
    assert "a finished model exists" in finished.stderr
