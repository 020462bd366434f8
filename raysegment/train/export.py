"""Write the model directory: what ``raysegment infer model=<dir>`` and ``pretrained=`` read."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from raysegment.config import TrainConfig
from raysegment.modeldir import MODEL_META
from raysegment.train.components import NNUNET_ARCHITECTURES, model_for, unet_topology
from raysegment.train.data import TrainingSet
from raysegment.train.loop import history_csv, save_file

__all__ = ["TrainSummary", "export_model", "model_metadata", "plot_curves"]


@dataclass
class TrainSummary:
    output: str = ""
    epochs: int = 0
    best_epoch: int = 0
    best_val_loss: float = float("nan")
    metric: str = "iou"
    best_metric: float = float("nan")
    stopped_early: bool = False
    seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    resumed: list[int] = field(default_factory=list)
    """Epochs after which training resumed from a checkpoint (worker failure, rerun)."""
    layout: str = "channels_first"
    """The memory layout the workers trained in (the last run's, where it resumed)."""
    threads: int | None = None
    """Torch threads of each CPU worker (the last run's); None on GPU workers."""

    def __str__(self) -> str:
        stop = "early stop" if self.stopped_early else "max_epochs"
        if self.layout == "channels_last":
            stop += "; channels-last"
        if self.threads:
            stop += f"; {self.threads} thread{'s' if self.threads > 1 else ''} per worker"
        if self.resumed:
            stop += "; resumed after epoch " + ", ".join(map(str, self.resumed))
        return (
            f"raysegment: trained {self.epochs} epoch(s) ({stop}); best epoch {self.best_epoch}: "
            f"val_loss {self.best_val_loss:.4f}, {self.metric} {self.best_metric:.4f}; "
            f"{self.seconds:.1f} s -> {self.output}"
        )


def _class_names(data: TrainingSet) -> list[str]:
    if data.class_names:  # its length was checked against the labels by prepare()
        return list(data.class_names)
    if data.mode == "binary":
        return ["foreground"]
    if data.regions:
        return ["region_" + "+".join(map(str, r)) for r in data.regions]
    prefix = "class" if data.mode == "multiclass" else "label"
    return [f"{prefix}_{i}" for i in range(data.classes)]


def _pixel_size(data: TrainingSet) -> dict[str, Any]:
    """The pixel size trained at (``resample_size``, else the first image's at
    ``input_level``), where known; how the images were resampled to it where nnU-Net's
    scheme resampled them (``resampling``, which infer's ``resample=true`` follows)."""
    if data.pixel is not None:
        size, unit = data.pixel
        scheme = {"resampling": dict(data.resampling)} if data.resampling else {}
        return {"pixel_size": dict(size), "pixel_unit": unit, **scheme}
    info = data.pairs[0].image.info
    size = {axis: info.scale[axis] for axis in ("y", "x") if axis in info.scale}
    if not size:
        return {}
    return {"pixel_size": size, "pixel_unit": info.units.get("x", "")}


def _network(arch: str, features: int, data: TrainingSet) -> dict[str, Any]:
    """An nnU-Net network's width, strides and kernels, and the spacing they were planned
    for (``model.json``: ``pretrained=`` must match the network); nothing for a
    segmentation-models-pytorch model."""
    if arch not in NNUNET_ARCHITECTURES:
        return {}
    strides, kernels = unet_topology(data.patch, data.spacing)
    spacing = list(data.spacing) if data.spacing else None
    return {"features": features, "strides": strides, "kernels": kernels, "spacing": spacing}


def _tiles(arch: str, data: TrainingSet) -> dict[str, Any]:
    """The tiles infer gives an nnU-Net network: the training patch by default, any
    multiple of its strides along each axis (as an nnU-Net training's)."""
    if arch not in NNUNET_ARCHITECTURES:
        return {}
    steps = np.prod(unet_topology(data.patch, data.spacing)[0], axis=0)
    return {"patch_size": list(data.patch), "tile_steps": [[int(s), int(s)] for s in steps]}


def model_metadata(data: TrainingSet, arch: str = "Unet") -> dict[str, Any]:
    """What ``raysegment infer`` reads of a model ``arch`` trained on ``data``
    (``MODEL_META``)."""
    return {
        "in_channels": len(data.channels),
        "spatial_dims": len(data.patch),
        **_tiles(arch, data),
        "classes": _class_names(data),
        **({"class_codes": list(data.class_codes)} if data.class_codes else {}),
        **_pixel_size(data),
        # Each image's own normalization (nnU-Net's), or the training images' values.
        **(
            data.per_image.meta
            if data.per_image
            else {"normalize": {"mean": list(data.mean), "std": list(data.std)}}
        ),
        "activation": "softmax" if data.mode == "multiclass" else "sigmoid",
        # A case's channel files (nnU-Net's imagesTr): infer reads imagesTs' cases so.
        **({"channel_files": list(data.channel_files)} if data.channel_files else {}),
        # Its labels: each region's painted in order (nnU-Net's regions_class_order).
        **({"region_labels": list(data.region_labels)} if data.region_labels else {}),
    }


def plot_curves(history: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax1.plot(epochs, [r["val_loss"] for r in history], label="validation")
    ax1.set(xlabel="epoch", ylabel="loss", title="loss")
    ax1.legend()
    for name in ("iou", "fscore", "accuracy", "recall", "precision"):
        ax2.plot(epochs, [r[name] for r in history], label=name, lw=2.5 if name == metric else 1)
    ax2.set(xlabel="epoch", ylabel="validation metric", title="metrics", ylim=(0, 1.02))
    ax2.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def export_model(
    out: Path,
    cfg: TrainConfig,
    data: TrainingSet,
    state: dict[str, Any],
    config: dict[str, Any],
    version: str,
) -> TrainSummary:
    """The kept weights (``keep``: the best epoch's or the last's) as TorchScript + state
    dict, the resumable checkpoint, metrics.csv, config.yaml, curves PNG and the metadata
    infer reads."""
    out.mkdir(parents=True, exist_ok=True)
    in_channels = len(data.channels)
    model = model_for(cfg, data, weights=False)
    kept = state["best"]
    if cfg.keep == "last":  # channels-first whatever the layout trained in
        kept = {k: v.contiguous() for k, v in state["model"].items()}
    model.load_state_dict(kept)
    model.eval()
    example = torch.randn(1, in_channels, *data.patch)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent branches
        traced = torch.jit.trace(model, example)
        if not torch.allclose(traced(example), model(example), rtol=1e-4, atol=1e-4):
            raise RuntimeError(f"TorchScript trace of {cfg.model.arch} differs from the model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript stays the WIPP format
        save_file(torch.jit.save, traced, out / "model.pth")
    save_file(torch.save, kept, out / "weights.pt")
    save_file(torch.save, state, out / "checkpoint.pt")
    (out / "model.json").write_text(
        json.dumps(
            {
                "arch": cfg.model.arch,
                "encoder": cfg.model.encoder,
                **_network(cfg.model.arch, cfg.model.features, data),
                "in_channels": in_channels,
                "classes": data.classes,
                "mode": data.mode,
                **({"regions": [list(r) for r in data.regions]} if data.regions else {}),
                "patch_size": list(data.patch),
                "channels": list(data.channels),
                "input_level": cfg.input_level,
                **_pixel_size(data),
                "split": {
                    **({"folds": cfg.folds, "fold": cfg.fold} if cfg.folds > 1 else {}),
                    "train": [data.pairs[i].image.path for i in data.train],
                    "validation": [data.pairs[i].image.path for i in data.val],
                },
            },
            indent=2,
        )
    )
    (out / MODEL_META).write_text(json.dumps(model_metadata(data, cfg.model.arch), indent=2))
    history = list(state["history"])
    (out / "metrics.csv").write_text(history_csv(history))
    (out / "config.yaml").write_text(OmegaConf.to_yaml(config | {"raysegment_version": version}))
    plot_curves(history, cfg.metric, out / "training_curves.png")
    best = max(range(len(history)), key=lambda i: -history[i]["val_loss"])
    stopper = state["stopper"]
    return TrainSummary(
        output=str(out),
        epochs=len(history),
        best_epoch=int(stopper["best_epoch"]) + 1,
        best_val_loss=float(stopper["best"]),
        metric=cfg.metric,
        best_metric=float(history[best][cfg.metric]),
        stopped_early=len(history) < cfg.max_epochs and int(stopper["bad_epochs"]) >= cfg.patience,
        history=history,
        resumed=list(state.get("resumed", [])),
        layout=str(state.get("layout", "channels_first")),
        threads=state.get("threads"),
    )
