"""Where a ``raysegment infer`` (or ``train``) command's time goes: when each process of
its tree starts and which role Ray gives it (Ray names its workers' processes
``ray::<what runs>``), and the CPU each process takes while the predictor computes.

    python benchmarks/timeline.py input=slide.ome.tif model=unet.pth output=out [key=value ...]
    python benchmarks/timeline.py train images.dir=img labels.dir=lbl output=m [key=value ...]

Prints one line per process title seen (seconds since the command started, and since that
process started), then, over the seconds the predictor used more than 1.2 cores, each
process's share of a core, then the CPU seconds each process took over the whole command
(what a fixed cost is made of). Sampling every 0.1 s costs a few percent of one core.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import psutil
from memory import role

BUSY = 1.2
"""Cores a predictor uses while it runs tiles (2-thread CPU actors here: 1.5-1.9)."""


@dataclass
class Sample:
    at: float
    cpu: dict[int, float] = field(default_factory=dict)


def main(args: list[str]) -> int:
    sub, args = (args[0], args[1:]) if args and args[0] in ("infer", "train") else ("infer", args)
    command = [sys.executable, "-m", "raysegment.cli", sub, *args]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.time()
    proc = subprocess.Popen(command, env=env | {"PYTHONWARNINGS": "ignore"})
    titles: dict[int, str] = {}
    roles: dict[int, list[str]] = {}
    handles: dict[int, psutil.Process] = {}
    samples: list[Sample] = []
    while proc.poll() is None:
        sample = Sample(time.time() - start)
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:
            break
        for p in tree:
            p = handles.setdefault(p.pid, p)
            try:
                command = " ".join(p.cmdline())
                title = command[:80]
                times = p.cpu_times()
                created = p.create_time() - start
            except psutil.Error:
                continue
            if title and titles.get(p.pid) != title:
                titles[p.pid] = title
                name = role(command)
                if name not in roles.setdefault(p.pid, []):
                    roles[p.pid].append(name)
                print(f"{sample.at:7.2f} s  (process since {created:6.2f} s)  {p.pid}  {title}")
            sample.cpu[p.pid] = times.user + times.system
        samples.append(sample)
        time.sleep(0.1)
    print(f"{time.time() - start:7.2f} s  exit {proc.returncode}")
    if sub == "infer":
        _busy_window(samples, titles)
    _cpu_totals(samples, roles)
    return proc.returncode or 0


def _cpu_totals(samples: list[Sample], roles: dict[int, list[str]]) -> None:
    """CPU seconds of every process over the command, as last sampled (a process's last
    0.1 s before it exits is missed)."""
    last: dict[int, float] = {}
    for sample in samples:
        last.update(sample.cpu)
    print("CPU seconds per process over the whole command")
    for pid, seconds in sorted(last.items(), key=lambda kv: -kv[1]):
        if seconds >= 0.05:
            names = ", ".join(r for r in roles.get(pid, []) if r != "ray::IDLE") or "ray::IDLE"
            print(f"  {seconds:7.2f}  {pid}  {names[:70]}")
    print(f"  {sum(last.values()):7.2f}  all")


def _busy_window(samples: list[Sample], titles: dict[int, str]) -> None:
    predictors = [pid for pid, title in titles.items() if "Predictor" in title]
    if not predictors:
        print("no predictor process seen")
        return
    pid = predictors[0]
    busy = [
        (a, b)
        for a, b in zip(samples, samples[1:], strict=False)
        if pid in a.cpu and pid in b.cpu and (b.cpu[pid] - a.cpu[pid]) / (b.at - a.at) > BUSY
    ]
    if not busy:
        print(f"the predictor never used more than {BUSY} cores")
        return
    first, last = busy[0][0], busy[-1][1]
    span = last.at - first.at
    print(f"predictor busy from {first.at:.1f} to {last.at:.1f} s: share of one core")
    used = {q: last.cpu[q] - first.cpu.get(q, last.cpu[q]) for q in last.cpu}
    for q, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
        if seconds > 0.05 * span / 100:
            print(f"  {100 * seconds / span:6.1f}%  {q}  {titles.get(q, '')[:60]}")
    print(f"  {100 * sum(used.values()) / span:6.1f}%  all")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
