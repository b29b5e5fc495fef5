"""`OnnxModel`: a Hamlet Q-network exported to ONNX, run by onnxruntime, with `HamletModel.predict`'s contract.

    model = OnnxModel("agent.onnx")                          # reads the file's Hamlet metadata_props
    result = model.predict(obs, hidden, epsilon=0.05, generator=np.random.default_rng(0))
    result.actions, result.q_values, result.hidden            # numpy arrays: [B] int64, [B, A] float32, (h, c)

This module imports numpy and onnxruntime only (never torch), so a serving process or a plain Python script
can load an exported agent without installing PyTorch. Files come from `townlet.inference.onnx_export`.
"""

from __future__ import annotations

import logging
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from townlet.inference import validation
from townlet.inference.errors import CheckpointError, InvalidInputError, first_line
from townlet.inference.validation import FloatArray, NumpyHidden

__all__ = [
    "HAMLET_ONNX_FORMAT",
    "INPUT_NAMES",
    "OUTPUT_NAMES",
    "NumpyHidden",
    "OnnxModel",
    "OnnxPredictResult",
    "epsilon_greedy_numpy",
    "make_session_options",
    "parse_metadata",
]

logger = logging.getLogger(__name__)

HAMLET_ONNX_FORMAT = "hamlet_onnx_v1"
"""Value of the ``format`` metadata_prop of every file `onnx_export.export_to_onnx` writes."""

INPUT_NAMES = {"simple": ("obs",), "recurrent": ("obs", "hidden_h", "hidden_c")}
OUTPUT_NAMES = {"simple": ("q_values",), "recurrent": ("q_values", "new_hidden_h", "new_hidden_c")}


_INT_KEYS = ("obs_dim", "action_dim", "hidden_dim", "opset")


@dataclass(frozen=True)
class OnnxPredictResult:
    """What `OnnxModel.predict` returns; the field names of `HamletModel`'s `PredictResult`, as numpy arrays."""

    actions: npt.NDArray[np.int64]
    """``[B]`` int64 chosen actions."""
    q_values: FloatArray
    """``[B, A]`` float32 Q-values of the network (before any masking)."""
    hidden: NumpyHidden | None
    """``(h, c)`` each ``[1, B, H]`` after this step (recurrent net), else None."""

    def __getitem__(self, key: str) -> Any:
        if key not in ("actions", "q_values", "hidden"):
            raise KeyError(f"{key!r}; an OnnxPredictResult has 'actions', 'q_values' and 'hidden'")
        return getattr(self, key)


def make_session_options(num_threads: int = 1) -> ort.SessionOptions:
    """Options for small models: ``num_threads`` intra- and inter-op threads, sequential, all graph optimisations.

    Hamlet's networks are tiny (0.03 M / 0.6 M parameters): thread hand-offs cost more than they save.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise InvalidInputError(f"num_threads: expected an int >= 1, got {num_threads!r}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = num_threads
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def parse_metadata(props: Mapping[str, str], path: str | Path) -> dict[str, Any]:
    """Turn a file's string ``metadata_props`` into typed metadata; `CheckpointError` if it is not a Hamlet export."""
    if props.get("format") != HAMLET_ONNX_FORMAT:
        raise CheckpointError(
            path,
            f"not a Hamlet ONNX export: metadata_props 'format' is {props.get('format')!r}, expected "
            f"{HAMLET_ONNX_FORMAT!r}; export it with `hamlet-model export-onnx`",
        )
    meta: dict[str, Any] = dict(props)
    for key in _INT_KEYS:
        raw = props.get(key, "")
        if raw in ("", "none"):
            meta[key] = None
            continue
        try:
            meta[key] = int(raw)
        except ValueError:
            raise CheckpointError(path, f"metadata_props {key!r} = {raw!r} is not an integer") from None
    if meta.get("network_type") not in INPUT_NAMES:
        raise CheckpointError(
            path, f"metadata_props 'network_type' is {meta.get('network_type')!r}; expected 'simple' or 'recurrent'"
        )
    for key in ("obs_dim", "action_dim"):
        if meta[key] is None or meta[key] < 1:
            raise CheckpointError(path, f"metadata_props {key!r} is missing or not positive")
    if meta["network_type"] == "recurrent" and (meta["hidden_dim"] is None or meta["hidden_dim"] < 1):
        raise CheckpointError(path, "metadata_props 'hidden_dim' is missing for a recurrent network")
    for key in ("checkpoint_sha256", "weights_sha256", "graph_weights_sha256"):
        if meta.get(key) in ("", "none"):
            meta[key] = None
    return meta


def epsilon_greedy_numpy(
    q_values: FloatArray,
    epsilon: float,
    action_mask: npt.NDArray[np.bool_] | None,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """Masked epsilon-greedy over ``q_values [B, A]`` -> ``[B]`` int64; numpy twin of `policy.epsilon_greedy`.

    Greedy = argmax over valid actions; each sample explores with probability ``epsilon`` and then picks
    uniformly among its valid actions. With ``epsilon == 0`` no random numbers are drawn.
    """
    greedy = _greedy(q_values, action_mask)
    if epsilon <= 0.0:
        return greedy
    batch, num_actions = q_values.shape
    explore = rng.random(batch) < epsilon
    scores = rng.random((batch, num_actions))
    if action_mask is not None:
        scores = np.where(action_mask, scores, -1.0)
    actions: npt.NDArray[np.int64] = np.where(explore, scores.argmax(axis=1), greedy).astype(np.int64)
    return actions


def _greedy(q_values: FloatArray, action_mask: npt.NDArray[np.bool_] | None) -> npt.NDArray[np.int64]:
    """Argmax over the valid actions of each row of ``q_values [B, A]`` -> ``[B]`` int64."""
    masked = q_values if action_mask is None else np.where(action_mask, q_values, -np.inf)
    actions: npt.NDArray[np.int64] = masked.argmax(axis=1).astype(np.int64, copy=False)
    return actions


class OnnxModel:
    """An exported Hamlet network in an onnxruntime session, with ``predict`` shaped like `HamletModel.predict`.

    Args:
        path: a ``.onnx`` file written by `townlet.inference.onnx_export.export_to_onnx`.
        num_threads: intra- and inter-op threads of the session (1 suits these small models).
        providers: onnxruntime execution providers; default CPU.

    Raises:
        CheckpointError: the file is missing, not ONNX, or not a Hamlet export (no / bad metadata_props).
    """

    def __init__(
        self, path: str | os.PathLike[str], *, num_threads: int = 1, providers: list[str] | None = None
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(self.path, "no such file")
        options = make_session_options(num_threads)
        try:
            self._session = ort.InferenceSession(
                str(self.path), sess_options=options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind classes for bad protobufs / graphs
            raise CheckpointError(self.path, f"onnxruntime cannot load the file: {first_line(exc)}") from None
        self._metadata = parse_metadata(self._session.get_modelmeta().custom_metadata_map, self.path)
        kind = self._metadata["network_type"]
        got_in = tuple(i.name for i in self._session.get_inputs())
        got_out = tuple(o.name for o in self._session.get_outputs())
        if got_in != INPUT_NAMES[kind] or got_out != OUTPUT_NAMES[kind]:
            raise CheckpointError(
                self.path,
                f"a {kind} export must have inputs {list(INPUT_NAMES[kind])} and outputs {list(OUTPUT_NAMES[kind])}; "
                f"got {list(got_in)} -> {list(got_out)}",
            )
        # Read once here, not on every call: predict() is on the serving hot path.
        self._obs_dim = int(self._metadata["obs_dim"])
        self._action_dim = int(self._metadata["action_dim"])
        self._hidden_dim: int | None = self._metadata["hidden_dim"] if kind == "recurrent" else None
        self._output_names = list(OUTPUT_NAMES[kind])
        logger.info("loaded ONNX %s network from %s", kind, self.path)

    # ------------------------------------------------------------------ properties

    @property
    def metadata(self) -> dict[str, Any]:
        """A copy of the file's metadata_props, dims as ints (``hidden_dim`` None for the MLP)."""
        return dict(self._metadata)

    @property
    def obs_dim(self) -> int:
        return self._obs_dim

    @property
    def action_dim(self) -> int:
        return self._action_dim

    @property
    def is_recurrent(self) -> bool:
        return self._hidden_dim is not None

    @property
    def hidden_dim(self) -> int | None:
        """LSTM width H of the recurrent network; None for the MLP."""
        return self._hidden_dim

    @property
    def session(self) -> ort.InferenceSession:
        """The underlying onnxruntime session (for ``run`` with your own feeds)."""
        return self._session

    def __repr__(self) -> str:
        m = self._metadata
        return f"OnnxModel({m['network_type']}, obs_dim={m['obs_dim']}, action_dim={m['action_dim']}, path={self.path})"

    # ------------------------------------------------------------------ inference

    def initial_hidden(self, batch_size: int) -> NumpyHidden:
        """Zero LSTM state ``(h, c)`` each ``[1, B, H]`` float32 (recurrent models only)."""
        if self._hidden_dim is None:
            raise InvalidInputError("initial_hidden: this is a feed-forward (simple) model; it has no hidden state")
        zeros = np.zeros((1, batch_size, self._hidden_dim), dtype=np.float32)
        return zeros, zeros.copy()

    def forward(self, obs: FloatArray, hidden: NumpyHidden | None = None) -> tuple[FloatArray, NumpyHidden | None]:
        """Trusted fast path (no validation): ``obs [B, obs_dim]`` float32 -> ``(q [B, A], hidden')``."""
        if self._hidden_dim is None:
            (q,) = self._session.run(self._output_names, {"obs": obs})
            return q, None
        if hidden is None:
            hidden = self.initial_hidden(obs.shape[0])
        q, h, c = self._session.run(self._output_names, {"obs": obs, "hidden_h": hidden[0], "hidden_c": hidden[1]})
        return q, (h, c)

    def predict(
        self,
        obs: Any,
        hidden: Any = None,
        epsilon: float = 0.0,
        action_mask: Any = None,
        generator: np.random.Generator | int | None = None,
    ) -> OnnxPredictResult:
        """Choose actions for a batch of observations, without changing anything.

        Args:
            obs: ``[obs_dim]`` or ``[B, obs_dim]`` floats (numpy array or nested list).
            hidden: recurrent models: ``(h, c)`` each ``[1, B, H]`` from the previous step; None = zeros.
            epsilon: exploration rate in [0, 1], drawn per sample (0 = greedy).
            action_mask: ``[B, A]`` bool, True = allowed; each row needs one allowed action.
            generator: a ``numpy.random.Generator`` or an int seed for reproducible exploration.

        Returns:
            `OnnxPredictResult` with ``actions [B]`` int64, ``q_values [B, A]`` float32 and ``hidden``.

        Raises:
            InvalidInputError: (a ValueError) when an argument does not fit, saying what was expected.
        """
        obs_a = validation.obs_array(obs, self._obs_dim)
        batch = obs_a.shape[0]
        checked_hidden = self._check_hidden(hidden, batch)
        eps = validation.check_epsilon(epsilon)
        mask = validation.mask_array(action_mask, batch, self._action_dim)
        seed = _check_generator(generator)
        q_values, new_hidden = self.forward(obs_a, checked_hidden)
        if eps == 0.0:  # the serving default: one argmax, and no Generator built (that alone cost 16-43 us)
            actions = _greedy(q_values, mask)
        else:
            rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
            actions = epsilon_greedy_numpy(q_values, eps, mask, rng)
        return OnnxPredictResult(actions=actions, q_values=q_values, hidden=new_hidden)

    def _check_hidden(self, hidden: Any, batch: int) -> NumpyHidden | None:
        """The rules of `validation.hidden_arrays`; zeros for None on a recurrent model."""
        checked = validation.hidden_arrays(hidden, batch, self._hidden_dim)
        if checked is None and self._hidden_dim is not None:
            return self.initial_hidden(batch)
        return checked


def _check_generator(generator: Any) -> np.random.Generator | int | None:
    """Validate ``generator`` without building anything: a Generator, an int seed, or None (fresh entropy)."""
    if generator is None or isinstance(generator, np.random.Generator):
        return generator
    if isinstance(generator, numbers.Integral) and not isinstance(generator, bool):
        return int(generator)
    raise InvalidInputError(
        f"generator: expected a numpy.random.Generator, an int seed or None, got {type(generator).__name__}"
    )
