"""ONNX models (``model.onnx``, a model package's ``onnx`` weights), run by ONNX Runtime
behind the interface every model has here: a module taking and returning torch tensors.

A forward pass hands the tile batch to ONNX Runtime as a numpy array on the host and
returns its output on the input's device. The session runs on a CUDA device where the
installed ONNX Runtime has its CUDA provider (``onnxruntime-gpu``), else on the CPU, with
as many threads as torch has on the thread that loads it (a CPU predictor's streams each
run their own tiles). ONNX Runtime's session runs are thread-safe.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from raysegment.errors import ModelLoadError

__all__ = ["OnnxModule"]


class OnnxModule(torch.nn.Module):
    """An ONNX program as a module: ``forward(x)`` is the program's first output for its
    first input."""

    def __init__(self, path: str, data: bytes, device: torch.device | str = "cpu") -> None:
        super().__init__()
        try:
            import onnxruntime
        except ImportError as e:
            raise ModelLoadError(
                f"{path}: ONNX models run with ONNX Runtime, which is not installed: pip "
                f"install 'raysegment[onnx]' (onnxruntime-gpu for GPUs)"
            ) from e
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                providers.insert(0, "CUDAExecutionProvider")
        self.session: Any = onnxruntime.InferenceSession(data, options, providers=providers)
        first = self.session.get_inputs()[0]
        self.input_name = str(first.name)
        self.input_shape: list[int | None] = [
            d if isinstance(d, int) else None for d in first.shape
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)
