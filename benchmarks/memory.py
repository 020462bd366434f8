"""Where a run's memory is: each process of a ``raysegment infer`` process tree at the
moment the whole tree's memory peaks (PSS, split into anonymous, shared and file pages
where Linux gives ``/proc/<pid>/smaps_rollup``), sampled every 0.5 s. Processes are
grouped by the title Ray gives them (``ray::IDLE``, ``ray::MapBatches(read_stage)``, ...);
every process running the model is a ``predictor``.

    python benchmarks/memory.py INPUT MODEL [key=value ...]   # one JSON line
    python benchmarks/memory.py --seconds 60 INPUT MODEL ...    # its first 60 s only
    python benchmarks/memory.py --node 16,1 INPUT MODEL device=gpu ...  # a simulated node
    python benchmarks/memory.py --stages SLIDE.ome.tif         # what the stages' trim saves

The command runs as ``benchmarks/run.py`` runs it (512 tiles, overlap 0.25, masks out,
``actors=2 threads=1 batch_size=1`` unless overridden), into a temporary directory.
``--stages``: anonymous memory of one process after each of eight 4096^2 uint8 block
writes (zarr, 1024^2 chunks) and eight 4608^2 reads of SLIDE (a uint16 OME-TIFF of at
least 8704^2), each with and without the trim the read and write stages end with.
"""

from __future__ import annotations

import collections
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

DAEMONS = ("gcs_server", "raylet", "dashboard", "log_monitor", "runtime_env", "monitor.py")


def role(command: str) -> str:
    """The group a process counts in, from its command line (Ray retitles its workers
    ``ray::<what runs>``): a Ray daemon (by its program or script: a worker's arguments
    name the raylet too), ``predictor``, ``driver``, ``ray::<class or function>`` (its
    methods together), else the script it runs."""
    words = command.split() or ["?"]
    script = next((w for w in words if w.endswith(".py")), words[0])
    retitled = command.startswith("ray::")
    daemon = next((d for d in DAEMONS if d in f"{words[0]} {script}"), None)
    if daemon and not retitled:
        return daemon
    if "Predictor" in command:
        return "predictor"
    if "raysegment.cli" in command or "simulated_node.py" in command:
        return "driver"
    return words[0].split(".")[0] if retitled else script.rsplit("/", 1)[-1]


def _role(process: psutil.Process) -> str:
    try:
        return role(" ".join(process.cmdline()))
    except psutil.Error:
        return "gone"


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


def measure(
    image: str, model: str, *keys: str, seconds: float = math.inf, node: str = ""
) -> dict[str, object]:
    """Run the command (interrupted after ``seconds``: a slow model's start, how far its
    reads run ahead; ``node``: "CPUS,GPUS", on a simulated node of those, see
    ``simulated_node.py``); the tree's peak, and each group's PSS (GiB) and processes at
    that moment."""
    # torch too: not in --stage runs
    from run import OVERLAP, TILE, _product_env, _pss, raysegment_command

    with tempfile.TemporaryDirectory() as out:
        command = [
            *raysegment_command(node),
            "infer",
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
        processes_at_peak: collections.Counter[str] = collections.Counter()
        while proc.poll() is None and time.perf_counter() - start < seconds:
            try:
                root = psutil.Process(proc.pid)
                processes = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            groups: collections.Counter[str] = collections.Counter()
            kinds: collections.Counter[str] = collections.Counter()
            counts: collections.Counter[str] = collections.Counter()
            for process in processes:
                role = _role(process)
                groups[role] += _pss(process.pid)
                counts[role] += 1
                for kind, size in _split(process.pid).items():
                    kinds[f"{role}: {kind}"] += size
            total = sum(groups.values())
            if total > peak:
                peak, at_peak, processes_at_peak = total, dict(groups) | dict(kinds), counts
            time.sleep(0.5)
        interrupted = proc.poll() is None
        if interrupted:  # stopped as Ctrl-C stops it: Ray shuts down cleanly
            proc.send_signal(signal.SIGINT)
        proc.communicate()
        if proc.returncode != 0 and not interrupted:
            raise RuntimeError(f"raysegment infer exited {proc.returncode}")
    gib = 2**30
    return {
        "seconds": round(time.perf_counter() - start, 1),
        "peak_gib": round(peak / gib, 3),
        "at_peak_gib": {
            k: round(v / gib, 3) for k, v in sorted(at_peak.items(), key=lambda kv: -kv[1])
        },
        "processes_at_peak": dict(processes_at_peak.most_common()),
    }


def _anon_mib() -> int:
    return _split(os.getpid()).get("anon", 0) >> 20


def stage_heap(kind: str, trim: bool, slide: str) -> list[int]:
    """In this process: anonymous MiB after each of eight block writes or reads."""
    import numpy as np
    import zarr

    from raysegment.data.sources import open_source
    from raysegment.infer import stages
    from raysegment.infer.writer import write_block

    after = []
    with tempfile.TemporaryDirectory() as work:
        if kind == "write":
            group = zarr.open_group(f"{work}/out.zarr", mode="w")
            group.create_array("0", shape=(8192, 16384), chunks=(1024, 1024), dtype="uint8")
            block = (np.random.default_rng(0).random((4096, 4096)) > 0.7).astype(np.uint8)
        else:
            source = open_source(slide)

        def step(y: int, x: int) -> None:
            if kind == "write":
                write_block(f"{work}/out.zarr", (slice(y, y + 4096), slice(x, x + 4096)), block)
            else:
                source.read(0, (0,), ((0, 1), (y, y + 4608), (x, x + 4608)))

        # With the trim exactly as the stages run it.
        run = stages.returns_free_memory(step) if trim else step  # type: ignore[arg-type]
        for i in range(8):
            run((i // 4) * 4096, (i % 4) * 4096)
            after.append(_anon_mib())
    return after


if __name__ == "__main__":
    if sys.argv[1:2] == ["--stage"]:  # one case, in a fresh process
        print(json.dumps(stage_heap(sys.argv[2], sys.argv[3] == "trim", sys.argv[4])))
    elif sys.argv[1:2] == ["--stages"] and len(sys.argv) == 3:
        for kind in ("write", "read"):
            for trim in ("plain", "trim"):
                case = [sys.executable, __file__, "--stage", kind, trim, sys.argv[2]]
                result = subprocess.run(case, capture_output=True, text=True, check=True)
                print(f"{kind} {trim}: anonymous MiB after each block {result.stdout.strip()}")
    else:
        args, options = sys.argv[1:], {"--seconds": "inf", "--node": ""}
        while args[:1] and args[0] in options and len(args) >= 2:
            options[args[0]] = args[1]
            args = args[2:]
        if len(args) < 2:
            sys.exit(__doc__)
        seconds, node = float(options["--seconds"]), options["--node"]
        print(json.dumps(measure(*args, seconds=seconds, node=node)))
