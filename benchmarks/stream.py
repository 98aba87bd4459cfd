"""Benchmark `visionloop stream` on a video file against `predict-batch` on the same frames extracted as PNG.

Run on demand (not part of the tests)::

    .venv/bin/python benchmarks/stream.py                       # 1,000 frames, untrained params.yaml-shaped CNN
    .venv/bin/python benchmarks/stream.py --frames 3000 --bundle models
    .venv/bin/python benchmarks/stream.py --live-minutes 5        # a live HTTP camera, memory over time

The video is generated here with PyAV (scikit-learn's digits at 32×32 with noise, MJPEG at 25 fps); the frames
are extracted once as PNG. Both sides use the same model, the same batch size and no prediction log; the stream
side decodes the video, samples every frame (--fps = the video's rate) and writes JSON lines, the batch side
lists, decodes and validates the PNG files and commits Parquet. Rounds alternate; the best of each is compared
(goal: stream >= 0.8x predict-batch). Figures on this 2-core shared machine are "under load".

``--live-minutes N`` instead plays a live source for N minutes (issue 17's "no memory growth" bar): the tests'
``LiveVideoServer`` streams digits over HTTP (MPEG-TS at --fps in real time, endless), the model is slowed to
``--slow-ms`` per frame so that it cannot keep up, and every classified frame goes to a prediction log (a
temporary SQLite, the thread writer) as `visionloop stream` does. The process's RSS is sampled every
``--rss-every`` seconds; the result is the slope of a least-squares line through the samples after the first
minute (warm-up), in MiB per minute, with the drops and the longest latency.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from batch import batch_options, build_model  # benchmarks/batch.py
from machine import load_average  # benchmarks/machine.py


def write_video(path: Path, frames: int, fps: int) -> None:
    """``frames`` noisy digits as an MJPEG Matroska file."""
    import av
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=fps)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuvj420p"
        for i in range(frames):
            pixels = np.clip(digits.images[i % len(digits.images)] * 16, 0, 255).astype(np.uint8)
            image = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.Resampling.BICUBIC), np.float32)
            image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(np.repeat(image[:, :, None], 3, axis=2), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def extract(path: Path, folder: Path) -> int:
    import av
    from PIL import Image

    folder.mkdir(parents=True)
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            Image.fromarray(frame.to_ndarray(format="rgb24")).save(folder / f"{index:06d}.png")
    return index + 1


def stream_once(model, video: Path, fps: int, batch_size: int, output: Path) -> float:
    from visionloop.config import Settings
    from visionloop.streaming.decode import parse_source
    from visionloop.streaming.loop import StreamOptions, run_stream
    from visionloop.streaming.output import open_sink

    stream = Settings.load().params.stream.model_copy(update={"fps": fps, "batch_size": batch_size})
    sink = open_sink(str(output))
    start = time.perf_counter()
    summary = run_stream(parse_source(str(video)), StreamOptions.from_params(stream), get_model=lambda: model,
                         sink=sink)
    sink.close()
    elapsed = time.perf_counter() - start
    assert summary.ended == "end" and summary.lost_frames == 0, summary
    return summary.classified / elapsed


def digit_frames(count: int) -> list[np.ndarray]:
    """``count`` scikit-learn digits at 32×32, as ``write_video`` draws them (without the noise)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    return [
        np.asarray(Image.fromarray(np.clip(digits.images[i] * 16, 0, 255).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BICUBIC))
        for i in range(count)
    ]


def rss_mib() -> float:
    """This process's resident memory (Linux /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def live(model, args: argparse.Namespace, work: Path) -> dict:
    """Run a live HTTP source for ``args.live_minutes`` minutes; RSS samples, their slope, the stream's counts."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tests/helpers/live_video.py
    from helpers.live_video import LiveVideoServer, SlowModel

    os.environ["VISIONLOOP_DB_URL"] = f"sqlite:///{work / 'predictions.db'}"
    os.environ["VISIONLOOP_STATE_DIR"] = str(work / "state")
    from visionloop.config import Settings
    from visionloop.serving.app import make_writer
    from visionloop.streaming.decode import parse_source
    from visionloop.streaming.loop import StreamOptions, run_stream
    from visionloop.streaming.output import open_sink

    settings = Settings.load().with_overrides({"serving": {"log_writer": "thread"}})
    options = StreamOptions.from_params(settings.params.stream.model_copy(
        update={"fps": args.fps, "batch_size": args.batch_size}))
    writer = make_writer(settings)
    writer.start()
    slow = SlowModel(model, args.slow_ms / 1000)
    stop = threading.Event()
    samples: list[tuple[float, float]] = []
    started = time.monotonic()

    def sample() -> None:
        while not stop.wait(args.rss_every):
            samples.append(((time.monotonic() - started) / 60, rss_mib()))

    sink = open_sink(str(work / "live.jsonl"))
    with LiveVideoServer(digit_frames(200), fps=args.fps, seconds=None) as server:
        threading.Thread(target=sample, daemon=True).start()
        threading.Timer(args.live_minutes * 60, stop.set).start()
        summary = run_stream(parse_source(server.url), options, get_model=lambda: slow, sink=sink,
                             log_submit=writer.submit, stop=stop)
    sink.close()
    writer.close(settings.params.serving.drain_seconds)
    logged = writer.log.count() if writer.log is not None else 0
    steady = [(t, m) for t, m in samples if t >= 1.0] or samples
    slope = float(np.polyfit([t for t, _ in steady], [m for _, m in steady], 1)[0]) if len(steady) > 1 else 0.0
    counts = summary.to_dict()
    return {"minutes": args.live_minutes, "fps": args.fps, "slow_ms_per_frame": args.slow_ms,
            "rss_mib_first": round(samples[0][1], 1) if samples else None,
            "rss_mib_last": round(samples[-1][1], 1) if samples else None,
            "rss_mib_max": round(max(m for _, m in samples), 1) if samples else None,
            "rss_slope_mib_per_min_after_1min": round(slope, 3), "rss_samples": len(samples),
            "logged": logged, **{k: counts[k] for k in ("decoded", "sampled", "classified", "dropped_late",
                                                         "dropped_overflow", "reconnects", "wait_ms_max",
                                                         "latency_ms_max", "ended")},
            "load_average": load_average(), "python": sys.version.split()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bundle")
    parser.add_argument("--model-uri")
    parser.add_argument("--live-minutes", type=float, help="Play a live HTTP source this long; report RSS growth.")
    parser.add_argument("--slow-ms", type=float, default=50.0, help="--live-minutes: added model time per frame.")
    parser.add_argument("--rss-every", type=float, default=5.0, help="--live-minutes: seconds between RSS samples.")
    args = parser.parse_args()
    import torch

    from visionloop.batch.predict import predict_batch

    torch.set_num_threads(1)  # both sides on one intra-op thread: the stream's decoder thread uses the other core
    model = build_model(args.bundle, args.model_uri)
    work = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    if args.live_minutes:
        try:
            print(json.dumps(live(model, args, work), indent=2))
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    try:
        video = work / "digits.mkv"
        write_video(video, args.frames, args.fps)
        count = extract(video, work / "frames")
        streamed, batched = [], []
        for r in range(args.rounds):
            streamed.append(stream_once(model, video, args.fps, args.batch_size, work / f"s{r}.jsonl"))
            start = time.perf_counter()
            summary = predict_batch(model, work / "frames", work / f"b{r}.parquet", batch_options(args.batch_size),
                                    progress=False)
            batched.append(summary.processed / (time.perf_counter() - start))
        result = {"frames": count, "batch_size": args.batch_size, "stream_frames_s": round(max(streamed), 1),
                  "predict_batch_img_s": round(max(batched), 1), "ratio": round(max(streamed) / max(batched), 3),
                  "stream_rounds": [round(x, 1) for x in streamed], "batch_rounds": [round(x, 1) for x in batched],
                  "load_average": load_average(), "python": sys.version.split()[0]}
        print(json.dumps(result, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
