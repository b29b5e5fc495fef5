"""The agent layer's error: a brain spec (or a checkpoint's ``network_params``) that describes no network.

It lives here, beside the brain specs and networks it is about, so that `townlet.agent` depends on nothing
above it; `townlet.inference.errors` re-exports the same class. A ``ValueError``, so callers that validate
input catch it with the rest.
"""

from __future__ import annotations

__all__ = ["BrainSpecError"]


class BrainSpecError(ValueError):
    """A brain spec (or a checkpoint's ``network_params``) is malformed; the message names the field."""
