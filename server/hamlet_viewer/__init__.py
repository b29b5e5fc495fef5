"""``hamlet_viewer``: watch a Hamlet agent play Townlet live in the browser.

The viewer runs the reference simulator (`townlet.env`) and takes every action from a served model through
the client SDK's episode stream (the server keeps the LSTM state), or from a local `HamletModel` with
``--checkpoint``. One page on 127.0.0.1:8765, state pushed over a WebSocket. See ``docs/VIEWER.md``.

Layers: `brains` (where actions come from) <- `session` (env + bookkeeping, one frame per step) <-
`frames` (the JSON the page gets) <- `app` (Starlette, the play loop) <- `cli`. Nothing imports this package.
"""

from hamlet_viewer.brains import Brain, Decision, LocalBrain, ModelEntry, RemoteBrain
from hamlet_viewer.errors import StreamLostError, ViewerConfigError, ViewerError
from hamlet_viewer.session import SessionSettings, ViewerSession

__all__ = [
    "Brain",
    "Decision",
    "LocalBrain",
    "ModelEntry",
    "RemoteBrain",
    "SessionSettings",
    "StreamLostError",
    "ViewerConfigError",
    "ViewerError",
    "ViewerSession",
]
