"""The canary forward a model version must pass before the server promotes it.

A diverged training run can write weights that load (finite or not) but answer NaN or Inf: served, such a
version returns NaN Q-values and action 0 to every caller. `canary_problem` runs the loaded backend the way
the batcher will (its `forward(obs [B, obs_dim], hidden) -> (q, hidden')`) on zero and random observations
at batch 1 and 8, and for a recurrent model one more step from the state the first step returned, and
says what came out non-finite.

    problem = canary_problem(model)      # None: promote; else a one-line reason for the log and the metric
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hamlet_server.array_ops import ArrayOps, ops_for
from hamlet_server.backends import Backend, Hidden

__all__ = ["CANARY_BATCHES", "canary_problem"]

CANARY_BATCHES = (1, 8)


def canary_problem(model: Backend, *, seed: int = 0) -> str | None:
    """None if every output of every canary forward is finite, else what was not (one line).

    ``model`` is what a backend loader returns (`load_backend`): it uses ``forward``, ``obs_dim``,
    ``is_recurrent`` and ``device`` (and ``array_kind``: the canary runs on the backend's own arrays).
    """
    ops = ops_for(model)
    rng = np.random.default_rng(seed)
    for batch in CANARY_BATCHES:
        inputs = {
            "zero": np.zeros((batch, int(model.obs_dim)), dtype=np.float32),
            "random": rng.random((batch, int(model.obs_dim)), dtype=np.float32),
        }
        for label, obs in inputs.items():
            problem = _run(model, ops, obs, f"{label} observations at batch {batch}")
            if problem:
                return problem
    return None


def _run(model: Backend, ops: ArrayOps, obs: np.ndarray, what: str) -> str | None:
    with ops.inference():
        q, hidden = model.forward(ops.from_host(obs), None)
        problem = _non_finite(ops, q, hidden, what)
        if problem or not model.is_recurrent:
            return problem
        q, hidden = model.forward(ops.from_host(obs), hidden)
        return _non_finite(ops, q, hidden, f"{what}, second recurrent step")


def _non_finite(ops: ArrayOps, q: Any, hidden: Hidden | None, what: str) -> str | None:
    outputs = {"q_values": q}
    if hidden is not None:
        outputs.update(hidden_h=hidden[0], hidden_c=hidden[1])
    for name, value in outputs.items():
        finite = np.isfinite(ops.to_host(value))
        if not bool(finite.all()):
            return f"canary forward on {what}: {int((~finite).sum())} of {finite.size} {name} values are NaN or Inf"
    return None
