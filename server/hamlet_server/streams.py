"""The life of a StreamEpisode stream, from the moment it opens to the moment its state is freed.

One `StreamTable` owns every open stream. A stream counts against `max_streams` from the moment it opens
(before its `EpisodeStart`), and against `max_unstarted` until it starts: a stream that opens past that
ends the oldest stream still waiting for its start (`UNSTARTED_LIMIT`), so a client that re-opens streams and
never starts them holds at most `max_unstarted` places and cannot starve clients that start at once.
`start()` gives a stream its model version and table rows (within `max_slots` per version); `end()` records
why the server ends it and interrupts its handler; `free()` gives everything back.
`overdue()` finds the streams that broke a time limit:

    opened ──start──> started ──step──> ... ──> ended(reason) ──> freed
      │ no start within start_timeout: START_TIMEOUT
      └ (any phase) no message either way for ttl while waiting on the client: IDLE_TIMEOUT

Every way a stream ends is an `Ending`: a typed `EndReason` with the gRPC status code, the message, the
metric label and the log level that go with it, decided here in one place. The servicer only adapts gRPC
to this module: it reads and writes messages, marks the phase, and turns an `Ending` into the in-band
`EpisodeEnded` response and the final status.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from hamlet_server.sessions import Session

if TYPE_CHECKING:
    from hamlet_server.repository import ServedModel

__all__ = [
    "EndReason",
    "Ending",
    "EpisodeStream",
    "Phase",
    "SessionLimitError",
    "SlotLimitError",
    "StreamTable",
    "UnstartedLimitError",
]

log = logging.getLogger(__name__)
SC = grpc.StatusCode


class SessionLimitError(RuntimeError):
    """The server already holds `max_streams` open streams (RESOURCE_EXHAUSTED, reason SESSION_LIMIT)."""


class UnstartedLimitError(SessionLimitError):
    """`max_unstarted` streams are between opening and started, none waiting to be ended (UNSTARTED_LIMIT)."""


class SlotLimitError(RuntimeError):
    """A model version's environment rows would exceed `max_slots` (RESOURCE_EXHAUSTED, reason SLOT_LIMIT)."""


class EndReason(enum.Enum):
    """Why a stream ended. The value is the metric label and the proto's ``END_REASON_<NAME>``."""

    CLIENT_CLOSED = "client_closed"  # the client half-closed: OK, nothing in-band
    CLIENT_CANCELLED = "client_cancelled"  # the client cancelled or vanished: nothing can be sent
    IDLE_TIMEOUT = "idle_timeout"  # no message either way for the TTL while the server waited on the client
    START_TIMEOUT = "start_timeout"  # no EpisodeStart within the start timeout
    EVICTED_CAPACITY = "evicted_capacity"  # a limit (streams, rows) refused it
    SERVER_DRAINING = "server_draining"  # the server is shutting down
    MODEL_REMOVED = "model_removed"  # the model version stopped being hosted (not sent today: streams pin it)
    BAD_REQUEST = "bad_request"  # the client sent something the server refuses (the code says what kind)
    SERVER_ERROR = "server_error"  # a fault on the server (INTERNAL, logged with its traceback)


_LOG_LEVEL = {
    EndReason.CLIENT_CLOSED: logging.DEBUG,
    EndReason.CLIENT_CANCELLED: logging.DEBUG,
    EndReason.BAD_REQUEST: logging.INFO,
    EndReason.SERVER_ERROR: logging.ERROR,
}


@dataclass(frozen=True)
class Ending:
    """How one stream ends: reason, status code, message, and a stable machine-readable error reason."""

    reason: EndReason
    code: grpc.StatusCode
    message: str
    error_reason: str = ""
    """Stable UPPER_SNAKE error reason (``IDLE_TIMEOUT``, ``OBS_WIDTH_MISMATCH``, ...); empty when OK."""

    @property
    def in_band(self) -> bool:
        """Whether the client is told in-band (an `EpisodeEnded` response) before the status."""
        return self.reason not in (EndReason.CLIENT_CLOSED, EndReason.CLIENT_CANCELLED)

    @property
    def log_level(self) -> int:
        return _LOG_LEVEL.get(self.reason, logging.INFO)

    @classmethod
    def client_closed(cls) -> Ending:
        return cls(EndReason.CLIENT_CLOSED, SC.OK, "")

    @classmethod
    def client_cancelled(cls) -> Ending:
        return cls(EndReason.CLIENT_CANCELLED, SC.CANCELLED, "the client cancelled the stream or went away")

    @classmethod
    def idle(cls, ttl: float, waiting_for: str) -> Ending:
        return cls(
            EndReason.IDLE_TIMEOUT, SC.DEADLINE_EXCEEDED,
            f"stream idle for more than {ttl:g} s (--session-ttl) while the server waited for the client to "
            f"{waiting_for}; its state was freed",
            "IDLE_TIMEOUT",
        )  # fmt: skip

    @classmethod
    def start_timeout(cls, timeout: float) -> Ending:
        return cls(
            EndReason.START_TIMEOUT, SC.DEADLINE_EXCEEDED,
            f"no EpisodeStart within {timeout:g} s of opening the stream (--start-timeout); send the start first",
            "START_TIMEOUT",
        )  # fmt: skip

    @classmethod
    def unstarted_evicted(cls, max_unstarted: int) -> Ending:
        return cls(
            EndReason.EVICTED_CAPACITY, SC.RESOURCE_EXHAUSTED,
            f"ended before its EpisodeStart to make room for a new stream: the server keeps at most {max_unstarted} "
            "streams waiting for their start (--max-unstarted), the oldest go first; send the start as soon as the "
            "stream opens",
            "UNSTARTED_LIMIT",
        )  # fmt: skip

    @classmethod
    def draining(cls) -> Ending:
        return cls(
            EndReason.SERVER_DRAINING, SC.UNAVAILABLE,
            "server is shutting down; the episode state is gone, start again on another replica",
            "SERVER_DRAINING",
        )  # fmt: skip


class Phase(enum.Enum):
    """What a stream's handler is doing now; the TTL counts only while it waits on the client."""

    OPENED = "opened"  # waiting for the EpisodeStart
    READING = "reading"  # started, waiting for the next request
    STEPPING = "stepping"  # the server is working on a request
    WRITING = "writing"  # waiting for the client to take a response (flow control)


@dataclass(eq=False)
class EpisodeStream:
    """One open StreamEpisode: its id, phase, timestamps, session (once started) and ending (once ended)."""

    stream_id: str
    task: asyncio.Task[Any] | None
    opened_at: float
    last_active: float
    phase: Phase = Phase.OPENED
    session: Session | None = None
    ending: Ending | None = None
    freed: bool = False
    _clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def enter(self, phase: Phase) -> None:
        """Mark the phase; entering or leaving a wait on the client counts as activity."""
        self.phase = phase
        self.last_active = self._clock()

    @property
    def started(self) -> bool:
        return self.session is not None


class StreamTable:
    """Every open stream: limits from the moment of opening, timeouts, typed endings, freeing."""

    def __init__(
        self,
        max_streams: int,
        *,
        ttl: float = 300.0,
        start_timeout: float = 5.0,
        max_slots: int = 65536,
        max_unstarted: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_streams < 1 or max_unstarted < 1:
            raise ValueError(f"max_streams and max_unstarted must be >= 1, got {max_streams} and {max_unstarted}")
        self.max_streams = max_streams
        self.max_unstarted = max_unstarted
        self.ttl = ttl
        self.start_timeout = start_timeout
        self.max_slots = max_slots
        self._clock = clock
        self._streams: dict[str, EpisodeStream] = {}
        self._unstarted: dict[str, EpisodeStream] = {}  # opened, not started, not ended: oldest first
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._streams)

    def __contains__(self, stream_id: object) -> bool:
        return stream_id in self._streams

    def all(self) -> list[EpisodeStream]:
        return list(self._streams.values())

    @property
    def unstarted(self) -> int:
        """Streams opened and not started (nor ended): what `max_unstarted` bounds."""
        return len(self._unstarted)

    def open(self, task: asyncio.Task[Any] | None = None) -> EpisodeStream:
        """Admit a new stream (it counts from now on), first ending the oldest stream still waiting for its
        start if `max_unstarted` are; SessionLimitError at `max_streams`, UnstartedLimitError when the
        unstarted ones are all busy starting."""
        if len(self._unstarted) >= self.max_unstarted:
            self._evict_oldest_unstarted()
        if len(self._streams) >= self.max_streams:
            raise SessionLimitError(
                f"the server holds its maximum of {self.max_streams} streams (--max-sessions), counting streams "
                "not yet started; close one or retry later"
            )
        now = self._clock()
        stream = EpisodeStream(f"s{next(self._ids)}-{uuid.uuid4().hex[:8]}", task, now, now, _clock=self._clock)
        self._streams[stream.stream_id] = stream
        self._unstarted[stream.stream_id] = stream
        return stream

    def _evict_oldest_unstarted(self) -> None:
        oldest = next((s for s in self._unstarted.values() if s.phase is Phase.OPENED), None)
        if oldest is None:
            raise UnstartedLimitError(
                f"the server already starts its maximum of {self.max_unstarted} streams at once (--max-unstarted); "
                "retry shortly"
            )
        log.info("stream %s ended before its start: %d streams wait for theirs (--max-unstarted)",
                 oldest.stream_id, len(self._unstarted))  # fmt: skip
        self.end(oldest, Ending.unstarted_evicted(self.max_unstarted))

    def start(self, stream: EpisodeStream, model: ServedModel, num_envs: int, epsilon: float,
              seed: int | None) -> Session:  # fmt: skip
        """Give a stream its model version (whose reference the caller holds and hands over) and rows."""
        if model.is_recurrent and model.slots.in_use + num_envs > self.max_slots:
            raise SlotLimitError(
                f"model {model.name!r} version {model.version} serves {model.slots.in_use} of its "
                f"{self.max_slots} environment rows (--max-slots); this stream asks for {num_envs}; "
                "use fewer environments or retry later"
            )
        stream.session = Session.open(model, num_envs, epsilon, seed)
        self._unstarted.pop(stream.stream_id, None)
        return stream.session

    def end(self, stream: EpisodeStream, ending: Ending) -> None:
        """The server ends `stream` (the first ending wins). A handler waiting for a request is interrupted
        at once; one in the middle of a step, or writing its answer, sees the ending right after (a write
        is interrupted only when it is what stalled: an idle timeout while the client does not read)."""
        if stream.ending is not None or stream.freed:
            return
        stream.ending = ending
        self._unstarted.pop(stream.stream_id, None)
        waiting = stream.phase in (Phase.OPENED, Phase.READING)
        stalled_write = stream.phase is Phase.WRITING and ending.reason is EndReason.IDLE_TIMEOUT
        if (waiting or stalled_write) and stream.task is not None:
            stream.task.cancel()

    def free(self, stream: EpisodeStream) -> None:
        """Give back the stream's rows and model version and forget it; idempotent."""
        if stream.freed:
            return
        stream.freed = True
        self._streams.pop(stream.stream_id, None)
        self._unstarted.pop(stream.stream_id, None)
        if stream.session is not None:
            stream.session.close()

    def overdue(self, now: float | None = None) -> list[tuple[EpisodeStream, Ending]]:
        """The streams that broke a time limit, each with its ending (nothing is changed)."""
        now = self._clock() if now is None else now
        found = []
        for stream in self._streams.values():
            if stream.ending is not None:
                continue
            if stream.phase is Phase.OPENED and now - stream.opened_at > self.start_timeout:
                found.append((stream, Ending.start_timeout(self.start_timeout)))
            elif stream.phase in (Phase.READING, Phase.WRITING) and now - stream.last_active > self.ttl:
                waiting_for = "send a request" if stream.phase is Phase.READING else "read a response"
                found.append((stream, Ending.idle(self.ttl, waiting_for)))
        return found

    def sweep(self, now: float | None = None) -> int:
        """End every overdue stream; returns how many."""
        overdue = self.overdue(now)
        for stream, ending in overdue:
            log.info("stream %s: %s", stream.stream_id, ending.message)
            self.end(stream, ending)
        return len(overdue)

    def end_all(self, ending: Ending) -> None:
        for stream in self.all():
            self.end(stream, ending)

    def free_all(self) -> None:
        for stream in self.all():
            self.free(stream)
