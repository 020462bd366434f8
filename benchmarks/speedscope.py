"""What a py-spy profile says (``py-spy record --subprocesses [--idle] -f speedscope``):
per thread of each process, the seconds it was sampled and the calls that took the most
of them, inclusive (each function counted once per sample).

    python benchmarks/speedscope.py PROFILE.json [--top 12] [--min 0.5] [--match TEXT]

``--match``: only threads that ran a function or file whose name holds TEXT (e.g.
``predictor.py``: the predictors' threads); ``--min``: threads sampled at least that many
seconds.
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path
from typing import Any


def summarize(profile: dict[str, Any], top: int, least: float, match: str) -> list[str]:
    # A function by its name and file (py-spy gives a frame per line).
    names = [f"{f['name']} ({Path(f.get('file', '')).name})" for f in profile["shared"]["frames"]]
    lines = []
    for thread in profile["profiles"]:
        total = sum(thread["weights"])
        if total < least:
            continue
        inclusive: collections.Counter[str] = collections.Counter()
        for stack, weight in zip(thread["samples"], thread["weights"], strict=True):
            for name in {names[i] for i in stack}:
                inclusive[name] += weight
        if match and not any(match in name for name in inclusive):
            continue
        lines.append(f"== {thread['name'][:100]}: {total:.1f} s")
        shown = 0
        for name, seconds in inclusive.most_common():
            if name.startswith(("process ", "<module>", "_")) or "<frozen" in name:
                continue  # the process itself, imports' and the interpreter's own frames
            lines.append(f"  {seconds:7.2f} s  {name}")
            shown += 1
            if shown == top:
                break
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--min", type=float, default=0.5, dest="least")
    parser.add_argument("--match", default="")
    args = parser.parse_args()
    profile = json.loads(args.profile.read_text())
    print("\n".join(summarize(profile, args.top, args.least, args.match)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
