"""Shared fixtures: one Ray session per test process, synthetic images and fixed-kernel models."""

from __future__ import annotations

import io
import itertools
import json
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import tifffile
import torch

if TYPE_CHECKING:
    from raysegment.data.tiling import Tiling

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train's controller polls its workers every 2 s by default; each training run waits
# out one at its end. A private Ray polls every 0.5 s (``LOCAL_RAY_ENV``); this is for the
# clusters the tests start with ``ray start`` (tests/test_cluster.py).
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


# Files that take minutes (2-core machine, two test processes), heaviest first. xdist hands
# whole files to its processes, by default those with the most tests first: these have
# few tests each (test_train.py: 6 tests, ~470 s of one process), so they were handed out
# last, and the process that took the last of them could run alone for minutes while the
# others had nothing left. Handed out first, the short files fill in around them
# (pyproject: --no-loadscope-reorder keeps this order).
LONGEST_FILES = (
    "train/test_train.py",
    "test_cluster.py",
    "infer/test_devices.py",
    "infer/test_faults.py",
    "train/test_faults.py",
    "test_resume_kill.py",
    "infer/test_io_tasks.py",
    "train/test_volumes.py",
    "test_storage.py",
    "infer/test_parts.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent

    def rank(item: pytest.Item) -> int:
        name = item.path.relative_to(here).as_posix()
        return LONGEST_FILES.index(name) if name in LONGEST_FILES else len(LONGEST_FILES)

    items.sort(key=rank)  # stable: every other file keeps its place and order


SMALL_BLOCKS = ["chunks=128", "block=128", "tile.size=128", "progress=false", "finalize.mode=raw"]
"""Settings of the multi-block runs that subprocess tests compare with an in-process one."""


# A line one of Ray's own daemons forwards to the driver's stderr, e.g. the raylet's
# "(raylet) file_system_monitor.cc:116: ... is over 95% full" on a crowded disk.
_RAY_DAEMON_LINE = re.compile(
    r"^(\x1b\[[0-9;]*m)?\((raylet|gcs_server|autoscaler|monitor|log_monitor|dashboard\w*)[,)]"
)


def error_lines(stderr: str) -> list[str]:
    """The non-blank lines of a command's stderr, less what Ray's daemons forward (the
    machine's warnings, not the command's): what the one-line error rule is about."""
    return [
        line for line in stderr.splitlines() if line.strip() and not _RAY_DAEMON_LINE.match(line)
    ]


def last_report(stdout: str) -> Any:
    """The last JSON object a script printed: Ray's daemons may forward log lines to its
    stdout after it (a raylet's warning as the cluster shuts down)."""
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    assert lines, f"no JSON report in the script's output: {stdout[-2000:]}"
    return json.loads(lines[-1])


def driver_plan(settings: dict[str, Any]) -> tuple[Any, Any]:
    """The models (a tuple: the one, or an ensemble's) and the first image's plan the
    driver makes of infer ``settings`` (no output created), for tests of one stage or one
    actor in this process."""
    from raysegment.config import InferConfig, as_config
    from raysegment.data.sources import open_source
    from raysegment.infer.mask import open_mask
    from raysegment.infer.model import ensemble_sha256, probe_models, read_models
    from raysegment.infer.plan import image_shapes, plan_image, tile_size

    cfg = as_config(InferConfig, settings, {})
    models = read_models(cfg.model)
    source = open_source(cfg.input)
    spec, (tile,) = probe_models(  # output channels, and the tile fitted to the image
        models, lambda spec: tile_size(cfg, spec), lambda spec: image_shapes(spec, [source])
    )
    mask = open_mask(cfg.mask, source) if cfg.mask else None
    sha256 = ensemble_sha256(models)
    return models, plan_image(0, source, cfg.output, cfg, spec, sha256, mask, tile)


def work_row(plan: Any) -> dict[str, np.ndarray]:
    """The driver's row for the one block of ``plan`` (its coordinates, no pixels)."""
    (item,) = plan.work()
    fields = (("image", item.image), ("t", item.t), ("z", item.z))
    return {k: np.array([v]) for k, v in fields} | {"index": np.array([item.index])}


def read_block(plan: Any) -> dict[str, np.ndarray]:
    """The read stage's row for the one block of ``plan``."""
    from raysegment.infer.stages import read_stage

    return read_stage(work_row(plan), [plan])


def short_temp_dir() -> str:
    """A new directory for a Ray of a test's own (its temp dir): directly in /tmp, as Ray's
    socket paths inside it must stay under the OS limit (~107 characters), which pytest's
    tmp_path can exceed. The caller removes it."""
    import tempfile

    return tempfile.mkdtemp(prefix="rs", dir="/tmp")


def cli_command(*args: str) -> list[str]:
    """``raysegment ARGS`` as a subprocess command line, with this interpreter."""
    return [sys.executable, "-m", "raysegment.cli", *args]


def infer_with(*args: str) -> object:
    """``infer`` in this process from the same key=value arguments the CLI takes."""
    from raysegment.config import InferConfig, load_config
    from raysegment.infer import infer

    return infer(load_config(InferConfig, (), list(args)))


def race_to_create(location: object, racers: int = 4) -> list[bool]:
    """``create_output`` of one small layout at ``location`` from ``racers`` threads
    released together; each thread's result."""
    import threading

    from raysegment.infer.writer import OutputLayout, create_output

    layout = OutputLayout("cyx", (1, 64, 64), (1, 32, 32), "uint8", (1.0,) * 3, {}, ("a",), "x")
    results: list[bool] = []
    barrier = threading.Barrier(racers)

    def create() -> None:
        barrier.wait()
        results.append(create_output(location, layout, {"fingerprint": "f"}))  # type: ignore[arg-type]

    threads = [threading.Thread(target=create) for _ in range(racers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def free_port() -> int:
    """A free port between Ray's worker ports (10002-19999) and the kernel's ephemeral
    range (32768 and up), where no process of a parallel test session (its own Ray's
    servers, their clients) is given one by the kernel while a server there starts."""
    while True:
        port = random.randint(20000, 32767)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


BUCKET = "raysegment-test"
"""The bucket the ``s3`` fixture's server holds."""


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """A moto S3 server on 127.0.0.1 with one bucket; yields the environment that points
    clients at it (set in this process too). One per test process: moto keeps its buckets
    in the process, whichever server answers.

    The server answers one request at a time: moto checks ``If-None-Match`` and then
    writes, so concurrent requests could all pass the check; S3 itself makes the
    conditional write atomic, and so does a serial server.
    """
    pytest.importorskip("s3fs")
    app_module = pytest.importorskip("moto.moto_server.werkzeug_app")
    from werkzeug.serving import make_server

    class Quiet(app_module.MotoRequestHandler):  # type: ignore[misc, name-defined]
        def log_request(self, *args: object) -> None:
            pass

    app = app_module.DomainDispatcherApplication(app_module.create_backend_app)
    server = make_server("127.0.0.1", 0, app, threaded=False, request_handler=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{server.server_address[1]}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        s3fs.S3FileSystem().mkdir(BUCKET)
        yield env
    server.shutdown()
    thread.join()


@pytest.fixture(scope="session")
def gcs() -> Iterator[str]:
    """A Google Cloud Storage emulator on 127.0.0.1 holding the bucket ``BUCKET``, where
    tensorstore's and gcsfs' ``gs://`` clients go (set in this process); yields its URL."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    port = free_port()  # chosen for it: it does not say which it took
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    url = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TENSORSTORE_GCS_HTTP_URL", url)
        mp.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "testing")  # no Google sign-in
        mp.setenv("STORAGE_EMULATOR_HOST", url)  # gcsfs'
        yield url
    server.stop()


class RangeHandler(SimpleHTTPRequestHandler):
    """A static web server's answers: files, 404 for a missing one, and a ``Range:
    bytes=a-b`` request's bytes a..b (206), which Python's own handler ignores; each
    answer after ``latency`` seconds (an object store's time to first byte)."""

    latency = 0.0

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # type: ignore[no-untyped-def]
        time.sleep(self.latency)
        asked = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        path = Path(self.translate_path(self.path))
        if asked is None or not path.is_file():
            return super().send_head()
        size = path.stat().st_size
        first = int(asked[1])
        last = min(int(asked[2] or size - 1), size - 1)
        with open(path, "rb") as f:
            f.seek(first)
            body = f.read(last + 1 - first)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)


class WebServer(ThreadingHTTPServer):
    """``directory`` served over HTTP on 127.0.0.1 by ``RangeHandler``, a listen queue of
    128 (Python's 5 resets a batch of concurrent requests, as no web server does)."""

    request_queue_size = 128
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        import functools

        super().__init__(
            ("127.0.0.1", 0), functools.partial(RangeHandler, directory=str(directory))
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    """``tmp_path`` on a web server (``WebServer``) in this process; yields its URL."""
    server = WebServer(tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.url
    server.shutdown()
    thread.join()


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    import ray

    from raysegment.runtime import LOCAL_RAY_CONFIG, local_ray_environment

    with local_ray_environment():  # as the private Ray the commands start
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            _system_config=dict(LOCAL_RAY_CONFIG),
        )
    yield
    ray.shutdown()


def conv_model(dims: int = 2, in_ch: int = 1, out_ch: int = 2, seed: int = 0) -> torch.nn.Module:
    """Two 3x3(x3) convs: receptive-field radius 2, zero padding, fixed weights."""
    torch.manual_seed(seed)
    conv = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    return torch.nn.Sequential(
        conv(in_ch, 3, 3, padding=1), torch.nn.Tanh(), conv(3, out_ch, 3, padding=1)
    ).eval()


class Strided(torch.nn.Module):
    """``inner``, for sizes divisible by ``stride`` only (as a network pooling
    log2(stride) times): others fail, as they fail such networks."""

    def __init__(self, inner: torch.nn.Module, stride: int) -> None:
        super().__init__()
        self.inner, self.stride = inner, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool = torch.nn.functional.avg_pool2d if x.ndim == 4 else torch.nn.functional.avg_pool3d
        coarse = pool(x, self.stride)
        back = torch.nn.functional.interpolate(coarse, scale_factor=float(self.stride))
        return self.inner(x) + 0 * back.mean(dim=1, keepdim=True)  # shapes must agree


def save_torchscript(
    module: torch.nn.Module, path: Path, dims: int, in_ch: int, size: int = 16
) -> Path:
    example = torch.zeros((1, in_ch, *([size] * dims)))
    torch.jit.save(torch.jit.trace(module, example), str(path))
    return path


@pytest.fixture
def make_model(tmp_path: Path) -> Callable[..., tuple[Path, torch.nn.Module]]:
    def make(
        dims: int = 2, in_ch: int = 1, out_ch: int = 2, name: str = "model.pth", stride: int = 1
    ) -> tuple[Path, torch.nn.Module]:
        module = conv_model(dims, in_ch, out_ch)
        if stride > 1:
            module = Strided(module, stride).eval()
        return save_torchscript(module, tmp_path / name, dims, in_ch, max(16, stride)), module

    return make


def random_image(shape: tuple[int, ...], dtype: str = "uint16", seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(dtype)


@pytest.fixture
def ome_tiff(tmp_path: Path) -> Callable[..., Path]:
    def make(
        data: np.ndarray,
        axes: str = "YX",
        name: str = "img.ome.tif",
        tile: tuple[int, int] | None = (64, 64),
        **meta: object,
    ) -> Path:
        path = tmp_path / name
        tifffile.imwrite(path, data, ome=True, tile=tile, metadata={"axes": axes, **meta})
        return path

    return make


def whole_image_prediction(module: torch.nn.Module, image: np.ndarray) -> np.ndarray:
    """The oracle: the model on the whole image at once, (C, *spatial) float32."""
    with torch.inference_mode():
        x = torch.from_numpy(image.astype(np.float32))[None, None]
        return module(x)[0].numpy()


def raw_output(tmp_path: Path, image: Path, model: Path, **cfg: Any) -> np.ndarray:
    """``infer`` of ``image`` with ``model`` and ``cfg``, raw model output written to
    ``tmp_path/out`` (``finalize`` keys beside the mode): level 0 of it, (C, *spatial)."""
    import zarr

    from raysegment.infer import infer

    out = tmp_path / "out"
    finalize = {"mode": "raw", **cfg.pop("finalize", {})}
    infer(
        input=str(image),
        model=str(model),
        output=str(out),
        progress=False,
        finalize=finalize,
        **cfg,
    )
    level = zarr.open_array(str(out / f"{image.name.split('.')[0]}.ome.zarr" / "0"), mode="r")
    return np.asarray(level[:])


def volume_output(tmp_path: Path, volume: Path, model: Path, **cfg: Any) -> tuple[Any, np.ndarray]:
    """``raw_output`` of ``volume`` with a 3D ``model`` in 16^3 tiles, crop-blended: the
    output's multiscales metadata and its level 0."""
    import zarr

    got = raw_output(
        tmp_path,
        volume,
        model,
        tile={"size": [16], "overlap": 0.5, "blend": "crop"},
        quicklook=False,
        **cfg,
    )
    store = tmp_path / "out" / f"{volume.name.split('.')[0]}.ome.zarr"
    return dict(zarr.open_group(str(store), mode="r").attrs)["ome"]["multiscales"][0], got


def numpy_blend(module: torch.nn.Module, image: np.ndarray, tiling: Tiling) -> np.ndarray:
    """The blending oracle: the direct weighted average over every grid tile of the whole
    image, (C, *spatial) float32."""
    img = image.astype(np.float32)
    pad = [(0, max(t - n, 0)) for t, n in zip(tiling.tile, img.shape, strict=False)]
    img = np.pad(img, pad)
    num = den = None
    for index in itertools.product(*(range(len(a.starts)) for a in tiling.axes)):
        sl = tuple(
            slice(a.starts[i], a.starts[i] + a.tile)
            for a, i in zip(tiling.axes, index, strict=False)
        )
        with torch.inference_mode():
            pred = module(torch.from_numpy(img[sl])[None, None])[0].numpy()
        w = tiling.weights(index)
        if num is None:
            num = np.zeros((pred.shape[0], *img.shape), np.float64)
            den = np.zeros(img.shape, np.float64)
        num[(slice(None), *sl)] += pred * w
        den[sl] += w
    crop = tuple(slice(0, n) for n in image.shape)
    return (num[(slice(None), *crop)] / den[crop]).astype(np.float32)


def write_wells(path: Path) -> list[np.ndarray]:
    """An OME-TIFF of two images (wells of a plate, positions of a scan), each with its
    own size, physical size and channel names."""
    wells = [random_image((2, 40, 50), seed=1), random_image((2, 36, 70), seed=2)]
    with tifffile.TiffWriter(path, ome=True) as tif:
        for i, well in enumerate(wells):
            meta = {
                "axes": "CYX",
                "Name": f"well A{i + 1}",
                "PhysicalSizeX": 0.5 * (i + 1),
                "PhysicalSizeY": 0.5 * (i + 1),
                "Channel": {"Name": [f"DAPI{i}", f"GFP{i}"]},
            }
            tif.write(well, metadata=meta)
    return wells


def write_czi(
    path: Path,
    scenes: list[tuple[np.ndarray, tuple[int, int]]],
    pixel_size: float | None = None,
    names: list[str] | None = None,
    tile: int = 64,
) -> None:
    """A CZI as ZEN writes a mosaic scan: each scene's image at its (x, y) origin, in
    ``tile``-pixel subblocks; images are (t, c, z, y, x), or (y, x, 3) colour given in RGB
    (stored BGR, as in the format); ``pixel_size`` in µm (the file's metadata in metres)."""
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        for scene, (image, (x0, y0)) in enumerate(scenes):
            colour = image.ndim == 3
            planes = image[None, None, None, ..., ::-1] if colour else image[..., None]
            for index in np.ndindex(planes.shape[:3]):
                plane = dict(zip("TCZ", map(int, index), strict=True))
                for y in range(0, planes.shape[3], tile):
                    for x in range(0, planes.shape[4], tile):
                        block = np.ascontiguousarray(planes[index][y : y + tile, x : x + tile])
                        czi.write(block, location=(x0 + x, y0 + y), plane=plane, scene=scene)
        size = 0.0 if pixel_size is None else pixel_size * 1e-6
        czi.write_metadata(
            document_name=path.stem,
            channel_names=dict(enumerate(names)) if names else None,
            scale_x=size,
            scale_y=size,
            scale_z=size,
        )
