"""Errors raised by the Townlet simulator.

Every class also derives from :class:`ValueError`, so callers that only care about "bad input" can catch
that; callers that want to tell the cases apart catch the specific class.
"""

from __future__ import annotations

__all__ = ["InvalidActionError", "InvalidStateError", "LevelConfigError", "StateError", "TownletEnvError"]


class TownletEnvError(ValueError):
    """Base class of every error raised by ``townlet.env``."""


class LevelConfigError(TownletEnvError):
    """A level name is unknown or a level / constructor setting is out of range."""


class InvalidActionError(TownletEnvError):
    """An action batch has the wrong shape, dtype or values."""


class StateError(TownletEnvError):
    """The simulator was used in the wrong order (e.g. ``step`` before ``reset``) or given a bad state."""


class InvalidStateError(StateError):
    """A state given to ``set_state`` (or built with ``EnvState.build``) that the simulator could never reach.

    Attributes:
        field: the :class:`~townlet.env.state.EnvState` field at fault (``"meters"``, ``"layouts"``, ...).
        expected: what that field must hold.
        got: what it held (the first offending value and the env it belongs to).
    """

    def __init__(self, field: str, expected: str, got: str) -> None:
        self.field = field
        self.expected = expected
        self.got = got
        super().__init__(f"state.{field}: expected {expected}, got {got}")
