"""BioImage Model Zoo packages (bioimage.io) as ``model=``: their TorchScript weights (else
their ONNX weights, else their PyTorch state dict with the architecture it names), with
what their description says of them as raysegment's model metadata (``MODEL_META``).

A package is a directory, a ``.zip``, or the description itself (``rdf.yaml``,
``bioimageio.yaml`` or ``<name>.bioimageio.yaml``), in format 0.4 or 0.5. Read from it:

- the input's channels and 2D/3D, and its tile sizes: a fixed size (``tile_size``), or
  ``min + n * step`` (``tile_steps``, each axis' [min, step]);
- its preprocessing as ``normalize``: ``scale_range`` (percentiles), ``zero_mean_unit_variance``
  (mean and standard deviation), both measured on the image, jointly or per channel as its
  axes say; fixed means and deviations, ``scale_linear`` after them, and a final ``clip``;
- the output's ``halo`` (pixels at a tile's edges that weigh nothing in the blend), its
  channel names (``classes``), and its activation: ``sigmoid`` or ``softmax`` where its
  postprocessing applies one, else ``none`` (the network's output is the package's);
- in format 0.5, the pixel the model was trained at (``pixel_size``, where its space axes
  have a unit), which infer's default ``input_level`` nears;
- what ``raysegment package`` adds under ``config: raysegment:`` beyond the description
  (``RAYSEGMENT_KEYS``): the training's patch (``patch_size``: infer's default tile, as
  the model directory's), the classes' codes (``class_codes``: DICOM SEG output) and
  nnU-Net's resampling where the training resampled so (``resampling``: ``resample=true``
  follows it).

A state dict's architecture is the package's Python file and callable (or a module's, from
an installed library), called with the description's keyword arguments, as
bioimageio.core builds it: ``architecture`` in the model's metadata, which ``load_model``
builds (in every predictor) before it loads the weights. Running it runs the package's
code, as loading a TorchScript program does.

What raysegment cannot run as the package describes (other layouts, several inputs or
outputs, weights other than TorchScript, ONNX or a state dict, other processing) is one
error naming the package and what to do. Statistics are measured on a sample of the whole
image (every plane and time point), as ``normalize.mode=percentile`` does, not per plane.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from raysegment.errors import ModelLoadError

__all__ = ["DESCRIPTIONS", "build_architecture", "is_package", "read_package"]

DESCRIPTIONS = ("rdf.yaml", "bioimageio.yaml")
"""A package's description, by name (or ``<name>.bioimageio.yaml``)."""

_STATISTICS = ("scale_range", "zero_mean_unit_variance")
_WEIGHTS = {"torchscript": "torchscript", "onnx": "onnx", "pytorch_state_dict": "state_dict"}
"""The weights raysegment runs, in the order it picks them, and their ``ModelFile.kind``."""
RAYSEGMENT_KEYS = ("patch_size", "class_codes", "resampling")
"""The keys of a package's ``config: raysegment:`` read as the model's metadata (those
``raysegment package`` writes there)."""


def is_package(path: str) -> bool:
    """Whether ``path`` is a BioImage Model Zoo package: a description file, a directory
    holding one, or a ``.zip``."""
    p = Path(path)
    if p.is_dir():
        return _description_in(p) is not None
    return p.is_file() and (p.suffix == ".zip" or _is_description(p.name))


def _is_description(name: str) -> bool:
    return name in DESCRIPTIONS or name.endswith(".bioimageio.yaml")


def _description_in(directory: Path) -> Path | None:
    for name in DESCRIPTIONS:
        if (directory / name).is_file():
            return directory / name
    found = sorted(directory.glob("*.bioimageio.yaml"))
    return found[0] if found else None


def read_package(path: str) -> tuple[str, bytes, dict[str, Any], str]:
    """The weights of the package at ``path`` (its TorchScript weights, else its ONNX
    weights, else its state dict), their kind (``torchscript``, ``onnx`` or
    ``state_dict``, as ``ModelFile.kind``), its metadata as ``MODEL_META`` says (a state
    dict's with its ``architecture``), and what identifies the model (the SHA-256 of its
    weights, and of a state dict's architecture).

    Raises:
        ModelLoadError: not a package raysegment can run as it describes; the message
            names the package and what to change.
    """
    import yaml

    files = _Files(path)
    try:
        rdf = yaml.safe_load(files.read(files.description))
    except yaml.YAMLError as e:
        raise ModelLoadError(f"{path}: unreadable model description ({e})") from e
    if not isinstance(rdf, dict) or rdf.get("type") != "model":
        raise ModelLoadError(
            f"{path}: {files.description} does not describe a model (type: "
            f"{rdf.get('type') if isinstance(rdf, dict) else None}); give model= a BioImage "
            f"Model Zoo model package"
        )
    version = str(rdf.get("format_version", ""))
    if not version.startswith(("0.4", "0.5")):
        raise ModelLoadError(
            f"{path}: format_version {version or 'missing'}; raysegment reads BioImage Model "
            f"Zoo models of format 0.4 and 0.5 (bioimageio.spec's update_format converts others)"
        )
    reader = _V04(path, rdf) if version.startswith("0.4") else _V05(path, rdf)
    kind, weights = reader.weights(files)
    meta, digest = reader.meta(), hashlib.sha256(weights)
    if kind == "state_dict":
        meta["architecture"] = reader.architecture(files)
        digest.update(json.dumps(meta["architecture"], sort_keys=True).encode())
    return kind, weights, meta, digest.hexdigest()


def _a_scheme(scheme: Any) -> bool:
    """Whether ``scheme`` is a resampling scheme infer runs (``resampled.nnunet_kinds``)."""
    from raysegment.data.resampled import ORDERS

    if not isinstance(scheme, dict):
        return False
    orders = [scheme.get(k) for k in ("data", "probabilities", "segmentation") if k in scheme]
    return {"data", "probabilities"} <= set(scheme) and all(
        isinstance(o, list) and len(o) == 2 and all(v in ORDERS for v in o) for o in orders
    )


class _Files:
    """A package's files: a directory's or a zip's, by their names in its description."""

    def __init__(self, path: str) -> None:
        self.path = path
        p = Path(path)
        self.zip: zipfile.ZipFile | None = None
        if p.is_dir():
            found = _description_in(p)
            if found is None:
                raise ModelLoadError(
                    f"{path}: no rdf.yaml or bioimageio.yaml in the directory; give model= a "
                    f"BioImage Model Zoo package (its directory, .zip or description)"
                )
            self.root, self.description = p, found.name
        elif p.suffix == ".zip":
            try:
                self.zip = zipfile.ZipFile(p)
            except (OSError, zipfile.BadZipFile) as e:
                raise ModelLoadError(f"{path}: not a readable zip ({e})") from e
            names = [n for n in self.zip.namelist() if "/" not in n and _is_description(n)]
            order = {name: i for i, name in enumerate(DESCRIPTIONS)}
            names.sort(key=lambda n: (order.get(n, len(order)), n))
            if not names:
                raise ModelLoadError(
                    f"{path}: the zip holds no rdf.yaml or bioimageio.yaml at its top; give "
                    f"model= a BioImage Model Zoo package as bioimage.io downloads it"
                )
            self.root, self.description = p.parent, names[0]
        else:
            self.root, self.description = p.parent, p.name

    def checked(self, name: str, sha256: str | None) -> bytes:
        """``read`` of ``name``, checked against the ``sha256`` its description gives."""
        data = self.read(name)
        if sha256 and hashlib.sha256(data).hexdigest() != sha256:
            raise ModelLoadError(
                f"{self.path}: {name} does not match the sha256 its description gives; the "
                f"package is damaged: download it again"
            )
        return data

    def read(self, name: str) -> bytes:
        """The bytes of the package's file ``name`` (relative to its description)."""
        if "://" in name:
            raise ModelLoadError(
                f"{self.path}: its weights are at {name}; raysegment reads no files from the "
                f"internet at run time: download the package (its .zip) and give model= that"
            )
        try:
            if self.zip is not None:
                return self.zip.read(str(PurePosixPath(name)))
            return (self.root / name).read_bytes()
        except (OSError, KeyError) as e:
            raise ModelLoadError(f"{self.path}: {name} is missing from the package ({e})") from e


def _one(path: str, tensors: Any, what: str) -> dict[str, Any]:
    if not isinstance(tensors, list) or len(tensors) != 1 or not isinstance(tensors[0], dict):
        count = len(tensors) if isinstance(tensors, list) else 0
        raise ModelLoadError(
            f"{path}: the model has {count} {what}s; raysegment runs models of one input "
            f"image and one output"
        )
    return tensors[0]


class _Reader:
    """What both formats share: the weights, and the metadata from each format's axes,
    sizes and processing (the subclasses' ``_layout``, ``_sizes``, ``_steps``)."""

    def __init__(self, path: str, rdf: dict[str, Any]) -> None:
        self.path, self.rdf = path, rdf
        self.input = _one(path, rdf.get("inputs"), "input")
        self.output = _one(path, rdf.get("outputs"), "output")

    def weights(self, files: _Files) -> tuple[str, bytes]:
        entries = self.rdf.get("weights") or {}
        kind = next((k for k in _WEIGHTS if isinstance(entries.get(k), dict)), "")
        entry = entries.get(kind)
        if not isinstance(entry, dict) or not entry.get("source"):
            raise ModelLoadError(
                f"{self.path}: the package has {', '.join(sorted(entries)) or 'no'} weights "
                f"and no torchscript, onnx or pytorch_state_dict weights, the formats "
                f"raysegment runs; convert them with bioimageio.core (`bioimageio "
                f"convert-weights ... torchscript`) or pick a package that has them"
            )
        return _WEIGHTS[kind], files.checked(str(entry["source"]), entry.get("sha256"))

    def architecture(self, files: _Files) -> dict[str, Any]:
        """The state dict's architecture, as ``build_architecture`` takes it: the Python
        ``code`` of the package's file (its ``file`` name beside) or the module to
        ``import_from``, the ``callable`` and its ``kwargs``."""
        entry = self.rdf["weights"]["pytorch_state_dict"]
        given = self._architecture(entry)
        kwargs = given.pop("kwargs", None) or {}
        if not isinstance(kwargs, dict):
            raise ModelLoadError(f"{self.path}: the architecture's kwargs are not a mapping")
        if "file" in given:
            code = files.checked(given["file"], given.pop("sha256", None))
            given["code"] = code.decode("utf-8")
        return {**given, "kwargs": kwargs}

    def _architecture(self, entry: dict[str, Any]) -> dict[str, Any]:
        """The description's architecture: ``file`` (and its ``sha256``) or
        ``import_from``, ``callable``, ``kwargs``."""
        raise NotImplementedError

    def _no_architecture(self) -> ModelLoadError:
        return ModelLoadError(
            f"{self.path}: its pytorch_state_dict weights name no architecture (a file of "
            f"the package and a callable, or a library's); the description is incomplete"
        )

    def _layout(self, tensor: dict[str, Any]) -> list[str]:
        raise NotImplementedError

    def _sizes(self) -> list[Any]:
        """Each input axis' size: an int, or (min, step)."""
        raise NotImplementedError

    def _steps(self, tensor: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        """A tensor's processing steps as (name, kwargs)."""
        raise NotImplementedError

    def _channel_names(self) -> list[str] | None:
        return None

    def _halo(self) -> list[int]:
        """The output's halo per spatial axis, its sizes checked to be the input's."""
        raise NotImplementedError

    def _resized(self, axis: str, size: Any) -> ModelLoadError:
        return ModelLoadError(
            f"{self.path}: its output's {axis} axis is not the input's size ({size}); "
            f"raysegment runs models whose output keeps a tile's size"
        )

    def _pixel(self) -> dict[str, Any]:
        return {}

    def _one_a_batch(self) -> bool:
        """Whether the model takes one tile at a time (a batch axis of size 1)."""
        return False

    def _axes(self, tensor: dict[str, Any], what: str) -> list[str]:
        """The tensor's axes as letters, checked to be b, c, then z, y, x or y, x."""
        layout = self._layout(tensor)
        space = [a for a in layout if a not in "bc"]
        if layout[:2] != ["b", "c"] or space not in (["y", "x"], ["z", "y", "x"]):
            raise ModelLoadError(
                f"{self.path}: its {what} has axes {''.join(layout)}; raysegment runs models "
                f"whose {what} is batch, channel, then z, y, x or y, x (bcyx, bczyx)"
            )
        return layout

    def meta(self) -> dict[str, Any]:
        axes = self._axes(self.input, "input")
        self._axes(self.output, "output")
        sizes = self._sizes()
        channels = sizes[1]
        if not isinstance(channels, int):
            raise ModelLoadError(
                f"{self.path}: its input's channels vary ({channels}); raysegment needs a "
                f"model of a fixed number of input channels"
            )
        spatial = sizes[2:]
        meta: dict[str, Any] = {"in_channels": channels, "spatial_dims": len(axes) - 2}
        if all(isinstance(s, int) for s in spatial):
            meta["tile_size"] = spatial
        else:
            meta["tile_steps"] = [[s, 0] if isinstance(s, int) else list(s) for s in spatial]
        halo = self._halo()
        if any(halo):
            meta["halo"] = halo
        if self._one_a_batch():
            meta["static_batch"] = 1
        normalize = self._normalize(self._steps(self.input))
        if normalize:
            meta["normalize"] = normalize
        meta["activation"] = self._activation(self._steps(self.output))
        threshold = self._threshold(self._steps(self.output))
        if threshold is not None:
            meta["threshold"] = threshold
        names = self._channel_names()
        if names:
            meta["classes"] = names
        meta.update(self._pixel())
        meta.update(self._kept(len(axes) - 2))
        return meta

    def _kept(self, dims: int) -> dict[str, Any]:
        """What the package's ``config: raysegment:`` says of its model (``RAYSEGMENT_KEYS``)
        of ``dims`` spatial axes.

        Raises:
            ModelLoadError: a patch that is not one size a spatial axis; a resampling
                scheme infer does not run.
        """
        config = self.rdf.get("config")
        kept = config.get("raysegment") if isinstance(config, dict) else None
        if not isinstance(kept, dict):
            return {}
        meta = {k: kept[k] for k in RAYSEGMENT_KEYS if kept.get(k) is not None}
        patch = meta.get("patch_size")
        if patch is not None and not (
            isinstance(patch, list)
            and len(patch) == dims
            and all(isinstance(v, int) and v > 0 for v in patch)
        ):
            raise ModelLoadError(
                f"{self.path}: config.raysegment.patch_size is {patch!r}; it is the "
                f"training's patch, {dims} positive sizes (one a spatial axis): mend it or "
                f"leave it out"
            )
        scheme = meta.get("resampling")
        if scheme is not None and not _a_scheme(scheme):
            raise ModelLoadError(
                f"{self.path}: config.raysegment.resampling is {scheme!r}; it is nnU-Net's "
                f"resampling (data and probabilities, each [order, order along a long "
                f"voxel's axis] of 0, 1 or 3): mend it or leave it out"
            )
        return meta

    def _refuse(self, step: str, why: str) -> ModelLoadError:
        return ModelLoadError(
            f"{self.path}: its {step} ({why}) is not one raysegment applies; it applies "
            f"scale_range, zero_mean_unit_variance, fixed means and deviations, scale_linear "
            f"and a last clip to the input, sigmoid or softmax to the output"
        )

    def _normalize(self, steps: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
        """The input's preprocessing as ``normalize``: one measured or fixed normalization,
        then linear scalings folded into one, then a clip."""
        out: dict[str, Any] = {}
        for name, kwargs in steps:
            fixed = name == "fixed_zero_mean_unit_variance" or (  # 0.4: a mode of it
                name == "zero_mean_unit_variance" and kwargs.get("mode") == "fixed"
            )
            if name == "ensure_dtype":
                if kwargs.get("dtype", "float32") not in ("float32", "float64"):
                    raise self._refuse(f"preprocessing {name}", f"to {kwargs.get('dtype')}")
                continue
            if "clip" in out:
                raise self._refuse(f"preprocessing {name}", "after a clip")
            if name == "clip":
                out["clip"] = [kwargs.get("min", float("-inf")), kwargs.get("max", float("inf"))]
            elif name == "scale_linear":
                gain, offset = (
                    self._per_channel(kwargs, "gain", 1.0),
                    self._per_channel(kwargs, "offset", 0.0),
                )
                if "gain" in out:  # a * (b * x + c) + d, per channel or for all
                    out["gain"], out["offset"] = (
                        np.multiply(gain, out["gain"]).tolist(),
                        np.add(np.multiply(gain, out["offset"]), offset).tolist(),
                    )
                else:
                    out["gain"], out["offset"] = gain, offset
            elif "gain" in out or "mean" in out or "percentile" in out or "moments" in out:
                raise self._refuse(f"preprocessing {name}", "after another normalization")
            elif fixed:
                eps = float(kwargs.get("eps", 1e-6))
                out["mean"] = self._per_channel(kwargs, "mean", 0.0)
                out["std"] = np.add(self._per_channel(kwargs, "std", 1.0), eps).tolist()
            elif name in _STATISTICS:
                mode = kwargs.get("mode", "per_sample")
                if mode != "per_sample" or kwargs.get("reference_tensor") not in (
                    None,
                    self._input_id(),
                ):
                    why = f"mode {mode}, statistics of another tensor or dataset"
                    raise self._refuse(f"preprocessing {name}", why)
                if name == "scale_range":
                    low = float(kwargs.get("min_percentile", 0.0))
                    high = float(kwargs.get("max_percentile", 100.0))
                    out["percentile"] = [low, high]
                else:
                    out["moments"] = True
                out["eps"] = float(kwargs.get("eps", 1e-6))
                out["joint"] = self._joint(kwargs.get("axes"))
            else:
                raise self._refuse(f"preprocessing {name}", "not a normalization")
        return out

    def _activation(self, steps: list[tuple[str, dict[str, Any]]]) -> str:
        activation = "none"
        for name, _ in steps:
            if name in ("sigmoid", "softmax") and activation == "none":
                activation = name
            elif name not in ("ensure_dtype", "binarize"):
                raise self._refuse(f"postprocessing {name}", "not an activation")
        return activation

    def _threshold(self, steps: list[tuple[str, dict[str, Any]]]) -> float | None:
        """A ``binarize`` step's one threshold (one a channel: left to the user)."""
        for name, kwargs in steps:
            if name == "binarize" and not isinstance(kwargs.get("threshold"), list):
                return float(kwargs.get("threshold", 0.5))
        return None

    def _per_channel(
        self, kwargs: Mapping[str, Any], key: str, default: float
    ) -> float | list[float]:
        value = kwargs.get(key, default)
        if isinstance(value, list):
            return [float(v) for v in value]
        return float(value)

    def _joint(self, axes: Any) -> bool:
        """Whether statistics over ``axes`` take the channels together (None: all axes)."""
        raise NotImplementedError

    def _input_id(self) -> str:
        raise NotImplementedError


class _V04(_Reader):
    """Format 0.4: axes as letters (``bcyx``), shapes as lists or ``min`` and ``step``
    lists, processing by ``name`` with a ``mode``, axes of statistics as letters."""

    def _architecture(self, entry: dict[str, Any]) -> dict[str, Any]:
        # "unet.py:UNet2d" (a file of the package) or "package.module.UNet2d" (a library's)
        given = str(entry.get("architecture") or "")
        found: dict[str, Any] = {"kwargs": entry.get("kwargs")}
        if ":" in given:
            name, found["callable"] = given.rsplit(":", 1)
            found |= {"file": name, "sha256": entry.get("architecture_sha256")}
        elif "." in given:
            found["import_from"], found["callable"] = given.rsplit(".", 1)
        else:
            raise self._no_architecture()
        return found

    def _layout(self, tensor: dict[str, Any]) -> list[str]:
        return list(str(tensor.get("axes", "")))

    def _sizes(self) -> list[Any]:
        shape = self.input.get("shape")
        if isinstance(shape, list):
            return [int(s) for s in shape]
        if isinstance(shape, dict) and "min" in shape:
            return [
                int(m) if not s else (int(m), int(s))
                for m, s in zip(shape["min"], shape.get("step") or [0] * 5, strict=False)
            ]
        raise ModelLoadError(f"{self.path}: its input has no shape; the package is not valid")

    def _steps(self, tensor: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        key = "preprocessing" if tensor is self.input else "postprocessing"
        return [(str(s.get("name")), dict(s.get("kwargs") or {})) for s in tensor.get(key) or []]

    def _halo(self) -> list[int]:
        layout = self._layout(self.output)
        shape = self.output.get("shape")
        if isinstance(shape, dict):
            scale, offset = shape.get("scale") or [], shape.get("offset") or []
            for axis, k, d in zip(layout[2:], scale[2:], offset[2:], strict=False):
                if float(k) != 1.0 or float(d) != 0.0:
                    raise self._resized(axis, shape)
        elif not isinstance(shape, list) or shape[2:] != self._sizes()[2:]:
            raise self._resized("".join(layout[2:]), shape)  # fixed: the fixed input's
        halo = self.output.get("halo") or [0] * len(layout)
        return [int(h) for h in halo[2:]]

    def _joint(self, axes: Any) -> bool:
        return axes is None or "c" in str(axes)

    def _input_id(self) -> str:
        return str(self.input.get("name"))


class _V05(_Reader):
    """Format 0.5: axes as a list of typed axes with their sizes, halos, channel names
    and scales; processing by ``id``; axes of statistics by their ids."""

    def _architecture(self, entry: dict[str, Any]) -> dict[str, Any]:
        given = entry.get("architecture")
        if not isinstance(given, dict) or not given.get("callable"):
            raise self._no_architecture()
        found: dict[str, Any] = {"callable": str(given["callable"]), "kwargs": given.get("kwargs")}
        if given.get("source"):
            found |= {"file": str(given["source"]), "sha256": given.get("sha256")}
        elif given.get("import_from"):
            found["import_from"] = str(given["import_from"])
        else:
            raise self._no_architecture()
        return found

    def _typed(self, tensor: dict[str, Any]) -> list[dict[str, Any]]:
        return [a if isinstance(a, dict) else {} for a in tensor.get("axes") or []]

    def _layout(self, tensor: dict[str, Any]) -> list[str]:
        letters = {"batch": "b", "channel": "c"}
        return [
            letters.get(a.get("type", ""), str(a.get("id", a.get("type"))))
            for a in self._typed(tensor)
        ]

    def _sizes(self) -> list[Any]:
        sizes: list[Any] = []
        for axis in self._typed(self.input):
            if axis.get("type") == "batch":
                sizes.append(1)
            elif axis.get("type") == "channel":
                sizes.append(len(axis.get("channel_names") or []) or int(axis.get("size", 0)))
            else:
                size = axis.get("size")
                if isinstance(size, int):
                    sizes.append(size)
                elif isinstance(size, dict) and "min" in size and "step" in size:
                    sizes.append((int(size["min"]), int(size["step"])))
                else:
                    raise ModelLoadError(
                        f"{self.path}: its input's {axis.get('id')} axis has size {size}; "
                        f"raysegment needs a fixed size or min and step"
                    )
        return sizes

    def _steps(self, tensor: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        key = "preprocessing" if tensor is self.input else "postprocessing"
        return [(str(s.get("id")), dict(s.get("kwargs") or {})) for s in tensor.get(key) or []]

    def _halo(self) -> list[int]:
        out = []
        inputs = {str(a.get("id")): a for a in self._typed(self.input)[2:]}
        for axis in self._typed(self.output)[2:]:
            name, size = str(axis.get("id")), axis.get("size")
            source = inputs.get(name, {})
            same = (
                size == source.get("size")
                if not isinstance(size, dict)
                else size.get("axis_id") == name and not size.get("offset")
            )
            if not same or float(axis.get("scale", 1.0)) != float(source.get("scale", 1.0)):
                raise self._resized(name, size)
            out.append(int(axis.get("halo", 0)))
        return out

    def _one_a_batch(self) -> bool:
        return self._typed(self.input)[0].get("size") == 1

    def _channel_names(self) -> list[str] | None:
        channel = self._typed(self.output)[1]
        names = channel.get("channel_names")
        return [str(n) for n in names] if names else None

    def _pixel(self) -> dict[str, Any]:
        space = self._typed(self.input)[2:]
        units = {a.get("unit") for a in space}
        if len(units) != 1 or None in units:
            return {}
        pixel = {str(a["id"]): float(a.get("scale", 1.0)) for a in space}
        return {"pixel_size": pixel, "pixel_unit": str(units.pop())}

    def _joint(self, axes: Any) -> bool:
        return axes is None or "channel" in [str(a) for a in axes]

    def _input_id(self) -> str:
        return str(self.input.get("id", "input"))


def build_architecture(path: str, architecture: dict[str, Any]) -> Any:
    """The network a state dict's ``architecture`` (``_Reader.architecture``) describes,
    built as bioimageio.core builds it: the callable of the package's file (its code run
    as a module of its own) or of an installed module, called with the kwargs.

    Raises:
        ModelLoadError: the module is not installed, the code fails, or the callable is
            missing or gives no torch module.
    """
    import importlib
    import types

    import torch

    name = architecture["callable"]
    if "code" in architecture:
        digest = hashlib.sha256(architecture["code"].encode()).hexdigest()[:16]
        where = f"{architecture['file']}:{name}"
        module = types.ModuleType(f"raysegment_architecture_{digest}")
        module.__file__ = architecture["file"]
        try:
            exec(compile(architecture["code"], architecture["file"], "exec"), module.__dict__)
        except Exception as e:
            raise ModelLoadError(
                f"{path}: the package's {architecture['file']} fails ({type(e).__name__}: {e})"
            ) from e
    else:
        where = f"{architecture['import_from']}.{name}"
        try:
            module = importlib.import_module(architecture["import_from"])
        except ImportError as e:
            raise ModelLoadError(
                f"{path}: its architecture comes from {architecture['import_from']}, which is "
                f"not installed ({e}); install the package that provides it"
            ) from e
    build = getattr(module, name, None)
    if not callable(build):
        raise ModelLoadError(f"{path}: its architecture {where} is not there")
    try:
        network = build(**architecture["kwargs"])
    except Exception as e:
        raise ModelLoadError(
            f"{path}: its architecture {where} fails with its kwargs ({type(e).__name__}: {e})"
        ) from e
    if not isinstance(network, torch.nn.Module):
        raise ModelLoadError(f"{path}: its architecture {where} gives no torch module")
    return network
