"""The stream command: `visionloop stream SOURCE` — a video file, a device index or an rtsp/http(s) URL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from visionloop.config import Settings
    from visionloop.serving.deps import LogWriter
    from visionloop.streaming.decode import Source
    from visionloop.streaming.loop import StreamOptions, StreamSummary
    from visionloop.streaming.output import Sink


def register(app: typer.Typer) -> None:
    @app.command("stream")
    def stream_command(
        source: str = typer.Argument(..., metavar="SOURCE", help="A video file, a capture device index (0 → "
                                     "/dev/video0, V4L2, Linux) or an rtsp:// / http(s):// URL."),
        output: str = typer.Option(None, "--output", "-o", help="FILE.jsonl (JSON lines) or FILE.parquet; "
                                   "default: JSON lines on stdout."),
        fps: float = typer.Option(None, min=0.001, help="Frames classified per second of stream time "
                                  "(default: stream.fps)."),
        batch_size: int = typer.Option(None, min=1, help="Frames per forward pass (default: stream.batch_size)."),
        max_latency: float = typer.Option(None, "--max-latency", min=1, help="Live sources: drop (and count) "
                                          "frames older than this many ms rather than fall behind "
                                          "(default: stream.max_latency_ms)."),
        roi: str = typer.Option(None, help="Classify only this region of each frame: x,y,w,h in pixels."),
        model: str = typer.Option(None, "--model", help="A models:/ URI or a bundle folder, fixed for the run "
                                  "(default: the champion, hot-swapped when the alias moves, as `serve`)."),
        stream_id: str = typer.Option(None, help="The stream's name in the output and the prediction log, for "
                                      "`visionloop monitor --stream ID` (letters, digits, . _ : -; default: the "
                                      "file's stem, deviceN, or the URL's host and path)."),
        annotate: Path = typer.Option(None, "--annotate", metavar="OUT.mp4", help="Also write a video of the "
                                      "classified frames with label and confidence drawn on each (H.264, else "
                                      "MPEG-4; small frames enlarged to stream.annotate_min_side)."),
        log_predictions: bool = typer.Option(None, "--log-predictions/--no-log-predictions", help="Write every "
                                             "classified frame to the prediction log, source stream (default: "
                                             "stream.log_predictions)."),
    ) -> None:
        """Classify a video stream frame by frame: sampled at --fps, micro-batched, every frame logged.

        A file ends at its end; a corrupt stretch costs only its frames; a network stream that drops is
        reopened with back-off. A device index is a V4L2 camera (Linux): one that is not there exits 2.
        Live sources (a device, a URL) drop frames older than --max-latency rather than fall behind. The
        counts (sampled, classified, dropped, lost, the longest latency) go to stderr as JSON.
        """
        from visionloop.config import Settings
        from visionloop.streaming.classify import check_stream_id
        from visionloop.streaming.decode import SourceUnavailable, parse_source
        from visionloop.streaming.frames import parse_roi
        from visionloop.streaming.loop import StreamOptions
        from visionloop.streaming.output import open_sink

        given = {"fps": fps, "batch_size": batch_size, "max_latency_ms": max_latency,
                 "log_predictions": log_predictions}
        settings = Settings.load().with_overrides({"stream": {k: v for k, v in given.items() if v is not None}})
        try:
            parsed = parse_source(source)
            options = StreamOptions.from_params(settings.params.stream, parse_roi(roi))
            if stream_id is not None:
                check_stream_id(stream_id)
        except (SourceUnavailable, ValueError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        sink = open_sink(output)
        try:
            summary = _run(settings, parsed, options, sink, model, stream_id, annotate)
        except (RuntimeError, FileNotFoundError) as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        finally:
            sink.close()
        typer.echo(json.dumps(summary.to_dict()), err=True)
        if summary.ended == "gave_up":
            raise typer.Exit(1)


def _run(
    settings: Settings, source: Source, options: StreamOptions, sink: Sink, model_spec: str | None,
    stream_id: str | None,
    annotate: Path | None,
) -> StreamSummary:
    """Open the model (fixed, or followed like the server's), the prediction log and the annotated video, then
    run the stream."""
    import contextlib

    from visionloop.streaming.loop import run_stream

    with contextlib.ExitStack() as stack:
        video = None
        if annotate is not None:
            from visionloop.streaming.annotate import AnnotatedVideo

            video = AnnotatedVideo(annotate, options.fps, settings.params.stream.annotate_min_side)
            stack.callback(video.close)
        writer = None
        if settings.params.stream.log_predictions:
            from visionloop.serving.app import make_writer

            writer = make_writer(settings)
            writer.start()
            stack.callback(_close_writer, writer, settings.params.serving.drain_seconds)
        if model_spec is not None:
            from visionloop.models.spec import load_model

            fixed = load_model(settings, model_spec)
            get_model = lambda: fixed  # noqa: E731
        else:
            from visionloop.serving.reload import ModelManager
            from visionloop.serving.sources import source_from_uri
            from visionloop.streaming.follow import following

            manager = ModelManager(source_from_uri(settings, None), poll_seconds=settings.params.serving.poll_seconds,
                                   max_batch=options.batch_size)
            get_model = stack.enter_context(following(manager, first_load_timeout=30.0)).current
        return run_stream(source, options, get_model=get_model, sink=sink,
                          log_submit=writer.submit if writer is not None else None, stream_id=stream_id,
                          annotate=video)


def _close_writer(writer: LogWriter, drain_seconds: float) -> None:
    writer.close(drain_seconds)
    if writer.log is not None:
        writer.log.dispose()
