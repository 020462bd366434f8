"""``raysegment train``: image/label pairs -> Ray Train TorchTrainer -> a model directory
that ``raysegment infer`` takes as is."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from raysegment import storage
from raysegment._version import __version__
from raysegment.compute import slow_precision
from raysegment.config import Precision, TrainConfig, as_config, config_to_dict
from raysegment.errors import ConfigError, OutputError
from raysegment.runtime import (
    import_ray_data,
    model_runtime_env,
    start_ray_while,
    stop_ray,
)
from raysegment.train.components import (
    NNUNET_ARCHITECTURES,
    check_combination,
    check_encoder,
    make_loss,
    model_for,
    model_name,
    unet_topology,
)
from raysegment.train.data import TrainingSet, prepare
from raysegment.train.export import TrainSummary, export_model
from raysegment.train.loop import train_loop

__all__ = ["TrainSummary", "train"]

log = logging.getLogger("raysegment")

_RESUMES = "it resumes from its last checkpoint"
"""What the same command does after a storage error met mid-run."""


def _worker_batch(cfg: TrainConfig, data: TrainingSet, use_gpu: bool) -> int:
    """Patches per step per worker: ``batch_size``, else nnU-Net's planned batch (``plan``:
    the whole step's, shared out among the workers, rounded up), else ``_auto_batch_size``."""
    if cfg.batch_size:
        return cfg.batch_size
    if data.batch:
        return -(-data.batch // cfg.num_workers)
    return _auto_batch_size(cfg, data, use_gpu)


def _epoch_patches(cfg: TrainConfig, batch_size: int) -> int:
    """Training patches an epoch: ``steps_per_epoch`` batches of ``batch_size`` on each
    worker (nnU-Net's epochs), else ``patches_per_epoch``."""
    if cfg.steps_per_epoch:
        return cfg.steps_per_epoch * batch_size * cfg.num_workers
    return cfg.patches_per_epoch


def _auto_batch_size(cfg: TrainConfig, data: TrainingSet, use_gpu: bool) -> int:
    """Patches per step: measured on one GPU, else a CPU-friendly size within free RAM."""
    patch = (len(data.channels), *data.patch)
    if use_gpu and torch.cuda.is_available():
        model = model_for(cfg, data, weights=False).cuda()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        model(torch.zeros((2, *patch), device="cuda")).sum().backward()
        per = max((torch.cuda.max_memory_allocated() - base) / 2, 1)
        free, _ = torch.cuda.mem_get_info()
        del model
        return int(np.clip(0.5 * free // per, 2, 64))
    import psutil

    per = 4 * 200 * int(np.prod(patch))  # ~200 float32 activations per input value
    return int(np.clip(psutil.virtual_memory().available // 4 // per, 2, 16))


def _probe(cfg: TrainConfig, data: TrainingSet) -> None:
    """Build the model and run one patch through it before any worker starts."""
    make_loss(cfg.loss, data.mode, data.ignore is not None)  # MCCLoss cannot leave pixels out
    _check_pretrained_network(cfg, data)
    model = model_for(cfg, data)
    model.eval()
    shape = (2, len(data.channels), *data.patch)
    try:
        with torch.no_grad():
            out = model(torch.zeros(shape))
    except Exception as e:
        raise ConfigError(
            f"model.arch={cfg.model.arch} with {cfg.model.encoder} fails on patches of "
            f"{list(data.patch)} ({type(e).__name__}: {str(e).splitlines()[0][:160]}); choose "
            f"patch_size divisible by 32 (or what the architecture needs)"
        ) from e
    if tuple(out.shape[2:]) != data.patch:
        raise ConfigError(
            f"model.arch={cfg.model.arch} returns {list(out.shape[2:])} for patches of "
            f"{list(data.patch)}; choose patch_size divisible by 32"
        )


_STATE = ".raysegment/train.json"
"""In the output: the settings' fingerprint and whether the run finished."""
_FREE_KEYS = (
    "overwrite",
    "max_failures",
    "num_workers",
    "device",
    "layout",
    "threads",
    "read_tasks",
    "keep",
)
"""Keys a resumed run may change: they do not change what is trained (``keep``: which
epoch's weights the model directory takes; ``layout`` and
``threads``: float rounding only, as a device's kernels do; ``read_tasks``: the patches
reach the model in their order whoever reads them)."""


_LATER_KEYS = {
    "oversample_foreground": 0.33,
    "model.deep_supervision": True,
    "resample_to": None,
    "resampling": "linear",
    "plan": None,
    "plan_gpu_gb": 8.0,
    "normalization": "dataset",
    "steps_per_epoch": None,
    "oversample_by": "patch",
}
"""Keys added since the first fingerprints (dotted: nested), left out of them at these
defaults: a run begun before a key existed resumes (from then on with the key's default)."""
_NNUNET_KEYS = ("features", "deep_supervision")
"""``model`` keys of nnU-Net's networks alone: left out of an SMP model's fingerprint."""


def _fingerprint(cfg: TrainConfig) -> str:
    config = {k: v for k, v in config_to_dict(cfg).items() if k not in _FREE_KEYS}
    for key, default in _LATER_KEYS.items():
        *parents, leaf = key.split(".")
        holder = config
        for parent in parents:
            holder = holder[parent]
        if holder.get(leaf, default) == default:
            holder.pop(leaf, None)
    if cfg.model.arch not in NNUNET_ARCHITECTURES:
        config["model"] = {k: v for k, v in config["model"].items() if k not in _NNUNET_KEYS}
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _check_output(cfg: TrainConfig) -> tuple[Path, bool]:
    """Refuse an output this run may not write, changing nothing; returns (output,
    resuming). Cheap: ``train`` runs it before Ray starts, so a refusal comes at once."""
    out = Path(cfg.output).resolve()
    if cfg.pretrained and Path(cfg.pretrained).resolve() == out:
        raise ConfigError("pretrained= and output= are the same directory; write elsewhere")
    if cfg.overwrite or not out.exists() or not any(out.iterdir()):
        return out, False
    try:
        state = json.loads((out / _STATE).read_text())
    except (OSError, ValueError):
        raise OutputError(
            f"{out}: exists and is not empty; set overwrite=true to replace it"
        ) from None
    if state.get("status") == "complete":
        raise OutputError(
            f"{out}: a finished model exists; set overwrite=true to replace it, or "
            f"pretrained={out} with another output= to train it further"
        )
    if state.get("fingerprint") != _fingerprint(cfg):
        raise OutputError(
            f"{out}: an unfinished training run with other settings exists; rerun with "
            f"the same settings to resume it, or set overwrite=true to replace it"
        )
    return out, True


def _prepare_output(cfg: TrainConfig, out: Path, resuming: bool) -> None:
    """Create the output ``_check_output`` accepted (emptied with ``overwrite``), unless
    the run resumes in it."""
    if resuming:
        return
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    (out / _STATE).parent.mkdir(parents=True, exist_ok=True)
    (out / _STATE).write_text(json.dumps({"status": "training", "fingerprint": _fingerprint(cfg)}))


def _check_pretrained(cfg: TrainConfig) -> None:
    if not cfg.pretrained:
        return
    meta = Path(cfg.pretrained) / "model.json"
    if not (Path(cfg.pretrained) / "checkpoint.pt").is_file() or not meta.is_file():
        raise ConfigError(
            f"pretrained={cfg.pretrained}: not a raysegment train output (no checkpoint.pt / "
            f"model.json); give the output= directory of an earlier run"
        )
    if not cfg.finetune:  # its epochs go on: from the last it trained
        history = Path(cfg.pretrained) / "metrics.csv"
        done = len(history.read_text().splitlines()) - 1 if history.is_file() else 0
        if cfg.max_epochs <= done:
            raise ConfigError(
                f"pretrained={cfg.pretrained} trained {done} epoch(s) and max_epochs="
                f"{cfg.max_epochs} adds none; give max_epochs above {done} to train it "
                f"further, or finetune=true to count its epochs anew"
            )
    old = json.loads(meta.read_text())
    nnunet = old["arch"] in NNUNET_ARCHITECTURES
    width = "features" if nnunet else "encoder"
    was = {"arch": old["arch"], width: old.get(width)}
    if was != {"arch": cfg.model.arch, width: getattr(cfg.model, width)}:
        name = model_name(old["arch"], old["encoder"], old.get("features", 0))
        settings = " ".join(f"model.{k}={v}" for k, v in was.items())
        raise ConfigError(f"pretrained={cfg.pretrained} is a {name}; set {settings}")


def _check_pretrained_network(cfg: TrainConfig, data: TrainingSet) -> None:
    """An nnU-Net network continued by ``pretrained=`` has the strides and kernels it had:
    its patch and its voxels' spacing shape them (weights of other strides would load)."""
    if not cfg.pretrained or cfg.model.arch not in NNUNET_ARCHITECTURES:
        return
    old = json.loads((Path(cfg.pretrained) / "model.json").read_text())
    strides, kernels = unet_topology(data.patch, data.spacing)
    if [strides, kernels] != [old["strides"], old["kernels"]]:
        raise ConfigError(
            f"pretrained={cfg.pretrained} was trained on patches of {old['patch_size']} of "
            f"voxels of {old['spacing']} µm (strides {old['strides']}, kernels "
            f"{old['kernels']}); these patches of {list(data.patch)} and voxels of "
            f"{list(data.spacing) if data.spacing else None} µm give another network; give "
            f"patch_size={old['patch_size']} and images like those"
        )


def _use_gpu(cfg: TrainConfig) -> bool:
    """Whether the workers take GPUs, from ``device`` and the GPUs Ray sees; raises
    ConfigError where the settings need GPUs Ray does not have."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = cfg.device == "gpu" or (cfg.device == "auto" and gpus > 0)
    if use_gpu and gpus < cfg.num_workers:
        raise ConfigError(f"device=gpu with num_workers={cfg.num_workers}: Ray sees {gpus} GPU(s)")
    if cfg.precision == Precision.float16 and not use_gpu:
        raise ConfigError(
            f"precision=float16 trains on GPUs and Ray sees {gpus}; choose "
            f"precision=bfloat16 or float32 for CPU workers"
        )
    return use_gpu


def _storage(cfg: TrainConfig, out: Path) -> str:
    """Ray Train's storage: a URL as given, a local path made absolute (workers on other
    nodes resolve it the same way)."""
    if cfg.storage_path and "://" in cfg.storage_path:
        return cfg.storage_path
    return str(Path(cfg.storage_path).resolve() if cfg.storage_path else out / "ray_train")


def train(
    config: TrainConfig | Mapping[str, Any] | None = None,
    callbacks: list[Any] | None = None,
    **overrides: Any,
) -> TrainSummary:
    """Train a segmentation model and write the model directory to ``output``.

    Args:
        config: a ``TrainConfig`` or a mapping of its keys; ``overrides`` are set on top.
        callbacks: extra ``ray.train.UserCallback`` objects (they run in the controller).

    Raises:
        RaySegmentError: bad names or combinations, unpaired or inconsistent data, existing
            output (all before any training starts; nothing half-written is left).
    """
    import ray

    cfg = as_config(TrainConfig, config, overrides)
    started = time.perf_counter()
    check_combination(cfg)
    _check_pretrained(cfg)
    # Refused before Ray starts (~5 s here); created once every check has passed.
    out, resuming = _check_output(cfg)

    def setup() -> TrainingSet:
        # The encoder's name is checked against segmentation-models-pytorch's, whose import
        # (4.4 s here) and Ray Train's (1.2 s) come first in this thread: done before
        # ray.init, they had delayed Ray's start by 7.6 s.
        if cfg.model.arch not in NNUNET_ARCHITECTURES:
            check_encoder(cfg.model.encoder)
        import ray.train.torch  # noqa: F401

        import_ray_data()

        data = prepare(cfg)
        _probe(cfg, data)
        return data

    # Ray starts while the data are checked and the model is built.
    own_ray, data = start_ray_while(setup)
    import ray.train
    from ray.train.torch import TorchTrainer

    from raysegment.train.progress import EpochLines

    if resuming:
        log.warning("raysegment: resuming the unfinished run in %s from its last checkpoint", out)
    try:
        use_gpu = _use_gpu(cfg)
        _prepare_output(cfg, out, resuming)
        if not use_gpu and slow_precision(torch.device("cpu"), cfg.precision.value):
            log.warning(
                "raysegment: precision=%s on a CPU without its fast kernels (oneDNN needs "
                "AVX-512 or ARM's bf16): slower than float32",
                cfg.precision.value,
            )
        batch_size = _worker_batch(cfg, data, use_gpu)
        # On CPU the workers must leave room for the tasks reading their patches, or
        # neither can start: give each worker a share of the CPUs and reads a quarter CPU.
        # At most one, though a worker computes on more (``threads``, set in the loop):
        # reserving 1.5 of 2 CPUs, the 2-core development machine's training row took
        # 8.8 s of steps an epoch against 3.4-4.9 s, Ray stopping each read task's idle
        # process and starting a new one for the next batch (benchmarks/HISTORY.md).
        cpus = float(ray.cluster_resources().get("CPU", 1))
        worker_cpus = 1.0 if use_gpu else min(1.0, (cpus - 0.5) / cfg.num_workers)
        loop_config = {
            "seed": cfg.seed,
            "mode": data.mode,
            "classes": data.classes,
            "arch": cfg.model.arch,
            "encoder": cfg.model.encoder,
            "features": cfg.model.features,
            "deep_supervision": cfg.model.deep_supervision,
            "spacing": data.spacing,
            "in_channels": len(data.channels),
            "weights": cfg.model.weights,
            "optimizer": cfg.optimizer,
            "lr": cfg.lr,
            "lr_schedule": cfg.lr_schedule,
            "precision": cfg.precision.value,
            "layout": cfg.layout.value,
            "threads": cfg.threads,
            "read_tasks": cfg.read_tasks,
            "patch": list(data.patch),
            "loss": cfg.loss,
            "batch_size": batch_size,
            "data": data,
            "augment": cfg.augment,
            "patches_per_epoch": _epoch_patches(cfg, batch_size),
            "val_patches": cfg.val_patches,
            "max_epochs": cfg.max_epochs,
            "patience": cfg.patience,
            "min_delta": cfg.min_delta,
            "finetune": cfg.finetune,
            "pretrained": str(Path(cfg.pretrained).resolve()) if cfg.pretrained else None,
        }
        trainer = TorchTrainer(
            train_loop,
            train_loop_config=loop_config,
            scaling_config=ray.train.ScalingConfig(
                num_workers=cfg.num_workers,
                use_gpu=use_gpu,
                resources_per_worker={"CPU": worker_cpus, **({"GPU": 1} if use_gpu else {})},
            ),
            # Train V2's RunConfig (Ray's default); its type stubs name V1's.
            run_config=ray.train.RunConfig(  # type: ignore[call-arg]
                name="run",
                storage_path=_storage(cfg, out),
                checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
                worker_runtime_env=model_runtime_env(own_ray),
                # Restarts the workers from the last checkpoint; a rerun of the same
                # command after the driver died resumes from it too (same storage_path).
                failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
                callbacks=[EpochLines(cfg.max_epochs), *(callbacks or [])],  # type: ignore[list-item]
                # Ray Train's INFO lines ("Checkpoint successfully created ..." per epoch;
                # the worker's "Reporting training result ..." is quieted in the loop, its
                # logger lies outside ray.train's): EpochLines prints one short line.
                logging_config=ray.train.LoggingConfig(log_level="WARNING"),
            ),
        )
        try:
            result = trainer.fit()
        except ray.train.TrainingFailedError as e:
            # A full disk under the checkpoints, say (after Ray Train's retries): one line.
            key = "storage_path" if cfg.storage_path else "output"
            # Ray Train hands each worker's error back wrapped, its traceback as text.
            failures = getattr(e, "worker_failures", {}).values()
            causes = [getattr(f, "_base_exc", f) for f in failures]
            where = _storage(cfg, out)
            errors = (
                storage.storage_error(c, where, "a checkpoint", _RESUMES, key) for c in causes
            )
            error = next((err for err in errors if err is not None), None)
            if error is None:
                raise
            raise error from e
    finally:
        stop_ray(own_ray)
    if result.checkpoint is None:
        raise RuntimeError(f"training finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "last.pt", map_location="cpu", weights_only=True)
    with storage.storage_errors(out, "the model", _RESUMES):
        summary = export_model(out, cfg, data, state, config_to_dict(cfg), __version__)
    (out / _STATE).write_text(json.dumps({"status": "complete", "fingerprint": _fingerprint(cfg)}))
    summary.seconds = time.perf_counter() - started
    return summary
