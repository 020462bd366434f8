"""Joining or starting Ray, shared by ``infer`` and ``train`` (imports Ray lazily)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, TypeVar

__all__ = [
    "LOCAL_RAY_CONFIG",
    "LOCAL_RAY_ENV",
    "TORCH_WORKER_ENV",
    "RayStart",
    "import_ray_data",
    "local_ray_environment",
    "model_runtime_env",
    "node_cpus",
    "quiet_ray_data",
    "start_ray",
    "start_ray_while",
    "stop_ray",
    "torch_worker_runtime_env",
]

T = TypeVar("T")


TORCH_WORKER_ENV = {
    # glibc's malloc in the processes that run models: one arena, and large blocks kept in
    # the heap rather than mapped and returned per allocation. A forward pass frees and
    # reallocates the same activation buffers; by default each comes back as fresh pages
    # faulted in by the kernel: a third of a CPU Unet forward's time here (0.17 -> 0.12-0.14
    # s per 512^2 tile with these, on a non-main thread; benchmarks/forward.py). A
    # predictor hands the freed heap back after each block (``Predictor.__call__``).
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(4 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(4 << 30),
}


LOCAL_RAY_CONFIG = {
    # Ray starts its workers at nice 15, below its own processes and the driver. On a
    # machine where the predictors' threads take every core, each wake-up of those
    # processes then preempts a model thread outright and its partner threads spin at the
    # next barrier: same-priority workers made a CPU run 3% faster here (8192^2 Unet, one
    # actor x 2 threads, five alternating pairs: 75.9 -> 73.5 s mean, none slower).
    "worker_niceness": 0,
    # Ray stops a worker process idle for 1 s once more processes run than CPUs (a
    # training run's workers, controller and helper actors). The tasks reading each
    # epoch's patches went idle between epochs: two processes stopped and two started
    # (~2.5 CPU-s each here) every epoch. Kept 10 s, they serve the next epoch: a 3-epoch
    # two-worker training test took 80 -> 67 CPU-s (benchmarks/HISTORY.md, session 43).
    "idle_worker_killing_time_threshold_ms": 10000,
}
"""Ray settings of the private local Ray ``start_ray`` starts (a cluster joined keeps its
own)."""


LOCAL_RAY_ENV = {
    # Where Ray's state API (a dashboard service) answers. A private local Ray runs none,
    # yet Ray Train asks it about its own controller every second (its placement-group
    # cleaner, which removes the run's placement group once the controller is reported
    # gone). Unset, a Ray process looks for "the" Ray of this machine: the cluster recorded
    # in <ray temp dir>/ray_current_cluster, else any running one. A stale record made
    # every query wait 40 s and every training run 12 s longer at its end (the cleaner
    # did not stop in time); another Ray running here answered that this run's controller
    # did not exist: the cleaner then gives up, or, had the workers' placement group been
    # registered first, removes it under them. Port 0 refuses at once: "no state API".
    "RAY_API_SERVER_ADDRESS": "http://127.0.0.1:0",
    # Ray Data's messages in the processes that run it (the training workers, which read
    # each epoch's patches): "Progress bars disabled ..." (a warning, as
    # ``quiet_ray_data`` disables them) and "Dataset ... execution finished in 0.4
    # seconds" for each dataset, every epoch, between the epoch lines. Errors still show,
    # as for Ray's own loggers in the workers (``start_ray``'s logging config).
    "RAY_DATA_LOG_LEVEL": "ERROR",
    # Ray Train's preemption watcher: an actor (a process more at every start of the
    # training workers, ~2 CPU-s here) that polls the control store for draining nodes, so
    # that a cluster's preempted node is reported. A private local Ray is this one node.
    # Its creation also printed an error line into every training run's output (Ray
    # warns that an actor restarted from arguments in the object store may fail to).
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    # Ray Train's controller learns that its workers finished by polling them, every 2 s
    # by default: a run ended up to 2 s after its last epoch. A poll is a call to each
    # worker of this one node: every 0.5 s costs nothing measurable. A 3-epoch training
    # command of the tests' size, three alternating pairs: 30.1 -> 27.4 s mean.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # The model processes' allocator settings, in every process of the private Ray: its
    # predictors and training workers then start as plain workers. A runtime environment
    # starts each through Ray's runtime-env agent and a process that imports Ray before
    # the worker itself: ~1 s more before a run's first tile here (``model_runtime_env``).
    # Ray's other processes keep freed heap as the model processes do; the read and write
    # tasks hand theirs back after each block (``returns_free_memory``).
    **TORCH_WORKER_ENV,
}
"""Environment of the private local Ray's processes (set while ``start_ray`` starts them;
its workers inherit it)."""

RayStart = Literal["local", "cluster", ""]
"""What ``start_ray`` did: started a private local Ray, joined a cluster, or nothing (Ray
was initialized by the caller, who also shuts it down)."""


def torch_worker_runtime_env() -> dict[str, dict[str, str]]:
    """Runtime environment of the Ray actors that run models (predictors, training
    workers): ``TORCH_WORKER_ENV``, set before the process starts, as glibc reads it once.
    Ray merges it with a submitted job's own environment."""
    return {"env_vars": dict(TORCH_WORKER_ENV)}


def model_runtime_env(started: RayStart) -> dict[str, Any] | None:
    """The runtime environment for the actors that run models on the Ray ``started``
    names: none on the private local Ray, whose processes all start with
    ``TORCH_WORKER_ENV`` (``LOCAL_RAY_ENV``), else ``torch_worker_runtime_env``."""
    return None if started == "local" else torch_worker_runtime_env()


def start_ray() -> RayStart:
    """Join the cluster ``RAY_ADDRESS`` names, else start a private local Ray.

    ``RAY_ADDRESS`` is host:port, or ``auto`` for a cluster started on this machine with
    ``ray start`` (``ray job submit`` sets it for its jobs). Without it a new local Ray is
    started, never a stale leftover cluster found on the machine.

    Returns:
        ``"local"`` (a private local Ray started) or ``"cluster"`` (joined): this caller
        shuts it down (``stop_ray``); ``""`` when Ray was already initialized by the caller.
    """
    import ray

    if ray.is_initialized():
        return ""
    address = os.environ.get("RAY_ADDRESS")
    root = logging.getLogger()
    level, handlers = root.level, root.handlers[:]
    with contextlib.nullcontext() if address else local_ray_environment():
        ray.init(
            address=address or "local",
            logging_level=logging.ERROR,
            include_dashboard=False,
            # Ray's own loggers in this job's workers: at their default level Ray Train's
            # placement-group cleaner warned once a second for a whole training run that
            # the state API (a dashboard service) was unavailable.
            logging_config=ray.LoggingConfig(log_level="ERROR"),
            # A copy: ray.init adds its own keys to the dict it is given.
            _system_config=None if address else dict(LOCAL_RAY_CONFIG),
        )
    # ray.init applies that logging config to this process too: the root logger (the
    # caller's own, where raysegment is used as a library) keeps its level and handlers.
    root.setLevel(level)
    root.handlers[:] = handlers
    return "cluster" if address else "local"


def stop_ray(started: RayStart) -> None:
    """Shut down the Ray ``start_ray`` started or joined (nothing for ``""``).

    A private local Ray's autoscaler monitor is stopped first. ``ray.shutdown`` stops the
    control store before it and then asks it to end; it answers by reporting its own end
    to that control store, gone by then, and Ray kills it after waiting 1 s: 1.0 of the
    1.2-1.4 s ``ray.shutdown`` took here. It has nothing to save (no autoscaling on a
    private Ray).
    """
    if not started:
        return
    import ray

    if started == "local":
        import psutil

        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                if any(_is_monitor(word) for word in child.cmdline()):
                    child.kill()
                    child.wait(10)
    ray.shutdown()


def _is_monitor(word: str) -> bool:
    """Whether a command-line word is the script of Ray's autoscaler monitor (Ray's
    ``autoscaler/_private/monitor.py``, or ``autoscaler/v2/monitor.py``)."""
    parts = word.replace(os.sep, "/").split("/")
    return parts[-1] == "monitor.py" and "autoscaler" in parts[-4:-1]


@contextlib.contextmanager
def local_ray_environment() -> Iterator[None]:
    """``LOCAL_RAY_ENV`` in this process's environment while a private local Ray starts
    (its processes inherit it); the caller's own environment after."""
    saved = {k: os.environ.get(k) for k in LOCAL_RAY_ENV}
    os.environ.update(LOCAL_RAY_ENV)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def node_cpus(node_id: str | None = None) -> int:
    """CPUs Ray gives the live node ``node_id``; by default the largest live node's (what
    one process's threads can use)."""
    import ray

    return int(
        max(
            (
                n["Resources"].get("CPU", 0)
                for n in ray.nodes()
                if n.get("Alive") and node_id in (None, n.get("NodeID"))
            ),
            default=0,
        )
    )


def start_ray_while(prepare: Callable[[], T]) -> tuple[RayStart, T]:
    """``start_ray`` on this thread while ``prepare`` runs on another: a local Ray's
    processes take seconds to boot (5 s on 2 cores), as long as opening a run's images and
    loading its model.

    Returns:
        What ``start_ray`` did, and what ``prepare`` returned. An error of ``prepare`` is
        raised once Ray is up, after shutting down a Ray started or joined here.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="raysegment-prepare") as executor:
        preparing = executor.submit(prepare)
        started = start_ray()
        try:
            return started, preparing.result()
        except BaseException:
            stop_ray(started)
            raise


def import_ray_data() -> None:
    """Import Ray Data and make its settings object (which imports Ray Data's issue
    detectors): for the thread that prepares a run while Ray starts. Made on the driver's
    main thread once Ray was up, that object took 1.8 s of a 512^2 command here (py-spy,
    the machine busy with Ray's starting processes)."""
    import ray.data

    ray.data.DataContext.get_current()


def quiet_ray_data() -> None:
    """Replace Ray Data's own progress bars and per-dataset messages by ours."""
    import ray

    for name in ("ray.data._internal.progress", "ray.data._internal.execution.streaming_executor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Its issue detectors print advice on Ray Data's own settings into users' output.
    ctx.issue_detectors_config.detectors = []
