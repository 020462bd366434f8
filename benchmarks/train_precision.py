"""What ``precision=bfloat16`` changes for training: seconds per optimizer step.

    python benchmarks/train_precision.py [--size 256] [--rounds 3] [--batch 8]

SMP Unet resnet18 (random weights, one input channel, one class), Dice loss, Adam, on a
batch of ``batch`` random ``size``^2 patches: the training loop's own step
(``raysegment.train.loop.train_step``) in float32 and under bfloat16 autocast (on a GPU
also float16 with its gradient scaling), alternating, ``rounds`` rounds of 3 timed steps
after a warm-up step each. Writes ``train_precision.json`` into --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, machine, write_result  # noqa: E402

from raysegment.train.components import LOSSES, OPTIMIZERS, build_model  # noqa: E402
from raysegment.train.loop import AUTOCAST, train_step  # noqa: E402

STEPS = 3


def main() -> None:
    args = bench_args(__doc__ or "", size=256, rounds=3, batch=8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    model = build_model("Unet", "resnet18", in_channels=1, classes=1).to(device)
    optimizer = OPTIMIZERS.get("Adam")(model.parameters(), 1e-3)
    loss_fn = LOSSES.get("DiceLoss")[0]("binary")
    x = torch.randn(int(args.batch), 1, args.size, args.size, device=device)
    y = (x > 0.5).float()
    precisions = ["float32", "bfloat16"] + (["float16"] if device.type == "cuda" else [])
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(args.rounds):
        for precision in precisions:
            scaler = torch.amp.GradScaler(device.type) if precision == "float16" else None

            def step(precision: str = precision, scaler: object = scaler) -> None:
                train_step(model, optimizer, loss_fn, x, y, AUTOCAST[precision], scaler)  # type: ignore[arg-type]
                if device.type == "cuda":
                    torch.cuda.synchronize()

            step()
            start = time.perf_counter()
            for _ in range(STEPS):
                step()
            seconds[precision].append(round((time.perf_counter() - start) / STEPS, 3))
            print(f"{precision}: {seconds[precision][-1]} s per step", flush=True)
    best = {p: min(v) for p, v in seconds.items()}
    write_result(
        args.out,
        "train_precision.json",
        {
            "machine": machine(),
            "torch_threads": torch.get_num_threads(),
            "batch": [int(args.batch), 1, args.size, args.size],
            "seconds_per_step": seconds,
            "speedup_over_float32": {p: round(best["float32"] / t, 2) for p, t in best.items()},
        },
    )


if __name__ == "__main__":
    main()
