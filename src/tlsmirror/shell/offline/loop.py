"""The one capture-file loop: every frame and every embedded secret of a capture, in file order, to a sink.

``decrypt`` and ``replay`` (a sink that feeds an engine) and the daemon's ``--pcap`` reader (a sink that
hashes frames to its workers) all read capture files through :func:`pump`, so a pcapng Decryption
Secrets Block means the same everywhere: its secrets take effect at its position in the file, after the
frames before it, and its bad lines are reported the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ...keys.events import Secret
from ...keys.keylog import parse_keylog
from ...pipeline import Engine
from .inputs import report_problems
from .pcapfile import CapturedFrame, CaptureReader, FrameFilter


class CaptureSink(Protocol):
    """Where :func:`pump` delivers a capture."""

    def on_frame(self, frame: CapturedFrame) -> None:
        """One captured frame."""

    def on_secrets(self, secrets: list[Secret], ts: float) -> None:
        """The secrets of one Decryption Secrets Block; ``ts`` is the time of the frame before it."""


class EngineFeed:
    """A :class:`CaptureSink` that feeds an :class:`~tlsmirror.pipeline.Engine` and passes what it emits to
    :meth:`handle` (``decrypt`` and ``replay`` are its two kinds)."""

    engine: Engine

    def on_frame(self, frame: CapturedFrame) -> None:
        events = self.engine.feed_frame(frame.linktype, frame.data, frame.ts)
        if events:
            self.handle(events)

    def on_secrets(self, secrets: list[Secret], ts: float) -> None:
        events = self.engine.add_secrets(secrets, ts)
        if events:
            self.handle(events)

    def finish(self) -> None:
        """End of input: flush the engine (every open connection ends here)."""
        self.handle(self.engine.finish())

    def handle(self, events: list[Any]) -> None:
        """What the engine emitted, in order."""
        raise NotImplementedError


class PumpStats:
    """What one :func:`pump` read: frames, secrets blocks, secrets, key log lines skipped in them, and bytes
    of corrupt capture data skipped to resynchronise."""

    __slots__ = ("bad_lines", "blocks", "corrupt_bytes", "frames", "secrets")

    def __init__(self) -> None:
        self.frames = 0
        self.blocks = 0
        self.secrets = 0
        self.bad_lines = 0
        self.corrupt_bytes = 0


def pump(reader: CaptureReader, sink: CaptureSink, warn: Callable[[str], None], *,
         every: int = 0, tick: Callable[[int], bool] | None = None) -> PumpStats:
    """Read ``reader`` to its end (or until ``tick`` says stop) into ``sink``.

    ``tick(frames)`` is called every ``every`` frames and after each secrets block (progress bars, pacing,
    a stop request); it returns True to stop reading. Skipped key log lines are reported through ``warn``
    naming the file and the block; the reader's own notes (a truncated file, corrupt data skipped with its
    offset and byte count) too, at the end. A capture of which nothing could be read raises
    :class:`~tlsmirror.shell.errors.CaptureFileError` when its end is reached. A sink that is also a
    :class:`~.pcapfile.FrameFilter` sees every packet in the reader's buffer first, and gets only the
    frames it does not skip (``every`` then counts those).
    """
    stats = PumpStats()
    frames = 0
    filtered = isinstance(sink, FrameFilter)
    if filtered:
        assert isinstance(sink, FrameFilter)
        reader.filter = sink
    # an engine's feed (decrypt, replay) called as what it is: compiled, a native call per frame instead of
    # a method looked up by name through the Protocol
    feed = sink if isinstance(sink, EngineFeed) else None
    for item in reader:
        if type(item) is CapturedFrame:
            frames += 1
            if feed is not None:
                feed.on_frame(item)
            else:
                sink.on_frame(item)
            if every and frames % every == 0 and tick is not None and tick(frames):
                break
        else:
            secrets, problems = parse_keylog(item.data)
            stats.blocks += 1
            stats.secrets += len(secrets)
            if problems:
                stats.bad_lines += len(problems)
                report_problems(f"{reader.name}: decryption secrets block {stats.blocks}", problems, warn,
                                ", line ")
            sink.on_secrets(secrets, item.ts)
            if tick is not None and tick(frames):
                break
    stats.frames = reader.frames if filtered else frames
    stats.corrupt_bytes = reader.corrupt_bytes
    for note in reader.warnings:
        warn(note)
    return stats
