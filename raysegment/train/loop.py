"""The per-worker training loop (Ray Train).

Every rank computes the same all-reduced validation loss, so every rank takes the same
early-stopping decision and learning rate (``raysegment.train.schedule``) and leaves the
loop at the same epoch.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from raysegment.compute import argmax, autocast, choose_layout, memory_format
from raysegment.runtime import node_cpus, quiet_ray_data
from raysegment.train.components import (
    OPTIMIZERS,
    DeepSupervision,
    build_model,
    make_loss,
    metric_values,
    supervise,
)
from raysegment.train.data import IGNORE, read_patches
from raysegment.train.schedule import EarlyStopping, learning_rate

__all__ = [
    "METRIC_COLUMNS",
    "READ_TASKS",
    "EarlyStopping",
    "forward",
    "place",
    "read_tasks",
    "train_loop",
    "train_step",
    "worker_threads",
]

METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "val_loss",
    "accuracy",
    "fscore",
    "iou",
    "precision",
    "recall",
    "lr",
    "patches",
    "seconds",
    "wait_seconds",
    "step_seconds",
)

READ_TASKS = 2
"""Tasks reading a CPU worker's patches at once (``read_tasks``' default there). Unbounded,
Ray Data started as many as the free CPUs allowed each epoch, and Ray stopped the idle
processes between epochs and started new ones the next (two a training row epoch, 0.6
CPU-s each, on 2 cores); a batch of 8 128^2 patches took 0.9 ms to read, a task's overhead
dwarfs it, so two keep a step's next batch coming (benchmarks/HISTORY.md, session 30)."""


def _stats(logits: torch.Tensor, target: torch.Tensor, mode: str, classes: int) -> torch.Tensor:
    """Summed (tp, fp, fn, tn) per class, shape (4, C), of the pixels labelled (targets
    ``IGNORE`` left out)."""
    import segmentation_models_pytorch as smp

    if mode == "multiclass":
        out, kw = argmax(logits, 1), {"num_classes": classes, "ignore_index": IGNORE}
        tp, fp, fn, tn = smp.metrics.get_stats(out, target, mode="multiclass", **kw)
        return torch.stack([tp.sum(0), fp.sum(0), fn.sum(0), tn.sum(0)]).double()
    # Binary and multilabel by hand: segmentation-models-pytorch leaves nothing out there.
    dims = (0, *range(2, target.ndim))
    labelled, truth, said = target != IGNORE, target == 1, logits >= 0  # sigmoid >= 0.5
    counts = [
        (said & truth & labelled).sum(dims),
        (said & ~truth & labelled).sum(dims),
        (~said & truth & labelled).sum(dims),
        (~said & ~truth & labelled).sum(dims),
    ]
    return torch.stack(counts).double()


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    assert isinstance(inner, torch.nn.Module)
    return inner


def _quiet_reports() -> None:
    """Ray Train's worker logs every report in full (a few hundred characters an epoch)
    through a logger named by its file, outside the ``ray.train`` loggers its
    ``LoggingConfig`` sets; the controller's ``EpochLines`` says it in one line."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # another Ray Train layout: its lines stay
        return
    context.logger.setLevel(logging.WARNING)


def worker_threads(asked: int | None, node_cpus: int, local_workers: int) -> int:
    """Torch threads of a CPU worker: ``asked``, or its node's cores shared among the
    node's ``local_workers``. Ray gives a worker as many threads as CPUs it reserves, at
    most one here (the trainer's ``worker_cpus``): a worker trained on one core whatever
    the machine had (2-core development machine, the training row: steps 5.3-5.6 s an
    epoch on one thread, 3.5-3.7 s on two with the reads capped, ``READ_TASKS``;
    benchmarks/HISTORY.md, session 30)."""
    return asked or max(1, node_cpus // max(local_workers, 1))


def read_tasks(asked: int | None, gpu: bool, node_cpus: int, local_workers: int) -> int:
    """Tasks reading a worker's patches at once: ``asked``; a CPU worker's ``READ_TASKS``
    (its steps use the cores); a GPU worker's share of its node's CPUs less one (its own
    process), at least ``READ_TASKS``: nnU-Net's 3D augmentations take a core ~30 ms a
    32 x 128^2 patch (``python benchmarks/train_augment.py``), a GPU's step far less."""
    if asked:
        return asked
    if not gpu:
        return READ_TASKS
    return max(READ_TASKS, node_cpus // max(local_workers, 1) - 1)


def forward(model: torch.nn.Module, x: torch.Tensor, precision: str) -> Any:
    """The model's logits, its convolutions and matmuls in ``precision`` (autocast),
    returned as float32 for the loss and the metrics (in the model's layout: every loss
    and metric gives the same value on channels-last logits); a list of them, every
    stage's, from a network under deep supervision (``supervise``)."""
    with autocast(x.device, precision):
        out = model(x)
    if isinstance(out, (list, tuple)):
        return [o.float() for o in out]
    return out.float()


def place(
    model: torch.nn.Module,
    patch: tuple[int, ...],
    device: torch.device,
    layout: str,
    precision: str,
) -> str:
    """Move ``model`` to ``device`` in its memory layout for patches of ``patch`` (C, y,
    x) and return the layout's name: ``choose_layout``'s rule, channels-last on CPUs and on
    GPUs under reduced precision (a Unet step 1.21x faster in float32, 1.49x in bfloat16
    on this project's CPU: ``python benchmarks/train_precision.py``). Its test forwards
    run in eval mode, leaving the batch norms' running statistics as they were."""
    return choose_layout(model.to(device).eval(), patch, device, layout, precision)


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    precision: str,
    scaler: torch.amp.GradScaler | None,
) -> float:
    """One optimizer step on a batch; returns its loss. float16 scales the loss so its
    small gradients do not flush to zero (``scaler``); the others step through a closure,
    which LBFGS needs."""
    if scaler is not None:
        optimizer.zero_grad()
        loss = loss_fn(forward(model, x, precision), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return float(loss.detach())

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(forward(model, x, precision), y)
        loss.backward()
        return loss

    return float(torch.as_tensor(optimizer.step(closure)).detach())  # type: ignore[arg-type]


def patch_batches(specs: list[dict[str, int]], config: dict[str, Any]) -> Any:
    """A Ray Data dataset reading the patches ``specs`` name (``read_patches``, augmented
    where ``config["augment"]`` says and the specs are random crops).

    Made by each worker for each epoch rather than given to Ray Train once: a dataset
    given once is read alike every epoch, so the same patches would train every epoch
    (``patches_per_epoch`` of a large slide would be all the model ever saw)."""
    import ray.data

    dataset: Any = ray.data.from_items(specs)  # Ray Data's stubs do not take fn_kwargs' functions
    return dataset.map_batches(
        read_patches,
        batch_size=config["batch_size"],
        num_cpus=0.25,  # the workers leave room for them (the trainer's ``worker_cpus``)
        compute=ray.data.TaskPoolStrategy(size=config["read_tasks"]),
        fn_kwargs={"data": config["data"], "augment": config["augment"]},
    )


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train ``train_loop_per_worker``: config holds the trainer's settings and the
    ``TrainingSet`` (``data``) the workers draw their patches from."""
    import ray.data
    import ray.train
    import ray.train.torch

    _quiet_reports()
    torch.manual_seed(config["seed"])
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    device = ray.train.torch.get_device()
    node, local = node_cpus(ray.get_runtime_context().get_node_id()), ctx.get_local_world_size()
    if device.type == "cpu":  # Ray set as many threads as CPUs reserved: one
        torch.set_num_threads(worker_threads(config["threads"], node, local))
    tasks = read_tasks(config["read_tasks"], device.type == "cuda", node, local)
    config = {**config, "read_tasks": tasks}
    mode, classes, precision = config["mode"], config["classes"], config["precision"]
    quiet_ray_data()
    # Batches in their specs' order (else as Ray Data's read tasks finish): the same
    # command trains alike.
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    data, batch_size, world = config["data"], config["batch_size"], ctx.get_world_size()
    resume = ray.train.get_checkpoint()
    resume_dir = Path(config["pretrained"]) if config.get("pretrained") else None
    if resume is not None:
        with resume.as_directory() as d:
            state = torch.load(Path(d) / "last.pt", map_location="cpu", weights_only=True)
    elif resume_dir is not None:
        state = torch.load(resume_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    else:
        state = None
    if resume is not None and state is not None and _finished(state, config):
        # A run killed after its last epoch (or its early stop), before its model was
        # written: nothing is left to train (another epoch would change what an
        # uninterrupted run gives). Its checkpoint again, with this run's resume, for the
        # export; the epoch line is not printed twice (``again``).
        threads = torch.get_num_threads() if device.type == "cpu" else None
        resumed = [*state.get("resumed", []), int(state["epoch"])]
        again = {**state, "resumed": resumed, "threads": threads}
        _report({**state["history"][-1], "again": True}, again if rank == 0 else None)
        return
    # Each worker reads its part of the validation grid once (the same patches every
    # epoch, kept in Ray's object store; the sums are all-reduced), while the model is
    # built: Ray Data starts its read processes as segmentation-models-pytorch is imported.
    reading = ThreadPoolExecutor(1, thread_name_prefix="raysegment-val")
    val_read = reading.submit(
        lambda: patch_batches(
            data.val_specs(config["val_patches"])[rank::world], config
        ).materialize()
    )
    reading.shutdown(wait=False)
    model = build_model(
        config["arch"],
        config["encoder"],
        config["in_channels"],
        classes,
        config["weights"],
        tuple(config["patch"]),
        config["features"],
        config["spacing"],
    )
    start_epoch, history, best_state, resumed = 0, [], None, []
    stopper = EarlyStopping(config["patience"], config["min_delta"])
    optimizer_state = None
    if state is not None:
        model.load_state_dict(state["model"])
        if resume is not None or not config["finetune"]:
            optimizer_state = state["optimizer"]
            start_epoch = int(state["epoch"])
            stopper.load_state_dict(state["stopper"])
            history = list(state["history"])
            best_state = state["best"]
        if resume is not None:  # after a worker failure or a rerun of a killed run
            resumed = [*state.get("resumed", []), start_epoch]
    layout = place(
        model, (config["in_channels"], *config["patch"]), device, config["layout"], precision
    )
    memory = memory_format(layout, len(config["patch"]))
    # nnU-Net's networks: each decoder stage's logits in the loss while training (deep
    # supervision); without it, its coarser stages' output convolutions are unused, which
    # DistributedDataParallel must be told of.
    staged = supervise(model, False)
    deep = staged and bool(config["deep_supervision"])
    unused = {"find_unused_parameters": True} if staged and not deep else None
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs=unused)
    optimizer = OPTIMIZERS.get(config["optimizer"])(model.parameters(), config["lr"])
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    scaler = torch.amp.GradScaler(device.type) if precision == "float16" else None
    if scaler is not None and state is not None and state.get("scaler") and resume is not None:
        scaler.load_state_dict(state["scaler"])
    loss_fn = make_loss(config["loss"], mode, data.ignore is not None)
    if deep:
        loss_fn = DeepSupervision(loss_fn)
    val_batches = val_read.result()

    for epoch in range(start_epoch, config["max_epochs"]):
        started = time.perf_counter()
        rate = learning_rate(
            config["lr_schedule"],
            config["lr"],
            epoch,
            config["max_epochs"],
            [row["val_loss"] for row in history],
            config["min_delta"],
        )
        for group in optimizer.param_groups:  # a resumed optimizer's saved rate included
            group["lr"] = rate
        model.train()
        supervise(model, deep)
        sums = torch.zeros(4, dtype=torch.float64)  # train loss, train n, val loss, val n
        specs = data.worker_specs(
            config["patches_per_epoch"], config["seed"], epoch, rank, world, batch_size
        )
        train_batches = patch_batches(specs, config)
        batches = iter(train_batches.iter_torch_batches(batch_size=batch_size, device=device))
        # The steps' wait for patches (what the readers fall behind by), and the steps.
        waited = stepped = 0.0
        while True:
            asked = time.perf_counter()
            batch = next(batches, None)
            got = time.perf_counter()
            waited += got - asked
            if batch is None:
                break
            x, y = batch["x"].contiguous(memory_format=memory), batch["y"]
            sums[0] += train_step(model, optimizer, loss_fn, x, y, precision, scaler) * len(x)
            sums[1] += len(x)
            stepped += time.perf_counter() - got  # train_step's float(loss) waits for them
        model.eval()
        supervise(model, False)  # the full resolution's logits: the loss early stopping reads
        stats = torch.zeros(4, classes, dtype=torch.float64)
        with torch.no_grad():
            for batch in val_batches.iter_torch_batches(batch_size=batch_size, device=device):
                x, y = batch["x"].contiguous(memory_format=memory), batch["y"]
                logits = forward(model, x, precision)
                sums[2] += float(loss_fn(logits, y)) * len(x)
                sums[3] += len(x)
                stats += _stats(logits, y, mode, classes).cpu()
        sums, stats = _all_reduce(sums.to(device)).cpu(), _all_reduce(stats.to(device)).cpu()
        val_loss = float(sums[2]) / max(float(sums[3]), 1.0)
        improved, stop = stopper.update(val_loss, epoch)
        row = {
            "epoch": epoch + 1,
            "train_loss": float(sums[0]) / max(float(sums[1]), 1.0),
            "val_loss": val_loss,
            **metric_values(stats),
            "lr": optimizer.param_groups[0]["lr"],
            "patches": int(sums[1]),  # trained on, every worker's
            "seconds": time.perf_counter() - started,
            "wait_seconds": waited,
            "step_seconds": stepped,
        }
        history.append(row)
        if improved or best_state is None:
            best_state = {  # channels-first whatever the layout: weights.pt is exported as is
                k: v.detach().cpu().clone(memory_format=torch.contiguous_format)
                for k, v in _unwrap(model).state_dict().items()
            }
        metrics = {
            **row,
            "best_val_loss": stopper.best,
            "best_epoch": stopper.best_epoch + 1,
            "stopped": stop,
        }
        checkpoint = None
        if rank == 0:
            checkpoint = {
                "model": _unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "stopper": stopper.state_dict(),
                "history": history,
                "best": best_state,
                "resumed": resumed,
                "layout": layout,
                "threads": torch.get_num_threads() if device.type == "cpu" else None,
                "scaler": scaler.state_dict() if scaler is not None else None,
            }
        _report(metrics, checkpoint)
        if stop:
            break


def _finished(state: dict[str, Any], config: dict[str, Any]) -> bool:
    """Whether the run of checkpoint ``state`` had trained its last epoch: its
    ``max_epochs``, or an early stop (the same ``patience``: the settings of a resumed
    run are its own)."""
    stopper = EarlyStopping(config["patience"], config["min_delta"])
    stopper.load_state_dict(state["stopper"])
    return int(state["epoch"]) >= config["max_epochs"] or stopper.stopped


def _report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """``ray.train.report`` of an epoch's ``metrics`` by every worker, rank 0's with its
    checkpoint ``state`` (the others': None). Uploaded to Ray Train's storage by a thread
    of Ray's while the next epoch runs, then removed (ASYNC): an epoch waited ~0.7 s for
    each copy of a resnet18 Unet's 230 MB (weights, Adam's moments, the best weights)."""
    import ray.train

    checkpoint = None
    if state is not None:
        local = tempfile.mkdtemp(prefix="raysegment-checkpoint-")
        save_file(torch.save, state, Path(local) / "last.pt")
        checkpoint = ray.train.Checkpoint.from_directory(local)
    ray.train.report(
        metrics, checkpoint=checkpoint, checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC
    )


def save_file(save: Callable[[Any, Any], None], obj: Any, path: Path) -> None:
    """``save(obj, file)`` (``torch.save``, ``torch.jit.save``) into memory, then into
    ``path`` with Python's file I/O: on a full disk torch's own file writer raised a
    RuntimeError that does not say why (``torch.save``, "unexpected pos 576 vs 534") or
    aborted the whole process (``torch.jit.save``: its writer threw again while unwinding);
    Python's raises the disk's error (ENOSPC), which the command reports in one line."""
    buffer = io.BytesIO()
    save(obj, buffer)
    path.write_bytes(buffer.getbuffer())


def history_csv(history: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(METRIC_COLUMNS), extrasaction="ignore")
    writer.writeheader()
    for row in history:
        writer.writerow(row)
    return out.getvalue()
