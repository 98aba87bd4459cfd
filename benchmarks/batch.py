"""Benchmark `predict-batch` against a plain PyTorch loop, and its peak memory at 1k vs 20k images.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/batch.py                     # 20k generated digits, params.yaml model shape
    .venv/bin/python benchmarks/batch.py --bundle models     # a trained bundle instead of an untrained network

* Throughput: the same files, the same model, eval pipeline and batch size. The plain loop decodes
  with PIL, preprocesses, runs the network and keeps the probabilities; ``predict_batch`` also
  lists the folder, validates every file, computes embeddings and commits Parquet parts. Rounds
  alternate between the two; the best round of each is compared (ratio goal: >= 0.85).
* Memory: ``predict_batch`` on the first 1k and on all images, each in a fresh subprocess; peak RSS
  during the job (VmHWM reset before it; ``ru_maxrss`` of the whole process also shown) is reported
  beside the RSS after imports and model load (goal: flat).

Images are scikit-learn's digits at 32×32 with random shifts, contrast and noise, written as PNG
into a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from machine import cpu_model, load_average, usable_cores  # benchmarks/machine.py
from PIL import Image


def generate_images(folder: Path, n: int, seed: int = 0) -> None:
    """``n`` perturbed digits as ``folder/<digit>/<i>.png`` (32×32 grayscale)."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    data = load_digits()
    scaled = np.clip(np.rint(data.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    base = [np.asarray(Image.fromarray(x).resize((32, 32), Image.Resampling.BICUBIC), np.float32) for x in scaled]
    for label in range(10):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        k = int(rng.integers(len(base)))
        image = np.roll(base[k], tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        image = image * rng.uniform(0.8, 1.1) + rng.normal(0, 6, image.shape)
        pixels = np.clip(image, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / str(int(data.target[k])) / f"{i:06d}.png")


def build_model(bundle: str | None, model_uri: str | None):
    """A trained bundle / registered version, or an untrained network of params.yaml's shape (same compute)."""
    from visionloop.batch.model import load_model
    from visionloop.config import Settings
    from visionloop.models.bundle import ServableModel
    from visionloop.models.network import build_network
    from visionloop.training.model import architecture_from_params
    from visionloop.training.preprocess import build_pipeline, pipeline_to_json

    settings = Settings.load()
    if bundle or model_uri:
        return load_model(settings, model_uri, bundle=bundle)
    import torch

    torch.manual_seed(0)
    config = architecture_from_params(settings.params, num_classes=10)
    pipeline = build_pipeline(settings.params.augment.eval)
    return ServableModel(build_network(config), pipeline_to_json(pipeline), [str(d) for d in range(10)], config,
                         name="benchmark", version="0")


def plain_loop(model, files: list[Path], batch_size: int) -> np.ndarray:
    """The baseline: PIL decode, the model's eval pipeline, forward + softmax, nothing else. The forward runs
    the same prediction network ``predict_batch`` runs (``ServableModel.inference``: BatchNorm folded,
    channels_last), so the ratio measures the pipeline around it."""
    import torch

    outputs = []
    with torch.inference_mode():
        for start in range(0, len(files), batch_size):
            images = [np.asarray(Image.open(f).convert("L")) for f in files[start : start + batch_size]]
            batch = torch.stack([model.transform(image=img[:, :, None])["image"].float() for img in images])
            logits = model.inference(batch.contiguous(memory_format=torch.channels_last))
            outputs.append(torch.softmax(logits, dim=1).numpy())
    return np.concatenate(outputs)


def batch_options(batch_size: int):
    """params.yaml's batch options with this run's batch size."""
    from visionloop.batch.predict import BatchOptions
    from visionloop.config import Settings

    return BatchOptions.from_params(Settings.load().with_overrides({"batch": {"batch_size": batch_size}}).params)


def throughput(model, folder: Path, batch_size: int, rounds: int, work: Path) -> dict[str, float]:
    from visionloop.batch.inputs import list_inputs
    from visionloop.batch.predict import predict_batch

    files = [folder / key for key in list_inputs(folder)]
    plain_loop(model, files[:batch_size], batch_size)  # warm-up (allocator, oneDNN kernels)
    plain, batch = [], []
    for r in range(rounds):
        start = time.perf_counter()
        plain_loop(model, files, batch_size)
        plain.append(len(files) / (time.perf_counter() - start))
        output = work / f"round-{r}"
        start = time.perf_counter()
        summary = predict_batch(model, folder, output, batch_options(batch_size), progress=False)
        batch.append(summary.processed / (time.perf_counter() - start))
        assert summary.ok == len(files), summary
        shutil.rmtree(output)
    return {"images": len(files), "plain_loop_img_s": max(plain), "predict_batch_img_s": max(batch),
            "ratio": max(batch) / max(plain), "plain_rounds": plain, "batch_rounds": batch}


def memory_child(args: argparse.Namespace) -> None:
    """In a fresh process: load, note RSS, run predict_batch on the first N images, print peak RSS."""
    import shutil as _shutil

    from visionloop.batch.inputs import list_inputs
    from visionloop.batch.predict import predict_batch

    model = build_model(args.bundle, args.model_uri)
    keys = list_inputs(args.images)[: args.child_memory]
    before = _status_kib("VmRSS")
    reset = _reset_peak()  # so the peak is that of predict_batch, not of the imports
    output = Path(args.work) / f"memory-{args.child_memory}"
    summary = predict_batch(model, args.images, output, batch_options(args.batch_size), items=keys, progress=False)
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, whole process life
    _shutil.rmtree(output)
    print(json.dumps({"images": summary.processed, "rss_after_load_mib": before / 1024,
                      "peak_rss_mib": (_status_kib("VmHWM") if reset else process_peak) / 1024,
                      "process_peak_rss_mib": process_peak / 1024, "img_s": summary.images_per_second}))


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    """Linux >= 4.0: writing 5 to clear_refs resets VmHWM (the peak RSS) to the current RSS."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return _status_kib("VmHWM") <= _status_kib("VmRSS") + 1024


def memory(args: argparse.Namespace, sizes: list[int]) -> list[dict[str, float]]:
    results = []
    for n in sizes:
        command = [sys.executable, __file__, "--child-memory", str(n), "--images", str(args.images),
                   "--work", str(args.work), "--batch-size", str(args.batch_size)]
        command += ["--bundle", args.bundle] if args.bundle else []
        command += ["--model-uri", args.model_uri] if args.model_uri else []
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return results


def machine() -> dict[str, str]:
    import torch

    return {"nproc": str(usable_cores()), "cpu": cpu_model(), "torch_threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "torch": torch.__version__,
            "load_average_at_start": load_average()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images-total", type=int, default=20_000, help="images generated (memory at the max)")
    parser.add_argument("--small", type=int, default=1_000, help="the small run of the memory comparison")
    parser.add_argument("--throughput-images", type=int, default=5_000, help="images in each throughput round")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds; the best of each side is compared (runs vary ±15 %%)"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--bundle", help="a local bundle folder (default: an untrained params.yaml network)")
    parser.add_argument("--model-uri", help="a registered model, e.g. models:/digits-cnn@champion")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child-memory", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--images", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_memory:
        memory_child(args)
        return
    info = machine()
    with tempfile.TemporaryDirectory(prefix="visionloop-batch-bench-") as tmp:
        root = Path(tmp)
        args.images, args.work = root / "images", root / "work"
        args.work.mkdir()
        start = time.perf_counter()
        generate_images(args.images, args.images_total)
        sample = root / "sample"
        generate_images(sample, args.throughput_images, seed=1)
        print(f"generated {args.images_total} + {args.throughput_images} PNGs in {time.perf_counter() - start:.1f} s",
              flush=True)
        model = build_model(args.bundle, args.model_uri)
        speed = throughput(model, sample, args.batch_size, args.rounds, args.work)
        print(f"throughput on {speed['images']} images, batch {args.batch_size}: plain loop "
              f"{speed['plain_loop_img_s']:.0f} img/s, predict-batch {speed['predict_batch_img_s']:.0f} img/s, "
              f"ratio {speed['ratio']:.2f} (goal >= 0.85)", flush=True)
        mem = memory(args, [args.small, args.images_total])
        for m in mem:
            print(f"predict-batch on {m['images']:>6} images: peak RSS during the job {m['peak_rss_mib']:.0f} MiB "
                  f"(RSS after imports + model load {m['rss_after_load_mib']:.0f} MiB; process peak incl. imports "
                  f"{m['process_peak_rss_mib']:.0f} MiB), {m['img_s']:.0f} img/s")
        growth = mem[-1]["peak_rss_mib"] - mem[0]["peak_rss_mib"]
        print(f"peak RSS growth from {mem[0]['images']} to {mem[-1]['images']} images: {growth:+.0f} MiB")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "throughput": speed, "memory": mem}, indent=2))


if __name__ == "__main__":
    main()
