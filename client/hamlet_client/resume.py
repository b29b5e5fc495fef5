"""Episodes that survive a replica, on the client side: keep the newest snapshot, decide when to resume.

The server sends an `EpisodeSnapshot` with every ``snapshot_every``-th step result and in the `EpisodeEnded`
of a drain. With ``resume=True`` an episode keeps the newest one; when the stream then ends for a reason
that is not the client's fault (a drain, a lost replica, a step timeout, an idle timeout) and the snapshot
is of the state right before the failed step, the episode reopens the stream from it (on whichever replica
the channel picks) and sends that step again, so the simulator's loop never sees the interruption. Shared
by the blocking and the asyncio client; nothing here touches the network.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from hamlet_client.errors import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    UnavailableError,
)
from hamlet_client.proto import inference_service_pb2 as service_pb2

__all__ = ["ResumeState", "is_resumable"]

logger = logging.getLogger("hamlet_client")

_RESUMABLE = (UnavailableError, InternalError, CancelledError, DeadlineExceededError)
"""The server went away or ended the episode for a reason of its own (not the request's)."""


def is_resumable(error: BaseException) -> bool:
    return isinstance(error, _RESUMABLE) and getattr(error, "end_reason", "") != "bad_request"


@dataclass
class ResumeState:
    """The newest snapshot of one episode and how to reopen it."""

    snapshot_every: int = 1
    """Ask for a snapshot with every N-th step (1: any failure resumes without a lost step; 0: only drains)."""
    allow_other_version: bool = False
    max_attempts: int = 5
    """Reopen attempts per interruption (a dead replica can be picked again until gRPC notices)."""
    backoff: float = 0.1
    """Seconds before the second attempt; doubles each time."""
    snapshot: service_pb2.EpisodeSnapshot | None = None
    snapshot_step: int = -1
    """The index of the step the kept snapshot continues with."""
    resumes: int = 0

    def keep(self, snapshot: service_pb2.EpisodeSnapshot) -> None:
        """Keep ``snapshot`` (from a step result or a drain's EpisodeEnded) as the newest."""
        self.snapshot = snapshot
        self.snapshot_step = int(service_pb2.EpisodeState.FromString(snapshot.state).step_index)

    def can_resume(self, error: BaseException, next_step: int) -> bool:
        """Whether ``error`` on step ``next_step`` can be hidden: resumable, and the snapshot is of the state
        right before that step (an older one would replay steps the simulator has already moved past)."""
        return is_resumable(error) and self.snapshot is not None and self.snapshot_step == next_step

    def start_request(self) -> service_pb2.StreamEpisodeRequest:
        assert self.snapshot is not None
        return service_pb2.StreamEpisodeRequest(
            start=service_pb2.EpisodeStart(
                resume_from=self.snapshot,
                snapshot_every=self.snapshot_every,
                allow_other_version=self.allow_other_version,
            )
        )

    def resumed(self, step: int, session_id: str, error: BaseException) -> None:
        """Count and log one reopening (``step`` was sent again on stream ``session_id``)."""
        self.resumes += 1
        logger.info("episode resumed at step %d on %s after %s", step, session_id, type(error).__name__)

    def waits(self) -> Iterator[float]:
        """Seconds to wait before each reopen attempt: 0, then ``backoff`` doubling."""
        for attempt in range(self.max_attempts):
            yield 0.0 if attempt == 0 else self.backoff * 2 ** (attempt - 1)
