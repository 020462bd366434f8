"""Fault injection into the Ray worker processes of a ``raysegment`` subprocess.

``install(directory, module, patch)`` writes a ``sitecustomize.py`` that Python imports at
start-up when ``directory`` is on PYTHONPATH. In Ray worker processes only, and only once
the worker itself imports ``module`` (a worker that never needs it starts as fast as
before), it runs ``patch`` with the module as ``m``: the patch replaces a function of the
module by one that kills the process at chosen moments, as an out-of-memory kill or a
segfault would (``os._exit``: no exception, no cleanup).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

_TEMPLATE = """
import importlib.abc, importlib.util, sys

TARGET = {module!r}


def _patch(m):
{patch}


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


if any(arg.endswith("default_worker.py") for arg in sys.argv):
    sys.meta_path.insert(0, _Finder())
"""


def install(directory: Path, module: str, patch: str) -> Path:
    """Write ``directory/sitecustomize.py``; returns ``directory`` for PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    body = textwrap.indent(textwrap.dedent(patch).strip(), "    ")
    (directory / "sitecustomize.py").write_text(_TEMPLATE.format(module=module, patch=body))
    return directory
