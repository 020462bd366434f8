"""``raysegment`` command line: parse, call, and turn user errors into one line + exit 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from raysegment._version import __version__
from raysegment.errors import ConfigError, RaySegmentError

USAGE = """usage: raysegment infer [CONFIG.yaml ...] [key=value ...]
       raysegment train [CONFIG.yaml ...] [key=value ...]
       raysegment package [CONFIG.yaml ...] [key=value ...]
       raysegment --version

Segment images larger than memory with a PyTorch model on Ray, train such a model, or
package a trained one for the BioImage Model Zoo.
Keys and defaults: conf/infer.yaml, conf/train.yaml, conf/package.yaml; e.g.
  raysegment infer input=slides/ pattern='.*\\.ome\\.tif' model=model_dir/ output=out/
  raysegment train images.dir=img/ labels.dir=lbl/ model.arch=Unet output=model_dir/
  raysegment package model=model_dir/ output=nuclei.zip authors='[Ada Lovelace]'
"""


def _split(args: Sequence[str]) -> tuple[list[str], list[str]]:
    files = [a for a in args if "=" not in a]
    overrides = [a for a in args if "=" in a]
    return files, overrides


def _infer(args: Sequence[str]) -> int:
    from raysegment.config import InferConfig, load_config
    from raysegment.infer.pipeline import infer

    files, overrides = _split(args)
    cfg = load_config(InferConfig, files, overrides)
    summary = infer(cfg)
    print(summary)
    if summary.devices:
        print(f"  predictors on: {'; '.join(summary.devices)}")
    if summary.seams:
        print(f"  block seams: {summary.seams}")
    if summary.fitted:
        print(f"  tiles: {summary.fitted}")
    if summary.levels:
        print(f"  levels: {summary.levels}")
    for out in summary.outputs:
        print(f"  {out}")
    return 0


def _train(args: Sequence[str]) -> int:
    from raysegment.config import TrainConfig, load_config

    files, overrides = _split(args)
    cfg = load_config(TrainConfig, files, overrides)
    try:
        from raysegment.train import train
    except ImportError as e:
        raise ConfigError(
            f"training needs the train extra ({e.name} is missing): pip install 'raysegment[train]'"
        ) from e
    summary = train(cfg)
    print(summary)
    return 0


def _package(args: Sequence[str]) -> int:
    from raysegment.config import PackageConfig, load_config
    from raysegment.train.package import package

    files, overrides = _split(args)
    print(f"raysegment: wrote {package(load_config(PackageConfig, files, overrides))}")
    return 0


COMMANDS = {"infer": _infer, "train": _train, "package": _package}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] == "--version":
        print(f"raysegment {__version__}")
        return 0
    # Readers log what they then raise; the error line below says it once.
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)
    command = COMMANDS.get(args[0])
    if command is None:
        print(
            f"raysegment: unknown command {args[0]!r}; choose from {sorted(COMMANDS)}",
            file=sys.stderr,
        )
        return 2
    try:
        return command(args[1:])
    except RaySegmentError as e:
        print(f"raysegment: error: {e}", file=sys.stderr)
        return 2


def run() -> None:
    """The ``raysegment`` command: ``main``, then exit without the interpreter's teardown.

    By then every output is written and Ray is shut down; what remains is finalizing the
    native libraries of Ray and torch, 1.1 s of every run here (measured after the last
    exit handler). An exception (a bug) still exits normally, traceback included.
    """
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
