"""The stream loop: decode in a thread, sample, micro-batch, classify by the serving model, log and write.

``run_stream`` is the one implementation behind ``visionloop stream``. A decoding thread feeds a
``policy.FrameBuffer``; the calling thread takes batches of sampled frames, reads the model ONCE per batch
(``get_model``: the hot-swapped champion of a ``serving.reload.ModelManager``, or a fixed one), classifies,
hands the batch to the prediction log (``source="stream"``, the serving writer's ``submit``) and writes one row
per frame. ``refresh`` is called between batches (where the caller polls the registry for a new champion).
With ``annotate`` each answered frame is also drawn and encoded into a video (``streaming.annotate``).

Latency is measured from the moment a frame leaves the decoder: ``wait_ms_max`` until its batch is taken (a
live source's policy keeps it under ``max_latency_ms``), ``latency_ms_max`` until its answer is written (the
wait plus one forward pass).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from visionloop.streaming.annotate import AnnotatedVideo
from visionloop.streaming.classify import classify_frames
from visionloop.streaming.decode import Backoff, DecodedFrame, DecodeStats, Source, SourceUnavailable, frames
from visionloop.streaming.frames import Roi, canonical_frame
from visionloop.streaming.output import Sink
from visionloop.streaming.policy import FrameBuffer, Sampler

if TYPE_CHECKING:
    from visionloop.models.bundle import ServableModel
    from visionloop.params import StreamParams
    from visionloop.store.records import PendingPredictions

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class StreamOptions:
    """One run's settings: ``stream:`` of params.yaml with the command's overrides applied."""

    fps: float
    batch_size: int
    max_latency_ms: float
    reconnect_initial_s: float
    reconnect_max_s: float
    reconnect_attempts: int
    live_probe_ms: float
    roi: Roi | None = None

    @classmethod
    def from_params(cls, stream: StreamParams, roi: Roi | None = None) -> StreamOptions:
        return cls(stream.fps, stream.batch_size, stream.max_latency_ms, stream.reconnect_initial_s,
                   stream.reconnect_max_s, stream.reconnect_attempts, stream.live_probe_ms, roi)


@dataclass
class StreamSummary:
    """What a run did; ``decoded`` = ``sampled`` + frames skipped by the sampler."""

    stream_id: str
    decoded: int = 0
    sampled: int = 0
    classified: int = 0
    dropped_late: int = 0  # live: older than max_latency when batched
    dropped_overflow: int = 0  # live: pushed out of the buffer by newer frames
    decode_errors: int = 0
    lost_frames: int = 0  # missing from the timestamps (a corrupt or lost stretch)
    reconnects: int = 0
    failed_batches: int = 0
    annotated: int = 0  # frames written to the --annotate video
    wait_ms_max: float = 0.0  # the longest a classified frame waited, decoder → its batch taken
    latency_ms_max: float = 0.0  # the longest from the decoder to a written answer
    seconds: float = 0.0
    ended: str = "end"  # end | stopped | gave_up
    errors: list[str] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "wait_ms_max": round(self.wait_ms_max, 1),
                "latency_ms_max": round(self.latency_ms_max, 1), "frames_per_second": round(self.frames_per_second, 2)}


def run_stream(
    source: Source,
    options: StreamOptions,
    *,
    get_model: Callable[[], ServableModel | None],
    sink: Sink,
    log_submit: Callable[[PendingPredictions], object] | None = None,
    refresh: Callable[[], None] | None = None,
    stop: threading.Event | None = None,
    stream_id: str | None = None,
    annotate: AnnotatedVideo | None = None,
) -> StreamSummary:
    """Classify ``source`` until its end, ``stop`` being set, or a live source given up; return the counts."""
    stop = stop or threading.Event()
    summary = StreamSummary(stream_id or source.stream_id)
    stats = DecodeStats()
    buffer: FrameBuffer[DecodedFrame] = FrameBuffer(
        options.batch_size * (2 if source.live else 4), live=source.live, max_latency=options.max_latency_ms / 1000
    )
    failure: list[BaseException] = []
    reader = threading.Thread(
        target=_read, args=(source, options, stats, buffer, stop, summary, failure), name="stream-decoder", daemon=True
    )
    started = time.perf_counter()
    reader.start()
    try:
        while (batch := buffer.take(options.batch_size)) is not None:
            summary.wait_ms_max = max(summary.wait_ms_max, (time.monotonic() - batch[0].decoded_at) * 1000)
            if refresh is not None:
                refresh()
            _classify(batch, options, get_model, sink, log_submit, summary, annotate)
    except KeyboardInterrupt:
        summary.ended = "stopped"
    finally:
        if stop.is_set() and summary.ended == "end":  # set by the caller (a signal, a test), not the end
            summary.ended = "stopped"
        stop.set()
        buffer.close()
        reader.join(timeout=10)
        summary.seconds = time.perf_counter() - started
    if failure:
        summary.ended = "gave_up"
        summary.errors.append(str(failure[0]))
    summary.decoded = stats.frames
    summary.decode_errors, summary.lost_frames = stats.decode_errors, stats.lost_frames
    summary.reconnects = stats.reconnects
    summary.dropped_late, summary.dropped_overflow = buffer.drops.late, buffer.drops.overflow
    summary.errors = [*stats.errors, *summary.errors]
    return summary


def _read(
    source: Source,
    options: StreamOptions,
    stats: DecodeStats,
    buffer: FrameBuffer[DecodedFrame],
    stop: threading.Event,
    summary: StreamSummary,
    failure: list[BaseException],
) -> None:
    """The decoding thread: sampled frames into the buffer, then close it (end, stop or giving up)."""
    sampler = Sampler(options.fps)
    backoff = Backoff(options.reconnect_initial_s, options.reconnect_max_s, options.reconnect_attempts,
                      sleep=lambda seconds: stop.wait(seconds))
    try:
        for frame in frames(source, stats, backoff, stop.is_set, options.live_probe_ms / 1000):
            if sampler.keep(frame.timestamp):
                summary.sampled += 1
                buffer.put(frame)
    except SourceUnavailable as error:
        failure.append(error)
    except Exception as error:  # noqa: BLE001 - reported in the summary; the loop ends cleanly
        log.exception("the stream decoder failed")
        failure.append(error)
    finally:
        buffer.close()


def _classify(
    batch: list[DecodedFrame],
    options: StreamOptions,
    get_model: Callable[[], ServableModel | None],
    sink: Sink,
    log_submit: Callable[[PendingPredictions], object] | None,
    summary: StreamSummary,
    annotate: AnnotatedVideo | None,
) -> None:
    """One forward pass for ``batch``; its rows written (and drawn, with ``annotate``) and its entry handed to
    the log. A failed batch is counted, never the end of the stream."""
    model = get_model()  # once per batch: a swap answers from the next batch on
    if model is None:
        summary.failed_batches += 1
        summary.errors.append("no model version is loaded yet")
        return
    try:
        images = [canonical_frame(frame.rgb, model.channels, options.roi) for frame in batch]
        answers = classify_frames(model, images, log_submit, stream_id=summary.stream_id,
                                  frame_ts=[frame.timestamp for frame in batch])
    except Exception as error:  # noqa: BLE001 - one bad batch costs its frames
        log.exception("classifying %d frames failed", len(batch))
        summary.failed_batches += 1
        summary.errors = [*summary.errors[-4:], f"{type(error).__name__}: {error}"]
        return
    rows = [
        {"stream_id": summary.stream_id, "frame_index": frame.index, "timestamp": round(frame.timestamp, 6),
         **answers.answer(k)}
        for k, frame in enumerate(batch)
    ]
    sink.write(rows)
    summary.classified += len(batch)
    summary.latency_ms_max = max(summary.latency_ms_max, (time.monotonic() - batch[0].decoded_at) * 1000)
    if annotate is not None:
        for frame, row in zip(batch, rows, strict=True):
            annotate.write(frame.rgb, frame.timestamp, row["label"], row["confidence"])
        summary.annotated = annotate.frames
