"""CPU inference cost of a backbone, per image, through the path serving and batch inference take.

    python benchmarks/backbones.py [--backbone timm:resnet18] [--size 64] [--channels 3] [--batches 1 32]
                                   [--threads 1 2] [--rounds 10]

The network is built by ``build_network`` (random weights: the cost does not depend on them) and run
as ``ServableModel.predict_tensor`` runs it: the prediction-only copy (``inference_network``: BatchNorm
folded where it is a plain ``BatchNorm2d``, channels_last), embedding then head, under ``inference_mode``.
Preprocessing and decoding are not timed (``benchmarks/batch.py`` and ``serving.py`` measure them). Per
batch size and thread count: the median over ``--rounds`` timed forward passes after 3 warm-up passes,
divided by the batch size. The machine's load average is printed: shared cores skew every figure.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe, load_average  # benchmarks/machine.py (the script's folder is on sys.path)

from visionloop.config import apply_offline_environment


def ms_per_image(network: torch.nn.Module, batch: torch.Tensor, rounds: int) -> tuple[float, float]:
    """Median wall time of one embedding + head pass over ``batch``, per image, in milliseconds; and the mean
    CPU time of this process per image (all threads), which other jobs on shared cores inflate less."""
    with torch.inference_mode():
        for _ in range(3):
            network.head(network.embedding(batch))
        times = []
        cpu_start = time.process_time()
        for _ in range(rounds):
            start = time.perf_counter()
            network.head(network.embedding(batch))
            times.append(time.perf_counter() - start)
        cpu = (time.process_time() - cpu_start) / rounds
    return statistics.median(times) * 1000 / len(batch), cpu * 1000 / len(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="timm:resnet18")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    apply_offline_environment()

    from visionloop.models.network import build_network, inference_network

    config = {"backbone": args.backbone, "num_classes": 10, "in_channels": args.channels, "widths": [16, 32, 64],
              "embedding_dim": 64, "dropout": 0.0}
    network = build_network(config).eval()
    fast = inference_network(network)
    print(f"{args.backbone} at {args.size}×{args.size}×{args.channels}, torch {torch.__version__}; {describe(True)}")
    print("batch  threads  wall ms/image  CPU ms/image  (inference copy)   wall ms/image (eager network)")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for size in args.batches:
            batch = torch.rand(size, args.channels, args.size, args.size, generator=torch.Generator().manual_seed(0))
            wall, cpu = ms_per_image(fast, batch.contiguous(memory_format=torch.channels_last), args.rounds)
            eager, _ = ms_per_image(network, batch, args.rounds)
            print(f"{size:5d}  {threads:7d}  {wall:13.2f}  {cpu:12.2f}  {'':16s}  {eager:13.2f}")
    print(f"load average after: {load_average()}")


if __name__ == "__main__":
    main()
