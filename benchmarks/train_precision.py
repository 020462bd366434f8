"""What ``precision`` and ``layout`` change for training: seconds per optimizer step.

    python benchmarks/train_precision.py [--size 256] [--rounds 3] [--batch 8]

SMP Unet resnet18 (random weights, one input channel, one class), Dice loss, Adam, on a
batch of ``batch`` random ``size``^2 patches: the training loop's own step
(``raysegment.train.loop.train_step``) in float32 and under bfloat16 autocast (on a GPU
also float16 with its gradient scaling), each with the model channels-first and
channels-last (``layout``; the model put in it by the loop's ``place``), alternating,
``rounds`` rounds of 3 timed steps after a warm-up step each. Writes
``train_precision.json`` into --out.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from run import bench_args, machine, write_result  # noqa: E402

from raysegment.train.components import OPTIMIZERS, build_model, make_loss  # noqa: E402
from raysegment.train.loop import place, train_step  # noqa: E402

STEPS = 3
LAYOUTS = ("channels_first", "channels_last")


def main() -> None:
    args = bench_args(__doc__ or "", size=256, rounds=3, batch=8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loss_fn = make_loss("DiceLoss", "binary")
    x = torch.randn(int(args.batch), 1, args.size, args.size, device=device)
    y = (x > 0.5).float()
    models = {}
    for layout in LAYOUTS:  # the same weights in each layout
        torch.manual_seed(0)
        model = build_model("Unet", "resnet18", in_channels=1, classes=1)
        assert place(model, (1, args.size, args.size), device, layout, "float32") == layout
        memory = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        optimizer = OPTIMIZERS.get("Adam")(model.train().parameters(), 1e-3)
        models[layout] = (model, optimizer, x.contiguous(memory_format=memory))
    precisions = ["float32", "bfloat16"] + (["float16"] if device.type == "cuda" else [])
    cases = [f"{p}/{layout}" for p in precisions for layout in LAYOUTS]
    seconds: dict[str, list[float]] = {case: [] for case in cases}
    for _ in range(args.rounds):
        for case in cases:
            precision, layout = case.split("/")
            model, optimizer, batch = models[layout]
            scaler = torch.amp.GradScaler(device.type) if precision == "float16" else None

            def step() -> None:
                train_step(model, optimizer, loss_fn, batch, y, precision, scaler)  # noqa: B023
                if device.type == "cuda":
                    torch.cuda.synchronize()

            step()
            start = time.perf_counter()
            for _ in range(STEPS):
                step()
            seconds[case].append(round((time.perf_counter() - start) / STEPS, 3))
            print(f"{case}: {seconds[case][-1]} s per step", flush=True)
    best = {case: min(v) for case, v in seconds.items()}
    base = best["float32/channels_first"]
    write_result(
        args.out,
        "train_precision.json",
        {
            "machine": machine(),
            "torch_threads": torch.get_num_threads(),
            "batch": [int(args.batch), 1, args.size, args.size],
            "seconds_per_step": seconds,
            "speedup_over_float32_channels_first": {
                case: round(base / t, 2) for case, t in best.items()
            },
            "channels_last_speedup": {
                p: round(best[f"{p}/channels_first"] / best[f"{p}/channels_last"], 2)
                for p in precisions
            },
        },
    )


if __name__ == "__main__":
    main()
