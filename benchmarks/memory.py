"""Where a run's memory is: each process of a ``raysegment infer`` process tree at the
moment the whole tree's memory peaks (PSS, split into anonymous, shared and file pages
where Linux gives ``/proc/<pid>/smaps_rollup``), sampled every 0.5 s. Processes are
grouped by the title Ray gives them (``ray::IDLE``, ``ray::MapBatches(read_stage)``, ...);
every process running the model is a ``predictor``.

    python benchmarks/memory.py INPUT MODEL [key=value ...]   # one JSON line

The command runs as ``benchmarks/run.py`` runs it (512 tiles, overlap 0.25, masks out,
``actors=2 threads=1 batch_size=1`` unless overridden), into a temporary directory.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import OVERLAP, TILE, _product_env, _pss  # noqa: E402

DAEMONS = ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py")


def _role(process: psutil.Process) -> str:
    try:
        title = " ".join(process.cmdline())
    except psutil.Error:
        return "gone"
    daemon = next((d for d in DAEMONS if d in title), None)
    if daemon:
        return daemon
    if "Predictor" in title:
        return "predictor"
    if "raysegment.cli" in title:
        return "driver"
    return title.split()[0][:48] if title.startswith("ray::") else title[:48]


def _split(pid: int) -> dict[str, int]:
    """Anonymous, shared-memory (Ray's object store) and file-backed PSS of a process."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            key = line.split(":")[0]
            if key in ("Pss_Anon", "Pss_Shmem", "Pss_File"):
                out[key.removeprefix("Pss_").lower()] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return out


def measure(image: str, model: str, *keys: str) -> dict[str, object]:
    """Run the command; the tree's peak and each group's PSS at that moment (GiB)."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable,
            *("-m", "raysegment.cli", "infer"),
            f"input={image}",
            f"model={model}",
            f"output={out}",
            *("progress=false", "quicklook=false", "finalize.mode=mask"),
            *(f"tile.size={TILE}", f"tile.overlap={OVERLAP}"),
            *("actors=2", "threads=1", "batch_size=1"),
            *keys,
        ]
        start = time.perf_counter()
        proc = subprocess.Popen(command, env=_product_env(), stdout=subprocess.PIPE)
        peak, at_peak = 0, {}
        while proc.poll() is None:
            try:
                root = psutil.Process(proc.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            groups: collections.Counter[str] = collections.Counter()
            kinds: collections.Counter[str] = collections.Counter()
            for process in processes:
                role = _role(process)
                groups[role] += _pss(process.pid)
                for kind, size in _split(process.pid).items():
                    kinds[f"{role}: {kind}"] += size
            total = sum(groups.values())
            if total > peak:
                peak, at_peak = total, dict(groups) | dict(kinds)
            time.sleep(0.5)
        proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"raysegment infer exited {proc.returncode}")
    gib = 2**30
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_gib": round(peak / gib, 3),
        "at_peak_gib": {
            k: round(v / gib, 3) for k, v in sorted(at_peak.items(), key=lambda kv: -kv[1])
        },
    }


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    print(json.dumps(measure(*sys.argv[1:])))
