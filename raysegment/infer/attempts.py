"""A cap on how often a block is retried after the process running it died.

Ray Data restarts a dead predictor actor and retries a failed task without limit, which is
right for a lost node or a one-off crash, and a hang for a block that kills its process
every time (out of memory on one huge block, a crash in native code on one corrupt tile).
Every stage records in Ray's control store that it begins a block (``begin_attempt``), so
the count outlives the processes; once a block has used its attempts, the stage hands it
on as an error row naming the block and why its processes died, and the driver stops the
run with that one line.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Attempts",
    "begin_attempt",
    "claim_gpu",
    "death_cause",
    "device_label",
    "devices",
    "forget",
    "pin_gpu",
    "register_device",
    "start_ledger",
]


NAMESPACE = "raysegment"
"""The namespace of the records in Ray's control store (its internal key-value store)."""


def _kv() -> Any:
    """Ray's internal key-value store, in its control store (GCS): every process of the
    cluster reaches it with one request, and it outlives any of them but the head."""
    from ray.experimental import internal_kv

    return internal_kv


def _put_new(key: str, value: str) -> bool:
    """Store ``value`` at ``key`` unless the key exists (one atomic request); whether it
    was stored."""
    return not _kv()._internal_kv_put(key, value, overwrite=False, namespace=NAMESPACE)


def _keys(prefix: str) -> list[str]:
    return [k.decode() for k in _kv()._internal_kv_list(prefix, namespace=NAMESPACE)]


def _get(key: str) -> str:
    return bytes(_kv()._internal_kv_get(key, namespace=NAMESPACE)).decode()


def _append(prefix: str, value: str) -> int:
    """Store ``value`` as the next of the numbered entries under ``prefix`` (concurrent
    callers each get a number of their own); its number. Taken from 0 up, a request per
    number already taken (a block's attempts, a node's predictors: a few), not counted
    from a listing: the store lists a prefix by scanning all its keys, which grow with
    the run's blocks."""
    n = 0
    while not _put_new(f"{prefix}{n}", value):
        n += 1
    return n


@dataclass(frozen=True)
class Attempts:
    """What a stage needs to count its attempts: this run's id, the cap. The run's records
    are in Ray's control store, not in a process of the run: per block and stage, the
    pids of the processes that began it; the devices its predictors hold (for the
    summary); the GPU index each predictor of each node was given (``device=1,3,6``). A
    run removes them as it ends (``forget``); one whose driver was killed leaves them in a
    cluster's control store until the cluster stops (~100 bytes per block and stage
    begun; a private local Ray stops with its driver)."""

    run: str
    max_attempts: int


def start_ledger(max_attempts: int) -> Attempts:
    """The records of a new run (``forget`` removes them)."""
    return Attempts(uuid.uuid4().hex, max_attempts)


def forget(attempts: Attempts) -> None:
    _kv()._internal_kv_del(f"{attempts.run}/", del_by_prefix=True, namespace=NAMESPACE)


def _caller() -> str:
    """The calling actor's id (the same after Ray restarts it), else this process's pid."""
    import ray

    return ray.get_runtime_context().get_actor_id() or str(os.getpid())


def register_device(attempts: Attempts, label: str) -> None:
    """Record where the calling predictor runs (a restarted one keeps one entry)."""
    key = f"{attempts.run}/device/{_caller()}"
    _kv()._internal_kv_put(key, label, namespace=NAMESPACE)


def devices(attempts: Attempts) -> list[str]:
    """Where the run's predictors ran (``register_device``), sorted."""
    return sorted(_get(k) for k in _keys(f"{attempts.run}/device/"))


def claim_gpu(attempts: Attempts, node: str, actor: str, indices: list[int]) -> int:
    """The GPU index ``actor`` on ``node`` uses: the one it had before (Ray restarts an
    actor under the same id), else the next of ``indices`` in turn on that node (as each
    actor keeps its own, the least used)."""
    mine = f"{attempts.run}/gpu/{node}/{actor}"
    if not _kv()._internal_kv_exists(mine, namespace=NAMESPACE):
        turn = _append(f"{attempts.run}/gpu-turn/{node}/", actor)
        _put_new(mine, str(indices[turn % len(indices)]))
    return int(_get(mine))


def pin_gpu(attempts: Attempts, indices: tuple[int, ...]) -> int:
    """Claim one of the GPU ``indices`` of this node for the calling actor and make it the
    only GPU the process sees; call before CUDA is initialized.

    Ray hands each actor a GPU of its own choosing: the index is picked here instead, so
    that ``device=1,3,6`` uses GPUs 1, 3 and 6 of every node, whatever Ray assigned.
    """
    import ray

    index = claim_gpu(attempts, ray.get_runtime_context().get_node_id(), _caller(), list(indices))
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
    prefix = f"{attempts.run}/attempt/{stage}/{key}/"
    n = _append(prefix, str(os.getpid()))
    if n < attempts.max_attempts:
        return None
    return (
        f"the {stage} process died {attempts.max_attempts} time(s) running it "
        f"({death_cause(int(_get(f'{prefix}{n - 1}')))}); "
        f"give each worker more memory (fewer actors=, smaller block= or batch_size=) "
        f"or fix the input there, then rerun the same command to resume"
    )
