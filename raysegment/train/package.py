"""``raysegment package``: a model directory ``raysegment train`` wrote as a BioImage Model
Zoo package (format 0.5), which bioimage.io takes, and Fiji's deepImageJ, ilastik, QuPath
and bioimageio.core run (``raysegment infer`` too: ``infer.zoo``).

The package holds the TorchScript weights; the normalization the model was trained with
as its preprocessing (a fixed mean and deviation a channel); its activation (sigmoid or
softmax) as its postprocessing; the sizes it takes (``min + n * step``, the smallest step
of 16, 32, 64 or 128 that the model is found to take, else the training patch alone);
the pixel trained at; the class names; a test input cut from one of its images and the
output the package's own processing gives for it; a README of its training; and the
training's config, metrics and curves as attachments.
"""

from __future__ import annotations

import hashlib
import io
import json
import string
import zipfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from raysegment._version import __version__
from raysegment.config import PackageConfig, as_config
from raysegment.errors import ConfigError, InputImageError, ModelLoadError, OutputError
from raysegment.infer.model import (
    describe_model,
    load_model,
    probe_model,
    read_model_file,
    tiles_taken,
)
from raysegment.infer.zoo import RAYSEGMENT_KEYS
from raysegment.modeldir import MODEL_META
from raysegment.train.components import NNUNET_ARCHITECTURES

__all__ = ["FORMAT_VERSION", "package"]

FORMAT_VERSION = "0.5.4"
"""The BioImage Model Zoo format the package is written in."""

_WEIGHTS = "weights_torchscript.pt"
_STEPS = (16, 32, 64, 128)
_EPS = 1e-6
"""What bioimage.io adds to a fixed deviation (``fixed_zero_mean_unit_variance``)."""
_UNITS = ("angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter")
_ATTACHED = ("config.yaml", "metrics.csv", "training_curves.png")
_CITE = {
    "text": "segmentation_models_pytorch",
    "url": "https://github.com/qubvel-org/segmentation_models.pytorch",
}
_CITE_NNUNET = {
    "text": "Isensee et al., nnU-Net: a self-configuring method for deep learning-based "
    "biomedical image segmentation, Nature Methods 18, 203-211 (2021)",
    "doi": "10.1038/s41592-020-01008-z",
}


def package(config: PackageConfig | dict[str, Any] | None = None, **overrides: Any) -> Path:
    """Write the package of ``config.model`` (a ``PackageConfig`` or its keys) to
    ``config.output``; return its path.

    Raises:
        ConfigError: no authors, an output that is no ``.zip``, no test input to read.
        ModelLoadError: the model directory is not one ``raysegment train`` wrote.
        OutputError: the output exists (``overwrite=true`` replaces it).
    """
    import torch

    cfg = as_config(PackageConfig, config, overrides)
    directory = Path(cfg.model)
    files = {name: directory / name for name in ("model.pth", MODEL_META, "model.json")}
    missing = [name for name, f in files.items() if not f.is_file()]
    if missing:
        raise ModelLoadError(
            f"{directory}: no {', '.join(missing)}; give model= a directory raysegment train wrote"
        )
    if not cfg.authors:
        raise ConfigError(
            "authors=[]: a BioImage Model Zoo package names its authors; give "
            "authors='[Your Name]' (several: '[A. Name, B. Name]')"
        )
    out = Path(cfg.output)
    if out.suffix != ".zip":
        raise ConfigError(f"output={cfg.output}: a package is a .zip; e.g. output={out}.zip")
    if out.exists() and not cfg.overwrite:
        raise OutputError(f"{out} exists; choose another output= or set overwrite=true")
    info = json.loads(files["model.json"].read_text())
    model = read_model_file(str(directory))  # model.pth, with raysegment.json as its meta
    meta, weights = model.meta, model.data
    if "nonzero" in meta:
        raise ModelLoadError(
            f"{directory}: trained with normalization=nnunet (each image cropped to its "
            f"nonzero box and normalized by its own values), which a BioImage Model Zoo "
            f"package cannot describe; package a model trained with normalization=dataset"
        )
    module = load_model(model)
    patch = [int(p) for p in info["patch_size"]]
    if meta.get("tile_steps"):  # nnU-Net's networks: multiples of their strides
        sizes: list[Any] = [{"min": int(m), "step": int(s)} for m, s in meta["tile_steps"]]
    else:
        spec = probe_model(model, module, describe_model(model, module), (patch[0], patch[-1]))
        sizes = _sizes(tiles_taken(model, module, spec), patch)
    raw = _test_input(cfg, info, sizes)
    mean = np.asarray(meta["normalize"]["mean"], np.float32).reshape(-1, *[1] * len(patch))
    std = np.asarray(meta["normalize"]["std"], np.float32).reshape(-1, *[1] * len(patch))
    softmax = meta.get("activation") == "softmax"
    with torch.inference_mode():
        x = torch.from_numpy((raw - mean) / (std + np.float32(_EPS)))
        logits = module(x)
        result = (torch.softmax(logits, dim=1) if softmax else torch.sigmoid(logits)).numpy()
    parts: dict[str, bytes] = {_WEIGHTS: weights}
    for name, array in (("test_input.npy", raw), ("test_output.npy", result)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        parts[name] = buffer.getvalue()
    parts["README.md"] = _readme(cfg, directory, meta, info).encode()
    attached = [name for name in _ATTACHED if (directory / name).is_file()]
    for name in attached:
        parts[name] = (directory / name).read_bytes()
    rdf = _description(cfg, directory, meta, info, sizes, parts, softmax, torch.__version__)
    rdf["attachments"] = [{"source": name, "sha256": _sha(parts[name])} for name in attached]
    import yaml

    parts["rdf.yaml"] = yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True).encode()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    partial.replace(out)  # never half a package at ``out``
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sizes(takes: Callable[[tuple[int, ...]], bool], patch: list[int]) -> list[Any]:
    """Per spatial axis, the sizes the model takes: {min, step} with the smallest step of
    ``_STEPS`` whose first three sizes it ``takes`` (``model.tiles_taken``: returns them
    whole, as bioimage.io tests them), else the training patch's size alone."""
    for step in _STEPS:
        if all(takes((step * n, step * n)) for n in (1, 2, 3)):
            return [{"min": step, "step": step}] * 2
    return [patch[0], patch[-1]]


def _fitted(length: int, size: Any) -> int:
    """The largest size the model takes up to ``length`` (0: none)."""
    if isinstance(size, int):
        return size if size <= length else 0
    low, step = size["min"], size["step"]
    return 0 if length < low else low + (length - low) // step * step


def _test_input(cfg: PackageConfig, info: dict[str, Any], sizes: list[Any]) -> np.ndarray:
    """The centre of ``cfg.test_input`` (default: the model's first validation image) at
    the level trained at, a training patch's size or the largest the model takes within
    the image: (1, C, y, x) float32, as read; a 3D model's (1, C, z, y, x)."""
    from raysegment.data.sources import open_sources

    split = info.get("split", {})
    given = cfg.test_input
    path = given or next(iter(split.get("validation", []) + split.get("train", [])), None)
    if path is None:
        raise ConfigError(f"{cfg.model}: lists no training images; give test_input=an image")
    try:
        source = open_sources(path, None, int(info.get("input_level") or 0))[0]
    except InputImageError as e:
        if given:
            raise
        raise ConfigError(
            f"{cfg.model}: its validation image {path} cannot be read ({e}); give "
            f"test_input=an image like those it was trained on"
        ) from e
    shape = source.info.shape[5 - len(sizes) :]  # (y, x), or (z, y, x)
    patch = info["patch_size"]
    lengths = zip((patch[0], patch[-1]) if len(sizes) == 2 else patch, shape, sizes, strict=True)
    want = [_fitted(min(p, n), size) for p, n, size in lengths]
    if not all(want):
        raise ConfigError(
            f"{path}: {' x '.join(map(str, shape))} pixels, smaller than the model's smallest "
            f"tile; give test_input=a larger image"
        )
    starts = [(n - w) // 2 for n, w in zip(shape, want, strict=True)]
    spans = [(a, a + w) for a, w in zip(starts, want, strict=True)]
    z = source.info.shape[2]
    region = tuple(spans) if len(sizes) == 3 else ((z // 2, z // 2 + 1), *spans)
    data = source.read(0, tuple(info["channels"]), region)  # type: ignore[arg-type]  # (C, z, y, x)
    return (data if len(sizes) == 3 else data[:, 0])[None].astype(np.float32)


def _space(sizes: list[Any], meta: dict[str, Any], output: bool) -> list[dict[str, Any]]:
    pixel, unit = meta.get("pixel_size") or {}, meta.get("pixel_unit")
    axes = []
    for axis, size in zip("zyx"[3 - len(sizes) :], sizes, strict=True):
        entry: dict[str, Any] = {"type": "space", "id": axis}
        entry["size"] = {"tensor_id": "raw", "axis_id": axis} if output else size
        if unit in _UNITS and axis in pixel:
            entry.update(unit=unit, scale=float(pixel[axis]))
        axes.append(entry)
    return axes


def _description(
    cfg: PackageConfig,
    directory: Path,
    meta: dict[str, Any],
    info: dict[str, Any],
    sizes: list[Any],
    parts: dict[str, bytes],
    softmax: bool,
    torch_version: str,
) -> dict[str, Any]:
    """The package's rdf.yaml, as a mapping."""
    normalize = meta["normalize"]
    names = [f"channel{c}" for c in info["channels"]]
    pre: dict[str, Any] = {
        "axis": "channel",
        "mean": list(normalize["mean"]),
        "std": list(normalize["std"]),
    }
    if len(pre["mean"]) != len(names):  # one value for every channel
        pre = {"mean": float(pre["mean"][0]), "std": float(pre["std"][0])}
    post = [{"id": "softmax", "kwargs": {"axis": "channel"}}] if softmax else [{"id": "sigmoid"}]
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": _name(cfg, directory, info),
        "description": cfg.description or _summary(meta, info),
        "authors": [{"name": author} for author in cfg.authors],
        "cite": [_CITE_NNUNET if info["arch"] in NNUNET_ARCHITECTURES else _CITE],
        "license": cfg.license,
        "documentation": "README.md",
        "tags": [
            "segmentation",
            f"{len(sizes)}d",
            "pytorch",
            "raysegment",
            str(info["arch"]).lower(),
        ],
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "inputs": [
            {
                "id": "raw",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": names},
                    *_space(sizes, meta, output=False),
                ],
                "test_tensor": {
                    "source": "test_input.npy",
                    "sha256": _sha(parts["test_input.npy"]),
                },
                "preprocessing": [{"id": "fixed_zero_mean_unit_variance", "kwargs": pre}],
            }
        ],
        "outputs": [
            {
                "id": "prediction",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": list(meta["classes"])},
                    *_space(sizes, meta, output=True),
                ],
                "test_tensor": {
                    "source": "test_output.npy",
                    "sha256": _sha(parts["test_output.npy"]),
                },
                "postprocessing": post,
            }
        ],
        "weights": {
            "torchscript": {
                "source": _WEIGHTS,
                "sha256": _sha(parts[_WEIGHTS]),
                "pytorch_version": torch_version.split("+")[0],
            }
        },
        "config": {"raysegment": {"version": __version__, **_kept(meta)}},
    }


def _name(cfg: PackageConfig, directory: Path, info: dict[str, Any]) -> str:
    """``cfg.name``, else the directory's (its other characters as ``_``; a short one
    with the architecture after it): as the zoo's names are, 5 to 128 letters, digits,
    spaces and ``_+-()``.

    Raises:
        ConfigError: a given name that is not.
    """
    allowed = set(string.ascii_letters + string.digits + "_+- ()")
    if cfg.name is not None:
        if not 5 <= len(cfg.name) <= 128 or not set(cfg.name) <= allowed:
            fixed = "".join(c if c in allowed else "_" for c in cfg.name)[:128].ljust(5, "_")
            raise ConfigError(
                f"name={cfg.name!r}: a BioImage Model Zoo name is 5 to 128 letters, digits, "
                f"spaces and _+-(); e.g. name={fixed!r}"
            )
        return cfg.name
    name = "".join(c if c in allowed else "_" for c in directory.resolve().name)
    return (name if len(name) >= 5 else f"{name} ({info['arch']})")[:128]


def _kept(meta: dict[str, Any]) -> dict[str, Any]:
    """What raysegment's metadata says beyond the description, which infer reads back
    (``zoo.RAYSEGMENT_KEYS``): the training's patch (an nnU-Net network's default tile: its
    instance norms make its output depend on the tile), the classes' codes and nnU-Net's
    resampling where the training resampled so."""
    return {k: meta[k] for k in RAYSEGMENT_KEYS if meta.get(k)}


def _summary(meta: dict[str, Any], info: dict[str, Any]) -> str:
    split = info.get("split", {})
    count = len(split.get("train", [])) + len(split.get("validation", []))
    return (
        f"{_network(info)} segmenting {', '.join(meta['classes'])}, trained with raysegment "
        f"on {count} image(s)"
    )


def _network(info: dict[str, Any], strides: bool = False) -> str:
    """The architecture in a few words: with its encoder (segmentation-models-pytorch's),
    or as nnU-Net's network of its width and dimensions (``strides``: its stages' too)."""
    if info["arch"] not in NNUNET_ARCHITECTURES:
        return f"{info['arch']} ({info['encoder']})"
    stages = f", strides {info.get('strides')}" if strides else ""
    dims = len(info["patch_size"])
    return f"{info['arch']} ({dims}D, {info.get('features')} features{stages}; nnU-Net's network)"


def _readme(cfg: PackageConfig, directory: Path, meta: dict[str, Any], info: dict[str, Any]) -> str:
    """The package's documentation: what the model is, its training, how to run it."""
    import csv

    lines = [
        f"# {_name(cfg, directory, info)}",
        "",
        cfg.description or _summary(meta, info) + ".",
        "",
        "## Training",
        "",
        f"- Architecture: {_network(info, strides=True)}",
        f"- Classes: {', '.join(meta['classes'])} ({info['mode']}; "
        f"{meta.get('activation', 'sigmoid')} output)",
        f"- Input: {meta['in_channels']} channel(s), normalized by mean "
        f"{meta['normalize']['mean']} and deviation {meta['normalize']['std']}",
        f"- Patches: {' x '.join(map(str, info['patch_size']))} pixels, at input level "
        f"{info.get('input_level') or 0}",
    ]
    if meta.get("pixel_size"):
        lines.append(f"- Pixel size: {meta['pixel_size']} {meta.get('pixel_unit', '')}".rstrip())
    metrics = directory / "metrics.csv"
    if metrics.is_file():
        rows = list(csv.DictReader(metrics.read_text().splitlines()))
        if rows:
            best = min(rows, key=lambda r: float(r["val_loss"]))
            scores = ", ".join(
                f"{k} {float(best[k]):.3f}"
                for k in ("iou", "fscore", "precision", "recall")
                if k in best
            )
            lines.append(
                f"- Best of {len(rows)} epochs: epoch {best['epoch']}, validation loss "
                f"{float(best['val_loss']):.4f}; {scores} (metrics.csv)"
            )
    lines += [
        "",
        "## Running it",
        "",
        "On images of any size, with raysegment (this package as `model=`):",
        "",
        "    raysegment infer input=image.ome.tif model=<this package>.zip output=out/",
        "",
        "or in any BioImage Model Zoo consumer (deepImageJ, ilastik, QuPath, bioimageio.core).",
        "",
    ]
    return "\n".join(lines)
