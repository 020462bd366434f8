"""Model files: locate, checksum, load (TorchScript or torch.export) and check the contract.

The contract: input ``(N, C_in, [D,] H, W)`` float32, output ``(N, C_out, same spatial)``.
Loading a TorchScript or torch.export file runs code from that file: only load models
you trust. torch is imported by the first load, not with this module: the driver reads a
model file before it starts Ray and loads it while Ray boots.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raysegment.errors import ModelContractError, ModelLoadError
from raysegment.infer.nnunet import (
    is_nnunet_fold,
    is_nnunet_training,
    nnunet_folds,
    read_nnunet,
    trainings_within,
    unfinished_training,
)
from raysegment.infer.zoo import build_architecture, is_package, read_package
from raysegment.modeldir import MODEL_META

if TYPE_CHECKING:
    import torch

__all__ = [
    "MODEL_META",
    "ModelFile",
    "ModelSpec",
    "describe_model",
    "ensemble_sha256",
    "load_model",
    "probe_model",
    "probe_models",
    "read_model_file",
    "read_models",
    "tiles_taken",
]

_DIR_CANDIDATES = ("model.pth", "model.pt", "model.pt2", "model.onnx")
_KINDS = {".pt2": "export", ".onnx": "onnx"}
"""A model file's kind by its suffix; any other: TorchScript."""


@dataclass(frozen=True)
class ModelFile:
    """A model program as bytes, so it travels to every node through the object store."""

    path: str
    kind: str
    """``torchscript``, ``export`` (torch.export) or ``onnx``."""
    data: bytes = field(repr=False)
    meta: dict[str, Any]
    sha256: str


@dataclass(frozen=True)
class ModelSpec:
    """What the model takes and returns, from its metadata, its weights, or a probe."""

    in_channels: int
    spatial_dims: int
    out_channels: int = 0
    static_batch: int | None = None
    """Batch size a torch.export program was exported with, if it is not dynamic."""
    static_tile: tuple[int, ...] | None = None
    """Spatial size a torch.export program was exported with, if it is not dynamic."""
    classes: tuple[str, ...] | None = None
    class_codes: tuple[Any, ...] | None = None
    """Each class's coded meaning (``modeldir.MODEL_META``), or None."""
    normalize: dict[str, Any] | None = None
    activation: str | None = None
    tile_steps: tuple[tuple[int, int], ...] | None = None
    """Per spatial axis, [min, step]: the model takes tiles of min + n * step (a model
    package's sizes; step 0: min alone)."""
    halo: tuple[int, ...] | None = None
    """Per spatial axis, the pixels at a tile's edges its output gets wrong (a model
    package's halo): they weigh nothing in the blend."""
    threshold: float | None = None
    """The mask's threshold the model gives (a model package's ``binarize``)."""
    patch: tuple[int, ...] | None = None
    """The tile the model was trained on (an nnU-Net configuration's patch size): the
    default tile, others it takes allowed."""
    tta_axes: tuple[int, ...] | None = None
    """The spatial axes (0 the first) test-time augmentation flips (an nnU-Net training's
    mirror axes); None: every axis."""
    tile_spread: bool = False
    """Tiles spread evenly over each axis (an nnU-Net training's sliding window), not a
    step apart with the last flush with the end."""
    region_labels: tuple[int, ...] | None = None
    """A region model's label per output channel (an nnU-Net region-based training's
    ``regions_class_order``): its labels paint each channel's where it passes the
    threshold, later over earlier; None: the channels' argmax."""

    def flips(self) -> tuple[int, ...]:
        """The spatial axes ``tta=true`` flips: ``tta_axes``, else every axis."""
        return self.tta_axes if self.tta_axes is not None else tuple(range(self.spatial_dims))


def read_model_file(path: str) -> ModelFile:
    """Find the model program at ``path`` (file or directory) and read it: a directory's
    model.pth (or model.pt, model.pt2, model.onnx) with its ``MODEL_META``, else a BioImage
    Model Zoo package's weights with what its description says (``zoo.read_package``); an
    nnU-Net training's fold, its network traced with what its plans say
    (``nnunet.read_nnunet``).

    Raises:
        ModelLoadError: nothing there, a directory without either, or a package
            raysegment cannot run as it describes.
    """
    p = Path(path)
    meta: dict[str, Any] = {}
    if is_nnunet_fold(path):
        data, meta, sha256 = read_nnunet(path)
        return ModelFile(str(p), "torchscript", data, meta, sha256)
    found = [p / n for n in _DIR_CANDIDATES if (p / n).is_file()] if p.is_dir() else []
    if not found and is_package(path):
        kind, data, meta, sha256 = read_package(path)
        return ModelFile(str(p), kind, data, meta, sha256)
    if p.is_dir():
        unfinished = unfinished_training(path) or (None if found else trainings_within(path))
        if unfinished:
            raise ModelLoadError(unfinished)
        if not found:
            raise ModelLoadError(
                f"{p}: directory holds no model.pth, model.pt2, model.onnx or rdf.yaml; give "
                f"model= a TorchScript file, a torch.export .pt2 program, an ONNX model, a "
                f"directory holding model.pth, or a BioImage Model Zoo package"
            )
        if (p / MODEL_META).is_file():
            try:
                meta = json.loads((p / MODEL_META).read_text())
            except (OSError, ValueError) as e:
                raise ModelLoadError(f"{p / MODEL_META}: unreadable model metadata ({e})") from e
        p = found[0]
    elif not p.is_file():
        raise ModelLoadError(f"{p}: model not found; check the model= path")
    data = p.read_bytes()
    kind = _KINDS.get(p.suffix, "torchscript")
    return ModelFile(str(p), kind, data, meta, hashlib.sha256(data).hexdigest())


def read_models(paths: Sequence[str]) -> tuple[ModelFile, ...]:
    """``read_model_file`` of each of ``paths``: one model, or an ensemble's; an nnU-Net
    training's directory gives its folds (an ensemble, as nnU-Net predicts)."""
    found = [f for p in paths for f in (nnunet_folds(p) if is_nnunet_training(p) else [p])]
    return tuple(read_model_file(p) for p in found)


def ensemble_sha256(models: Sequence[ModelFile]) -> str:
    """What identifies ``models`` together: the one model's SHA-256, or that of the
    members' in their order (``model=[a,b]`` and ``[b,a]`` round their sums apart)."""
    if len(models) == 1:
        return models[0].sha256
    return hashlib.sha256(" ".join(m.sha256 for m in models).encode()).hexdigest()


FIT_MULTIPLES = (1, 8, 16, 32, 64)
"""What a model may take along an axis, smallest first: any length (plain convolutions),
or a multiple of 2^k (a network that pools k times along it)."""


def probe_models(
    models: Sequence[ModelFile],
    tile_for: Callable[[ModelSpec], tuple[int, ...]],
    shapes: Callable[[ModelSpec], Sequence[tuple[int, ...]]] | None = None,
) -> tuple[ModelSpec, list[tuple[int, ...] | None]]:
    """Each of ``models`` (one, or an ensemble's) loaded, described and probed on a tile of
    ``tile_for(its description)``: their one description; and for each image of spatial
    shape in ``shapes(description)``, the tile fitted to it where it is shorter than the
    tile (``plan.fitted_tile``; None where it is not, or no tile fits).

    Along each axis some image is shorter than the tile on, the multiple every model takes
    is the first of ``FIT_MULTIPLES`` each takes in a tile otherwise whole (the tile's
    length less up to that multiple); each fitted tile is then probed on every model, and
    an image whose tile a model does not take keeps the configured one. Properties of the
    models and of each image alone: an image is planned alike whatever images run with it.

    Raises:
        ModelLoadError, ModelContractError: as ``load_model`` and ``probe_model``, and for
            members that take or return different things.
    """
    from raysegment.infer.plan import fitted_tile

    specs: list[ModelSpec] = []
    takers: list[Callable[[tuple[int, ...]], bool]] = []
    multiples: list[int | None] = []
    images: Sequence[tuple[int, ...]] = []
    tile: tuple[int, ...] = ()
    for i, model in enumerate(models):
        module = load_model(model)
        described = describe_model(model, module)
        tile = tile_for(described)
        spec = probe_model(model, module, described, tile)
        specs.append(spec)
        takes = tiles_taken(model, module, spec)
        if i == 0:  # the first model: the axes to fit
            images = shapes(spec) if shapes else []
            # A torch.export program of one tile size; an nnU-Net training's tile is padded
            # around a scan shorter than it, as nnU-Net pads it (``Tiling.plan``'s spread).
            fixed = spec.static_tile is not None or spec.tile_spread
            short = [not fixed and any(s[a] < t for s in images) for a, t in enumerate(tile)]
            multiples = [_multiple(takes, tile, a) if s else None for a, s in enumerate(short)]
        else:  # the others: a multiple of each axis' that they take too (powers of two)
            multiples = [
                None if m is None else _multiple(takes, tile, a, since=m)
                for a, m in enumerate(multiples)
            ]
        if any(m is not None for m in multiples):  # kept (with its module) for the fits
            takers.append(takes)
        del module, takes
    spec = _agreeing_spec(specs, models)
    fitted = [fitted_tile(tile, shape, multiples) for shape in images]
    for fit in sorted({f for f in fitted if f is not None}):
        if not all(takes(fit) for takes in takers):  # e.g. shorter than a model's minimum
            fitted = [None if f == fit else f for f in fitted]
    return spec, fitted


def _multiple(
    takes: Callable[[tuple[int, ...]], bool], tile: tuple[int, ...], axis: int, since: int = 1
) -> int | None:
    """The first of ``FIT_MULTIPLES`` (from ``since``) that a model takes along ``axis``:
    a tile whose ``axis`` is the largest multiple of it below the tile's, the other axes
    whole. None: it takes none."""
    for m in FIT_MULTIPLES:
        length = (tile[axis] - 1) // m * m
        if m >= since and length > 0:
            if takes(tuple(length if a == axis else t for a, t in enumerate(tile))):
                return m
    return None


def tiles_taken(
    model: ModelFile, module: torch.nn.Module, spec: ModelSpec
) -> Callable[[tuple[int, ...]], bool]:
    """Whether ``module`` takes a tile as it takes ``spec``'s: returns it whole, with the
    same channels (probed once per tile; the module is kept for the probes after)."""
    seen: dict[tuple[int, ...], bool] = {}

    def takes(tile: tuple[int, ...]) -> bool:
        if tile not in seen:
            try:
                seen[tile] = probe_model(model, module, spec, tile) == spec
            except ModelContractError:  # a size it cannot take (not a multiple of its stride)
                seen[tile] = False
        return seen[tile]

    return takes


def _agreeing_spec(specs: Sequence[ModelSpec], models: Sequence[ModelFile]) -> ModelSpec:
    """The one description of an ensemble's probed models.

    Raises:
        ModelContractError: two members take or return different things.
    """
    first = specs[0]
    for spec, model in zip(specs[1:], models[1:], strict=True):
        for key in fields(ModelSpec):
            if getattr(spec, key.name) != getattr(first, key.name):
                raise ModelContractError(
                    f"{model.path}: {key.name} is {getattr(spec, key.name)}, "
                    f"{getattr(first, key.name)} for {models[0].path}; the models of an "
                    f"ensemble must take and return the same (averaged tile by tile)"
                )
    return first


def load_model(model: ModelFile, device: torch.device | str = "cpu") -> torch.nn.Module:
    """Load the program onto ``device`` in eval mode (an ONNX program: a module running it
    in ONNX Runtime, ``onnx.OnnxModule``; a model package's state dict: its architecture
    built, ``zoo.build_architecture``, and the weights loaded into it).

    Raises:
        ModelLoadError: the file is not a TorchScript archive / torch.export program /
            ONNX model (or ONNX Runtime is not installed).
    """
    import torch

    module: torch.nn.Module
    try:
        if model.kind == "onnx":
            from raysegment.infer.onnx import OnnxModule

            module = OnnxModule(model.path, model.data, device)
        elif model.kind == "export":
            program = torch.export.load(io.BytesIO(model.data))
            module = program.module().to(device)
        elif model.kind == "state_dict":  # a model package's, with its architecture
            module = build_architecture(model.path, model.meta["architecture"])
            state = torch.load(io.BytesIO(model.data), map_location="cpu", weights_only=True)
            module.load_state_dict(state)
            module.to(device)
        else:
            with warnings.catch_warnings():
                # Deprecated in favour of torch.export; raysegment reads both on purpose.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(io.BytesIO(model.data), map_location=device)
    except ModelLoadError:
        raise
    except Exception as e:
        want = {
            "export": "a torch.export program (torch.export.save)",
            "state_dict": "a state dict of its architecture's (torch.save of its state_dict())",
            "onnx": "an ONNX model (torch.onnx.export, or any framework's ONNX export)",
        }.get(model.kind, "a TorchScript archive (torch.jit.save of torch.jit.trace/script)")
        raise ModelLoadError(
            f"{model.path}: cannot load the model ({type(e).__name__}: {_first_sentence(e)}); "
            f"the file must be {want}"
        ) from e
    if hasattr(module, "eval") and model.kind != "export":
        module.eval()
    return module


def _first_sentence(error: Exception) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text.split(". ")[0][:160]


def _export_input_shape(model: ModelFile) -> list[int | None] | None:
    import torch

    program = torch.export.load(io.BytesIO(model.data))
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user and "val" in node.meta:
            return [s if isinstance(s, int) else None for s in node.meta["val"].shape]
    return None


def describe_model(model: ModelFile, module: torch.nn.Module) -> ModelSpec:
    """Input channels and dimensionality: metadata first, then the program itself.

    Raises:
        ModelContractError: nothing tells them (write raysegment.json next to model.pth).
    """
    meta = model.meta
    static_batch, static_tile = meta.get("static_batch"), None  # a package's batch of 1
    in_channels = meta.get("in_channels")
    dims = meta.get("spatial_dims")
    if model.kind in ("export", "onnx"):
        shape: list[int | None] | None = (
            _export_input_shape(model)
            if model.kind == "export"
            else list(getattr(module, "input_shape", []))  # an ONNX program's
        )
        if shape is not None and len(shape) in (4, 5):
            static_batch = shape[0]
            in_channels = in_channels or shape[1]
            dims = dims or len(shape) - 2
            if all(s is not None for s in shape[2:]):
                static_tile = tuple(int(s) for s in shape[2:])  # type: ignore[arg-type]
    if in_channels is None or dims is None:
        # The first weight of a segmentation network is almost always its first conv:
        # (C_out, C_in, k...), with 2 (2D) or 3 (3D) kernel dimensions.
        for _, param in module.named_parameters():
            if param.ndim in (4, 5):
                in_channels = in_channels or int(param.shape[1])
                dims = dims or param.ndim - 2
            break
    if in_channels is None or dims not in (2, 3):
        raise ModelContractError(
            f"{model.path}: cannot tell the model's input channels and 2D/3D; write "
            f'{MODEL_META} next to model.pth with {{"in_channels": 1, "spatial_dims": 2}}'
        )
    each = (meta.get("normalize") or {}).get("channels")
    if each is not None and (not isinstance(each, list) or len(each) != int(in_channels)):
        raise ModelContractError(
            f"{model.path}: normalize.channels gives {len(each) if isinstance(each, list) else 0} "
            f"channel(s)' normalizations for a model of {in_channels} input channel(s); give one "
            f"a channel"
        )
    classes = meta.get("classes")
    codes = meta.get("class_codes")
    tile = meta.get("tile_size")
    steps, halo = meta.get("tile_steps"), meta.get("halo")
    return ModelSpec(
        in_channels=int(in_channels),
        spatial_dims=int(dims),
        static_batch=static_batch,
        static_tile=static_tile or (tuple(tile) if tile else None),
        classes=tuple(classes) if classes else None,
        class_codes=tuple(codes) if classes and codes and len(codes) == len(classes) else None,
        normalize=meta.get("normalize"),
        activation=meta.get("activation"),
        tile_steps=tuple((int(m), int(s)) for m, s in steps) if steps else None,
        halo=tuple(int(h) for h in halo) if halo else None,
        threshold=meta.get("threshold"),
        patch=tuple(int(v) for v in meta["patch_size"]) if meta.get("patch_size") else None,
        tta_axes=None if meta.get("tta_axes") is None else tuple(map(int, meta["tta_axes"])),
        tile_spread=bool(meta.get("tile_spread")),
        region_labels=_region_labels(model, meta.get("region_labels")),
    )


def _region_labels(model: ModelFile, given: Any) -> tuple[int, ...] | None:
    """``region_labels`` of the model's metadata: labels from 1 on, one per channel.

    Raises:
        ModelContractError: other values.
    """
    if given is None:
        return None
    if (
        not isinstance(given, list)
        or not given
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in given)
    ):
        raise ModelContractError(
            f"{model.path}: region_labels {given!r}; give one label from 1 on per output "
            f'channel, in the order they are painted (e.g. "region_labels": [1, 2, 3])'
        )
    return tuple(given)


def probe_model(
    model: ModelFile, module: torch.nn.Module, spec: ModelSpec, tile: tuple[int, ...]
) -> ModelSpec:
    """Run one zero tile through the model and check the contract; return ``spec`` with
    ``out_channels`` filled in.

    Raises:
        ModelContractError: the forward fails, or the output is not (1, C_out, *tile) float.
    """
    import torch

    batch = spec.static_batch or 1
    shape = (batch, spec.in_channels, *tile)
    if spec.static_tile is not None and tuple(spec.static_tile) != tuple(tile):
        raise ModelContractError(
            f"{model.path}: the model takes tiles of {list(spec.static_tile)} only; set "
            f"tile.size={list(spec.static_tile)} or export with dynamic spatial dimensions"
        )
    try:
        with torch.inference_mode():
            out = module(torch.zeros(shape, dtype=torch.float32))
    except Exception as e:
        raise ModelContractError(
            f"{model.path}: the model failed on a {list(shape)} float32 tile "
            f"({type(e).__name__}: {_first_sentence(e)}); check the model takes "
            f"{spec.in_channels} channel(s) in {spec.spatial_dims}D, and choose tile.size the "
            f"model can take (e.g. divisible by 32 for most encoders)"
        ) from e
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise ModelContractError(
            f"{model.path}: the model returned {type(out).__name__}; it must return a tensor "
            f"of shape (N, C_out, *spatial)"
        )
    if not out.is_floating_point():
        raise ModelContractError(
            f"{model.path}: the model returned dtype {out.dtype}; it must return floating-point "
            f"scores (logits or probabilities), not {out.dtype}"
        )
    if out.ndim != len(shape) or out.shape[0] != batch or tuple(out.shape[2:]) != tuple(tile):
        raise ModelContractError(
            f"{model.path}: the model returned shape {list(out.shape)} for a {list(shape)} tile; "
            f"the model must keep the batch and spatial size (pad inside forward, or choose "
            f"tile.size divisible by the model's total stride, e.g. 32)"
        )
    regions = spec.region_labels
    if regions is not None and len(regions) != out.shape[1]:
        raise ModelContractError(
            f"{model.path}: region_labels {list(regions)} name {len(regions)} channels, the "
            f"model returns {out.shape[1]}; give one label per output channel"
        )
    return replace(spec, out_channels=int(out.shape[1]))
