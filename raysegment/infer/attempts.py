"""A cap on how often a block is retried after the process running it died.

Ray Data restarts a dead predictor actor and retries a failed task without limit, which is
right for a lost node or a one-off crash, and a hang for a block that kills its process
every time (out of memory on one huge block, a crash in native code on one corrupt tile).
Every stage asks the run's ``AttemptLedger`` before it works on a block; once a block has
used its attempts, the stage hands it on as an error row naming the block and why its
processes died, and the driver stops the run with that one line.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AttemptLedger",
    "Attempts",
    "begin_attempt",
    "death_cause",
    "device_label",
    "pin_gpu",
    "start_ledger",
]


class AttemptLedger:
    """Ray actor: per (run, stage, block), the pids of the processes that began it; per
    run, the devices its predictors hold (for the summary) and the GPU index each
    predictor of each node was given (``device=1,3,6`` on a cluster)."""

    def __init__(self) -> None:
        self._pids: dict[tuple[str, str, str], list[int]] = {}
        self._devices: dict[str, list[str]] = {}
        self._gpus: dict[tuple[str, str], dict[str, int]] = {}

    def claim_gpu(self, run: str, node: str, actor: str, indices: list[int]) -> int:
        """The GPU index ``actor`` on ``node`` uses: the one it had before (Ray restarts an
        actor under the same id), else the least used of ``indices`` on that node."""
        claims = self._gpus.setdefault((run, node), {})
        if actor not in claims:
            used = [list(claims.values()).count(i) for i in indices]
            claims[actor] = indices[used.index(min(used))]
        return claims[actor]

    def register(self, run: str, device: str) -> None:
        self._devices.setdefault(run, []).append(device)

    def devices(self, run: str) -> list[str]:
        return sorted(self._devices.get(run, []))

    def begin(self, run: str, stage: str, key: str, pid: int) -> list[int]:
        """Record an attempt; returns the pids of every attempt so far, this one last."""
        pids = self._pids.setdefault((run, stage, key), [])
        pids.append(pid)
        return list(pids)

    def forget(self, run: str) -> None:
        self._pids = {k: v for k, v in self._pids.items() if k[0] != run}
        self._gpus = {k: v for k, v in self._gpus.items() if k[0] != run}
        self._devices.pop(run, None)


@dataclass(frozen=True)
class Attempts:
    """What a stage needs to count its attempts: the ledger, this run's id, the cap."""

    ledger: Any
    run: str
    max_attempts: int


_LEDGERS: dict[str, Any] = {}
"""One ledger per Ray job, created on first use; the handle kept here keeps it alive for
the job's later runs (an actor dies with its last handle)."""


def start_ledger(max_attempts: int) -> Attempts:
    """The ledger of this Ray job, for a new run."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    context = ray.get_runtime_context()
    job = f"{context.gcs_address}/{context.get_job_id()}"
    if job not in _LEDGERS:
        # On the driver's node: a worker node may leave (the autoscaler removes idle
        # GPU nodes), and the ledger would go with it.
        here = NodeAffinitySchedulingStrategy(context.get_node_id(), soft=False)
        _LEDGERS[job] = (
            ray.remote(num_cpus=0)(AttemptLedger).options(scheduling_strategy=here).remote()
        )
    return Attempts(_LEDGERS[job], uuid.uuid4().hex, max_attempts)


def pin_gpu(attempts: Attempts, indices: tuple[int, ...]) -> int:
    """Claim one of the GPU ``indices`` of this node for the calling actor and make it the
    only GPU the process sees; call before CUDA is initialized.

    Ray hands each actor a GPU of its own choosing: the index is picked here instead, so
    that ``device=1,3,6`` uses GPUs 1, 3 and 6 of every node, whatever Ray assigned.
    """
    import ray

    context = ray.get_runtime_context()
    claim = attempts.ledger.claim_gpu.remote(
        attempts.run, context.get_node_id(), context.get_actor_id(), list(indices)
    )
    index = int(ray.get(claim))
    os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    return index


def device_label(gpu: int | None = None) -> str:
    """Where the calling actor runs: its node and its GPU (``gpu``, else the GPUs Ray
    assigned it), or CPU."""
    import ray

    context = ray.get_runtime_context()
    gpus = [str(gpu)] if gpu is not None else context.get_accelerator_ids().get("GPU", [])
    node = f"node {context.get_node_id()[:8]} ({ray.util.get_node_ip_address()})"
    return f"{node} GPU {','.join(gpus)}" if gpus else f"{node} CPU"


def death_cause(pid: int) -> str:
    """Why Ray's control store says worker ``pid`` exited, or where to look instead."""
    import ray

    logs = ray._private.worker.global_worker.node.get_logs_dir_path()
    try:  # the GCS worker table; the public state API would need the dashboard
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        for raw in state._connect_and_get_accessor().get_worker_table():
            worker = gcs_pb2.WorkerTableData.FromString(raw)  # type: ignore[attr-defined]
            if worker.pid == pid and not worker.is_alive and worker.exit_detail:
                field = worker.DESCRIPTOR.fields_by_name["exit_type"]
                kind = field.enum_type.values_by_number[worker.exit_type].name
                detail = ". ".join(worker.exit_detail.split(". ")[:2]).rstrip(".")
                return f"{kind}: {detail}; worker logs in {logs}"
    except Exception:  # private API of this Ray version: fall back to the logs
        pass
    return f"worker logs of pid {pid} in {logs}"


def begin_attempt(attempts: Attempts, stage: str, key: str) -> str | None:
    """Record that this process begins ``key`` in ``stage``.

    Returns:
        None to go ahead; otherwise the reason the block must not be tried again: it was
        begun ``max_attempts`` times and every process that began it died.
    """
    import ray

    pids = ray.get(attempts.ledger.begin.remote(attempts.run, stage, key, os.getpid()))
    if len(pids) <= attempts.max_attempts:
        return None
    return (
        f"the {stage} process died {attempts.max_attempts} time(s) running it "
        f"({death_cause(pids[-2])}); "
        f"give each worker more memory (fewer actors=, smaller block= or batch_size=) "
        f"or fix the input there, then rerun the same command to resume"
    )
