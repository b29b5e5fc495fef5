"""The viewer's errors: a bad setting from the command line or the page, and a lost episode stream."""

from __future__ import annotations

__all__ = ["StreamLostError", "ViewerConfigError", "ViewerError"]


class ViewerError(Exception):
    """Base of every error the viewer raises itself."""


class ViewerConfigError(ViewerError, ValueError):
    """A setting (flag or page control) that does not fit: unknown model, level, version, bad number."""


class StreamLostError(ViewerError):
    """The episode stream ended under the viewer (server restart, idle TTL, cancelled); reopen it."""
