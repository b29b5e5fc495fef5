"""`LocalPolicy`: a served model run in this process by onnxruntime, with the remote client's API.

    with HamletClient("localhost:50051") as client:
        policy = client.local_policy("townlet-L2-lstm")    # fetches the verified ONNX export, checks its sha256
        result = policy.predict(obs)                         # a Prediction, as client.predict returns
        with policy.episode(num_envs=4, seed=0) as episode:  # the LSTM state lives here, per environment
            step = episode.step(obs_batch, reset=dones)      # a StepResult, as Episode.step returns

Needs ``pip install 'hamlet-client[local]'`` (onnxruntime; still no torch). The policy acts as the server does:
greedy is the argmax over the allowed actions, each environment explores with probability epsilon and then
picks uniformly among its allowed actions, a ``reset`` row starts from zero LSTM state, the first step of an
episode too. Q-values equal the server's within the ONNX tolerance the server verified the export with
(``atol + rtol * |q|``, 1e-5 each); seeded exploration draws from numpy, so its random actions differ from
the server's (torch) for the same seed.

New versions are followed between episodes: when `episode` or `predict` is called at least
``poll_interval`` seconds after the last check, the policy asks the server for the model's latest version
and, if it changed, fetches and checks the new artifact; running episodes keep the version they started
on. A check that fails (server unreachable, a tampered artifact) keeps the current version and logs why.
"""

from __future__ import annotations

import itertools
import logging
import numbers
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from hamlet_client.artifacts import ModelArtifact
from hamlet_client.errors import ArtifactIntegrityError, FailedPreconditionError, HamletError, InvalidArgumentError
from hamlet_client.messages import check_epsilon
from hamlet_client.results import ModelMetadata, Prediction, StepResult
from hamlet_client.tensors import Hidden, encode_reset, to_observation_batch

__all__ = ["DEFAULT_POLL_INTERVAL", "LocalEpisode", "LocalPolicy", "OnnxRunner", "epsilon_greedy"]

logger = logging.getLogger(__name__)

DEFAULT_POLL_INTERVAL = 30.0
"""Seconds between checks for a newer version (made only when an episode or a predict starts)."""

_episode_ids = itertools.count()
Fetch = Callable[[str, int | None], ModelArtifact]
"""``fetch(model, version)`` -> the checked artifact (version None: the latest)."""
LatestVersion = Callable[[str], int]
"""``latest(model)`` -> the server's latest version of the model."""


def epsilon_greedy(
    q_values: npt.NDArray[np.float32],
    epsilon: float,
    action_mask: npt.NDArray[np.bool_] | None,
    rng: np.random.Generator | None,
) -> npt.NDArray[np.int64]:
    """Masked epsilon-greedy over ``q_values [B, A]`` -> ``[B]`` int64, the server's rule in numpy.

    Greedy is the argmax over the allowed actions; each row explores with probability ``epsilon`` and then
    picks uniformly among its allowed actions. With ``epsilon == 0`` nothing is drawn.
    """
    masked = q_values if action_mask is None else np.where(action_mask, q_values, -np.inf)
    greedy: npt.NDArray[np.int64] = masked.argmax(axis=1).astype(np.int64)
    if epsilon <= 0.0:
        return greedy
    rng = rng if rng is not None else np.random.default_rng()
    batch, num_actions = q_values.shape
    explore = rng.random(batch) < epsilon
    scores = rng.random((batch, num_actions))  # uniform among the allowed: argmax of uniform scores over them
    if action_mask is not None:
        scores = np.where(action_mask, scores, -1.0)
    actions: npt.NDArray[np.int64] = np.where(explore, scores.argmax(axis=1), greedy).astype(np.int64)
    return actions


class OnnxRunner:
    """One artifact in an onnxruntime session: ``forward(obs [B, obs_dim], hidden) -> (q [B, A], hidden')``.

    Raises:
        ImportError: onnxruntime is not installed (``pip install 'hamlet-client[local]'``).
        ArtifactIntegrityError: onnxruntime cannot load the bytes, or the graph's names or metadata_props do
        not describe the model the server announced.
    """

    def __init__(self, artifact: ModelArtifact, *, num_threads: int = 1) -> None:
        ort = _onnxruntime()
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise InvalidArgumentError(f"num_threads: expected an int >= 1, got {num_threads!r}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = num_threads
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        where = f"model artifact {artifact.model!r} version {artifact.version}"
        try:
            self._session = ort.InferenceSession(
                artifact.data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own pybind classes for bad bytes
            raise ArtifactIntegrityError(f"{where}: onnxruntime cannot load it: {str(exc).splitlines()[0]}") from None
        _check_graph(self._session, artifact, where)
        self.artifact = artifact
        self.obs_dim = artifact.obs_dim
        self.action_dim = artifact.action_dim
        self.hidden_dim = artifact.hidden_dim
        self._outputs = list(artifact.output_names)

    def forward(
        self, obs: npt.NDArray[np.float32], hidden: Hidden | None
    ) -> tuple[npt.NDArray[np.float32], Hidden | None]:
        """``obs [B, obs_dim]`` float32, ``hidden`` (h, c) each ``[1, B, H]`` (None: zeros) -> (q, hidden')."""
        if not self.hidden_dim:
            (q,) = self._session.run(self._outputs, {"obs": obs})
            return q, None
        if hidden is None:
            zeros = np.zeros((1, obs.shape[0], self.hidden_dim), dtype=np.float32)
            hidden = (zeros, zeros)
        q, h, c = self._session.run(self._outputs, {"obs": obs, "hidden_h": hidden[0], "hidden_c": hidden[1]})
        return q, (h, c)


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(
            "local inference needs onnxruntime: pip install 'hamlet-client[local]' (or use remote inference)"
        ) from None
    return onnxruntime


def _check_graph(session: Any, artifact: ModelArtifact, where: str) -> None:
    """The graph has the announced inputs and outputs, and its metadata_props the announced dims."""
    inputs = tuple(i.name for i in session.get_inputs())
    outputs = tuple(o.name for o in session.get_outputs())
    if inputs != artifact.input_names or outputs != artifact.output_names:
        raise ArtifactIntegrityError(
            f"{where}: the graph has inputs {list(inputs)} and outputs {list(outputs)}; the server announced "
            f"{list(artifact.input_names)} -> {list(artifact.output_names)}"
        )
    props = session.get_modelmeta().custom_metadata_map
    expected = {
        "format": artifact.format,
        "obs_dim": str(artifact.obs_dim),
        "action_dim": str(artifact.action_dim),
        "hidden_dim": str(artifact.hidden_dim) if artifact.hidden_dim else "none",
    }
    differing = [f"{key} {props.get(key)!r} in the file, {want!r} announced" for key, want in expected.items()
                 if props.get(key) != want]  # fmt: skip
    if differing:
        raise ArtifactIntegrityError(f"{where}: the file is not the announced model: " + "; ".join(differing))


def _check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or int(seed) < 0:
        raise InvalidArgumentError(f"seed: expected an int >= 0 or None, got {seed!r}")
    return int(seed)


def _observations(obs: Any, runner: OnnxRunner, rows: int | None = None) -> npt.NDArray[np.float32]:
    """``[B, obs_dim]`` float32, checked as the server checks a request."""
    arr = to_observation_batch(obs)
    if arr.shape[1] != runner.obs_dim:
        raise InvalidArgumentError(
            f"obs: expected {runner.obs_dim} features per observation for model {runner.artifact.model!r}, got "
            f"{arr.shape[1]}; build observations for this model's level"
        )
    if rows is not None and arr.shape[0] != rows:
        raise InvalidArgumentError(
            f"obs: expected one observation per environment, [{rows}, obs_dim], got {arr.shape[0]} row(s)"
        )
    return arr


def _action_mask(mask: Any, batch: int, action_dim: int) -> npt.NDArray[np.bool_] | None:
    """``[B, A]`` bool (``[A]`` for one sample), every row with an allowed action; None passes."""
    if mask is None:
        return None
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise InvalidArgumentError(f"action_mask: expected a bool array (True = allowed), got dtype {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.shape != (batch, action_dim):
        raise InvalidArgumentError(f"action_mask: expected shape [{batch}, {action_dim}], got {list(arr.shape)}")
    empty = np.flatnonzero(~arr.any(axis=1))
    if empty.size:
        raise InvalidArgumentError(f"action_mask: row(s) {empty[:10].tolist()} allow no action; each needs one True")
    return arr


def _hidden(hidden: Any, batch: int, hidden_dim: int) -> Hidden | None:
    if hidden is None:
        return None
    if not hidden_dim:
        raise InvalidArgumentError("hidden: this model is feed-forward (no LSTM state); pass hidden=None")
    if isinstance(hidden, (str, bytes)) or len(hidden) != 2:
        raise InvalidArgumentError(f"hidden: expected a pair (h, c) of arrays shaped [1, {batch}, {hidden_dim}]")
    parts = []
    for name, part in zip("hc", hidden, strict=True):
        arr = np.ascontiguousarray(part, dtype=np.float32)
        if arr.shape != (1, batch, hidden_dim):
            raise InvalidArgumentError(
                f"hidden {name}: expected shape [1, {batch}, {hidden_dim}], got {list(arr.shape)}"
            )
        if not np.isfinite(arr).all():
            raise InvalidArgumentError(f"hidden {name}: expected finite values, got NaN or Inf")
        parts.append(arr)
    return parts[0], parts[1]


class LocalPolicy:
    """A model version run in this process; made by `HamletClient.local_policy` (which see for the arguments).

    Attributes ``model``, ``version``, ``obs_dim``, ``action_dim``, ``recurrent``, ``sha256`` and ``metadata``
    describe the version new episodes get. Thread-safe; each `LocalEpisode` belongs to one thread at a time.
    """

    def __init__(
        self,
        fetch: Fetch,
        latest: LatestVersion,
        model: str = "",
        *,
        version: int | None = None,
        poll_interval: float | None = DEFAULT_POLL_INTERVAL,
        num_threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if poll_interval is not None and (
            isinstance(poll_interval, bool) or not isinstance(poll_interval, numbers.Real) or poll_interval < 0
        ):
            raise InvalidArgumentError(
                f"poll_interval: expected seconds >= 0, or None to never follow new versions, got {poll_interval!r}"
            )
        self._fetch = fetch
        self._latest = latest
        self._pinned = version is not None
        self._poll_interval = poll_interval
        self._num_threads = num_threads
        self._clock = clock
        self._lock = threading.Lock()
        self._runner = self._load(model, version)
        self._checked_at = clock()
        self.switches = 0
        """How many times the policy moved to another version."""

    # ------------------------------------------------------------------ what runs

    @property
    def artifact(self) -> ModelArtifact:
        return self._runner.artifact

    model = property(lambda self: self._runner.artifact.model, doc="Name of the model.")
    version = property(lambda self: self._runner.artifact.version, doc="The version new episodes get.")
    obs_dim = property(lambda self: self._runner.obs_dim)
    action_dim = property(lambda self: self._runner.action_dim)
    recurrent = property(lambda self: bool(self._runner.hidden_dim), doc="True when the model keeps LSTM state.")
    sha256 = property(lambda self: self._runner.artifact.sha256, doc="sha256 of the running ONNX file (checked).")

    @property
    def metadata(self) -> ModelMetadata:
        """The checkpoint metadata of the version new episodes get."""
        return self._runner.artifact.metadata

    def __repr__(self) -> str:
        return f"LocalPolicy({self.model!r}@{self.version}, sha256={self.sha256[:12]})"

    # ------------------------------------------------------------------ versions

    def refresh(self) -> bool:
        """Ask the server for the model's latest version now and switch to it if it changed (not for a pinned
        ``version``). Returns True when the policy switched. Raises what the server or the checks raise."""
        if self._pinned:
            return False
        with self._lock:
            self._checked_at = self._clock()
            current = self._runner
            latest = self._latest(current.artifact.model)
            if latest == current.artifact.version:
                return False
            runner = self._load(current.artifact.model, latest)
            self._runner = runner
            self.switches += 1
        logger.info("local policy %r: switched from version %d to %d (sha256 %s)", runner.artifact.model,
                    current.artifact.version, runner.artifact.version, runner.artifact.sha256[:12])  # fmt: skip
        return True

    def _load(self, model: str, version: int | None) -> OnnxRunner:
        """Fetch ``model`` at ``version`` and open it; the artifact must be the one asked for."""
        artifact = self._fetch(model, version)
        if (model and artifact.model != model) or (version is not None and artifact.version != version):
            raise ArtifactIntegrityError(
                f"asked for model {model or '(default)'!r} version {'latest' if version is None else version}, the "
                f"server sent {artifact.model!r} version {artifact.version}; not run"
            )
        return OnnxRunner(artifact, num_threads=self._num_threads)

    def _current(self) -> OnnxRunner:
        """The runner for new work, after a version check when one is due (failures keep the current one)."""
        due = self._poll_interval is not None and self._clock() - self._checked_at >= self._poll_interval
        if due and not self._pinned:
            try:
                self.refresh()
            except HamletError as exc:
                self._checked_at = self._clock()
                logger.warning("local policy %r: staying on version %d, the version check failed: %s",
                               self.model, self.version, exc)  # fmt: skip
        return self._runner

    # ------------------------------------------------------------------ inference

    def predict(
        self, obs: Any, *, epsilon: float = 0.0, hidden: Any = None, seed: int | None = None, action_mask: Any = None
    ) -> Prediction:
        """`HamletClient.predict`, computed here: actions and Q-values for one observation or a batch.

        Args:
            obs: ``[obs_dim]`` or ``[B, obs_dim]`` floats. hidden: recurrent models, ``(h, c)`` each
            ``[1, B, H]`` from the previous result (None: zeros). epsilon: exploration rate in [0, 1].
            seed: seed of the random draws. action_mask: ``[B, action_dim]`` bools, True = allowed.

        Returns:
            `Prediction` (``actions [B]``, ``q_values [B, A]``, ``hidden``, ``model``, ``version``).

        Raises:
            InvalidArgumentError: bad input, with what was expected.
        """
        runner = self._current()
        obs_a = _observations(obs, runner)
        batch = obs_a.shape[0]
        eps = check_epsilon(epsilon)
        mask = _action_mask(action_mask, batch, runner.action_dim)
        state = _hidden(hidden, batch, runner.hidden_dim)
        rng = np.random.default_rng(_check_seed(seed)) if eps > 0 else None
        q, new_hidden = runner.forward(obs_a, state)
        actions = epsilon_greedy(q, eps, mask, rng)
        artifact = runner.artifact
        return Prediction(
            actions=actions, q_values=q, hidden=new_hidden, model=artifact.model, version=artifact.version
        )

    def episode(self, *, num_envs: int = 1, epsilon: float = 0.0, seed: int | None = None) -> LocalEpisode:
        """`HamletClient.episode`, run here: ``num_envs`` environments whose LSTM state this process keeps.

        The episode stays on the version it started with. Use it as a context manager (or call `close`).
        """
        if isinstance(num_envs, bool) or not isinstance(num_envs, numbers.Integral) or int(num_envs) < 1:
            raise InvalidArgumentError(f"num_envs: expected an int >= 1, got {num_envs!r}")
        return LocalEpisode(self._current(), int(num_envs), check_epsilon(epsilon), _check_seed(seed))


class LocalEpisode:
    """`Episode`'s surface (``step``, ``close``, ``cancel``, the attributes), with the LSTM state kept here."""

    def __init__(self, runner: OnnxRunner, num_envs: int, epsilon: float, seed: int | None) -> None:
        self._runner = runner
        self.session_id = f"local-{next(_episode_ids)}"
        self.model: str = runner.artifact.model
        self.version: int = runner.artifact.version
        self.num_envs = num_envs
        self.obs_dim = runner.obs_dim
        self.action_dim = runner.action_dim
        self.recurrent = bool(runner.hidden_dim)
        self.resumes = 0
        self._epsilon = epsilon
        self._rng = np.random.default_rng(seed)
        self._hidden: Hidden | None = None  # None: zeros (the first step)
        self._step_index = 0
        self._closed = False
        self._lock = threading.Lock()

    @property
    def closed(self) -> bool:
        return self._closed

    def step(self, obs: Any, reset: Any = None, *, action_mask: Any = None, epsilon: float | None = None) -> StepResult:
        """One action per environment (see `Episode.step`): ``obs [num_envs, obs_dim]``, ``reset`` per environment
        (True: that row's LSTM state is zeroed first), ``action_mask [num_envs, action_dim]``, ``epsilon`` for
        this step only. Bad input raises `InvalidArgumentError` and leaves the episode usable."""
        runner = self._runner
        obs_a = _observations(obs, runner, rows=self.num_envs)
        resets = encode_reset(reset, num_envs=self.num_envs)
        mask = _action_mask(action_mask, self.num_envs, runner.action_dim)
        eps = self._epsilon if epsilon is None else check_epsilon(epsilon, field="epsilon")
        with self._lock:
            if self._closed:
                raise FailedPreconditionError(f"episode {self.session_id} is closed")
            hidden = self._hidden
            if hidden is not None and any(resets):
                keep = ~np.asarray(resets, dtype=bool).reshape(1, -1, 1)
                hidden = (hidden[0] * keep, hidden[1] * keep)
            q, self._hidden = runner.forward(obs_a, hidden)
            actions = epsilon_greedy(q, eps, mask, self._rng)
            index, self._step_index = self._step_index, self._step_index + 1
        return StepResult(actions=actions, q_values=q, step_index=index, model=self.model, version=self.version)

    def close(self, timeout: float | None = None) -> None:
        """End the episode and drop its LSTM state. Idempotent (``timeout`` is accepted for `Episode`'s API)."""
        self._closed = True
        self._hidden = None

    cancel = close

    def __enter__(self) -> LocalEpisode:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"LocalEpisode({self.session_id!r}, model={self.model!r}@{self.version}, num_envs={self.num_envs}, {state})"
        )
