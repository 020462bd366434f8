"""``raysegment infer`` on a simulated node: a private local Ray started with as many
logical CPUs and GPUs as asked, on this machine, then the command as the CLI runs it.

Where CUDA is absent the GPU predictors run their model on the CPU, while everything
else is what a GPU node of that many cores runs: the read and write tasks beside the
predictors, their worker processes, the object store. ``memory.py --node`` measures a
GPU node's memory this way on a machine without one.

    python benchmarks/simulated_node.py CPUS GPUS infer key=value ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(cpus: int, gpus: int, argv: list[str]) -> int:
    import ray

    from raysegment.cli import main as raysegment
    from raysegment.runtime import LOCAL_RAY_CONFIG, local_ray_environment

    # As ``start_ray`` starts a private local Ray, with the node's resources given.
    with local_ray_environment():
        ray.init(
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            logging_level="ERROR",
            _system_config=dict(LOCAL_RAY_CONFIG),
        )
    try:
        return raysegment(argv)
    finally:
        ray.shutdown()


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    sys.exit(main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]))
