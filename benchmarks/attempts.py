"""What counting a block's attempt costs (``raysegment.infer.attempts.begin_attempt``, a
request or more to Ray's control store per block and stage) against how many records the
store holds already (a large run's blocks).

    python benchmarks/attempts.py [--stored 1000 20000] [--begins 1000]

Starts a local Ray (one CPU), stores ``--stored`` attempts of one run, then times
``--begins`` first attempts of new blocks and prints the mean per begin, so two versions
(``PYTHONPATH=<other checkout>``) can be compared.
"""

from __future__ import annotations

import argparse
import time

import ray

from raysegment.infer.attempts import begin_attempt, forget, start_ledger


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, nargs="+", default=[1000, 20000])
    parser.add_argument("--begins", type=int, default=1000)
    args = parser.parse_args()
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        for stored in args.stored:
            run = start_ledger(3)
            for i in range(stored):
                begin_attempt(run, "read", f"0/t0z0b{i}")
            start = time.perf_counter()
            for i in range(args.begins):
                begin_attempt(run, "predictor", f"0/t0z0b{i}")
            seconds = (time.perf_counter() - start) / args.begins
            print(f"{stored} stored: {seconds * 1e3:.3f} ms per begin", flush=True)
            forget(run)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
