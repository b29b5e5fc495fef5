"""The batcher against the reference path over random mixes of work (issue 13's test requirement).

Each schedule runs several model versions at once (the trained L2 demo model, a second version of it with
other weights, and the trained L1 MLP, all from models/), each
with its own `StepBatcher`, and submits rounds of concurrent work to all of them: stream steps of 1-4
environments (fresh streams, per-row resets, action masks, epsilons drawn from the stream's own generator,
a resumed stream whose first step carries its snapshot state, a stream that ends and whose rows a new stream
reuses), unary Predict calls with and without explicit hidden state, and items cancelled before their batch
runs. Batches are formed as the server forms them (split by `max_batch`, inline or on a worker thread).

For every item: its Q-values equal `HamletModel.predict` run alone on that item with that stream's own state;
its actions are exactly `epsilon_greedy` on those Q-values with a twin of the stream's generator (so the
random draws happen in the same order); a Predict's returned state equals the reference's. After the
schedule, each stream's rows of the hidden-state table hold its reference state. The onnx backend is held to
the export tolerance (1e-5 + 1e-5 |Q|), the torch one to float rounding between batch sizes.

The batcher and the table are written once over `hamlet_server.array_ops`, and run here on both array kinds:
torch (the torch backend, and the onnx backend driven through torch tensors the way the server did before
it ran on numpy) and numpy (the onnx backend as served now). A stream's generator is of its backend's kind
(torch: `epsilon_greedy` with a ``torch.Generator``, as `HamletModel.predict`; numpy: `epsilon_greedy_numpy`
with a ``numpy.random.Generator``, as `OnnxModel.predict`). The same schedule on the same onnxruntime sessions
gives bit-identical Q-values on both array kinds.
"""

from __future__ import annotations

import asyncio
import importlib.util
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from demo_models import DEMO_L1, DEMO_L2

from hamlet_server.array_ops import ArrayOps, ops_for
from hamlet_server.backends import OnnxBackedModel, load_backend
from hamlet_server.batcher import BatchResult, StepBatcher, WorkItem
from townlet.inference import HamletModel, epsilon_greedy, save_inference_checkpoint

torch.set_num_threads(1)

ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))
ROUNDS = 8


def _second_version(path: Path) -> HamletModel:
    """The trained L2 model with every weight moved a little: a new version with the same shapes."""
    model = HamletModel.load(path)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.network.parameters():
            param.add_(torch.randn(param.shape, generator=gen) * 0.01)
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The trained demo models that `make serve` serves, and a second version of the L2 one."""
    root = tmp_path_factory.mktemp("versions")
    return {
        "lstm-v1": DEMO_L2,  # trained CNN+LSTM, obs 54, hidden 256
        "lstm-v2": save_inference_checkpoint(_second_version(DEMO_L2), root / "lstm-v2.pt"),
        "mlp-v1": DEMO_L1,  # trained MLP, obs 91
    }


@pytest.fixture(scope="module")
def references(files: dict[str, Path]) -> dict[str, HamletModel]:
    return {name: HamletModel.load(path) for name, path in files.items()}


class _OnnxOnTorchArrays:
    """An onnx backend driven through torch tensors: what the server ran before its arrays followed the backend
    (torch in, numpy for onnxruntime, torch out). The same onnxruntime session as the numpy-kind backend."""

    array_kind = "torch"

    def __init__(self, onnx: OnnxBackedModel) -> None:
        self.onnx = onnx
        for name in ("obs_dim", "action_dim", "is_recurrent", "hidden_dim", "num_parameters", "metadata", "device"):
            setattr(self, name, getattr(onnx, name))

    def forward(self, obs: torch.Tensor, hidden: Any = None) -> tuple[torch.Tensor, Any]:
        np_hidden = None if hidden is None else (hidden[0].numpy(), hidden[1].numpy())
        q, new_hidden = self.onnx.forward(obs.numpy(), np_hidden)
        if new_hidden is None:
            return torch.from_numpy(q), None
        return torch.from_numpy(q), (torch.from_numpy(new_hidden[0]), torch.from_numpy(new_hidden[1]))


@pytest.fixture(scope="module")
def backends(files: dict[str, Path]) -> Iterator[dict[str, dict[str, Any]]]:
    loaded: dict[str, dict[str, Any]] = {
        "torch": {name: load_backend(path, "cpu", "torch") for name, path in files.items()}
    }
    if ONNX:
        loaded["onnx"] = {name: load_backend(path, "cpu", "onnx") for name, path in files.items()}
        loaded["onnx-on-torch"] = {name: _OnnxOnTorchArrays(model) for name, model in loaded["onnx"].items()}
    yield loaded


def _reference_explore(ops: ArrayOps, q: np.ndarray, epsilon: float, mask: np.ndarray | None, twin: Any) -> list[int]:
    """The model layer's rule for the kind: `epsilon_greedy` (torch) or `epsilon_greedy_numpy` (numpy)."""
    if ops.kind == "numpy":
        from townlet.inference.onnx_runtime import epsilon_greedy_numpy

        return epsilon_greedy_numpy(q, epsilon, mask, twin).tolist()
    torch_mask = None if mask is None else torch.from_numpy(mask)
    return epsilon_greedy(torch.from_numpy(q.copy()), epsilon, torch_mask, twin).tolist()


@dataclass
class _Stream:
    """One simulated stream: its rows of its version's table and its reference state."""

    version: str
    num_envs: int
    slots: list[int] | None
    slot_limit: int
    epsilon: float
    generator: Any  # of the backend's array kind
    twin: Any  # the same seed: replays the batcher's draws for the reference actions
    hidden: tuple[torch.Tensor, torch.Tensor] | None = None
    fresh: bool = True
    resume_from: tuple[torch.Tensor, torch.Tensor] | None = None  # a snapshot's state for the first step


class _Schedule:
    """Draws the work of each round and checks every result against the reference path."""

    def __init__(self, seed: int, references: dict[str, HamletModel], batchers: dict[str, StepBatcher]) -> None:
        self.rng = random.Random(seed)
        self.references = references
        self.batchers = batchers
        self.next_row = dict.fromkeys(batchers, 0)
        self.free_rows: dict[str, list[tuple[int, int]]] = {name: [] for name in batchers}
        self.streams: list[_Stream] = []
        self.items = 0
        self.checked = 0
        self.q_values: list[np.ndarray] = []  # every live item's Q-values, in the order drawn

    # ---- drawing work -------------------------------------------------------------------------------
    def open_stream(self) -> _Stream:
        version = self.rng.choice(sorted(self.batchers))
        reference = self.references[version]
        n = self.rng.randint(1, 4)
        slots, limit = None, 0
        if reference.is_recurrent:
            reusable = [start for start, rows in self.free_rows[version] if rows == n]
            if reusable and self.rng.random() < 0.7:  # take over an ended stream's rows (stale state in them)
                start = reusable[0]
                self.free_rows[version].remove((start, n))
            else:
                start = self.next_row[version]
                self.next_row[version] += n
            slots, limit = list(range(start, start + n)), self.next_row[version]
        seed = self.rng.randrange(2**31)
        epsilon = self.rng.choice([0.0, 0.0, 0.3, 1.0])
        ops = self.batchers[version].ops
        stream = _Stream(version, n, slots, limit, epsilon, ops.new_generator(seed), ops.new_generator(seed))
        if reference.is_recurrent and self.rng.random() < 0.25:  # resumed mid-episode from a snapshot: its
            size = (1, n, reference.hidden_dim)
            stream.resume_from = (torch.randn(size) * 0.5, torch.randn(size) * 0.5)  # first
            stream.fresh = False  # step carries the snapshot's state, and its (maybe stale) rows are not zeroed
        self.streams.append(stream)
        return stream

    def end_stream(self, stream: _Stream) -> None:
        self.streams.remove(stream)
        if stream.slots is not None:
            self.free_rows[stream.version].append((stream.slots[0], stream.num_envs))

    def _mask(self, rows: int, actions: int) -> np.ndarray | None:
        if self.rng.random() < 0.6:
            return None
        mask = torch.rand(rows, actions) < 0.6
        mask[torch.arange(rows), torch.randint(actions, (rows,))] = True  # every row keeps a valid action
        return mask.numpy()

    def step_item(self, stream: _Stream) -> tuple[WorkItem, dict]:
        reference = self.references[stream.version]
        n = stream.num_envs
        obs = torch.rand(n, reference.obs_dim)
        reset = None
        if stream.fresh:
            reset = torch.ones(n, dtype=torch.bool)
        elif self.rng.random() < 0.4:
            reset = torch.rand(n) < 0.5
        hidden = None
        first = stream.fresh or stream.resume_from is not None
        if stream.resume_from is not None:
            hidden, stream.resume_from = stream.resume_from, None
            stream.hidden = hidden
            if reset is not None:  # as the servicer does: the snapshot's state with the reset rows zeroed
                hidden = tuple(part.masked_fill(reset.view(1, -1, 1), 0.0) for part in hidden)  # type: ignore[assignment]
        stream.fresh = False
        mask = self._mask(n, reference.action_dim)
        ops = self.batchers[stream.version].ops
        item = WorkItem(obs.numpy(), stream.epsilon, mask, stream.generator,
                        slot_index=None if stream.slots is None else ops.index(stream.slots),
                        slot_limit=stream.slot_limit, reset=None if reset is None else reset.numpy(),
                        hidden=None if hidden is None else (hidden[0].numpy(), hidden[1].numpy()))  # fmt: skip
        return item, {"stream": stream, "reset": reset, "first": first}

    def predict_item(self, version: str) -> tuple[WorkItem, dict]:
        reference = self.references[version]
        b = self.rng.randint(1, 3)
        hidden = None
        if reference.is_recurrent and self.rng.random() < 0.5:
            size = (1, b, reference.hidden_dim)
            hidden = (torch.randn(size) * 0.5, torch.randn(size) * 0.5)
        seed = self.rng.randrange(2**31)
        epsilon = self.rng.choice([0.0, 0.5])
        ops = self.batchers[version].ops
        host_hidden = None if hidden is None else (hidden[0].numpy(), hidden[1].numpy())
        item = WorkItem(torch.rand(b, reference.obs_dim).numpy(), epsilon, self._mask(b, reference.action_dim),
                        ops.new_generator(seed), hidden=host_hidden, return_hidden=reference.is_recurrent)  # fmt: skip
        return item, {"version": version, "hidden": hidden, "twin": ops.new_generator(seed)}

    # ---- running and checking -----------------------------------------------------------------------
    async def run_round(self, onnx: bool) -> None:
        while len(self.streams) < 5 or (len(self.streams) < 8 and self.rng.random() < 0.3):
            self.open_stream()
        if self.streams and self.rng.random() < 0.2:
            self.end_stream(self.rng.choice(self.streams))
        work: list[tuple[str, WorkItem, dict]] = []
        for stream in self.streams:
            if self.rng.random() < 0.85:  # not every stream steps in every round
                item, about = self.step_item(stream)
                work.append((stream.version, item, about))
        for version in self.batchers:
            if self.rng.random() < 0.4:
                item, about = self.predict_item(version)
                work.append((version, item, about))
        self.rng.shuffle(work)
        cancelled = None
        stepping = [w for w in work if "stream" in w[2] and not w[2]["first"]]
        if stepping and self.rng.random() < 0.2:  # a handler gone before its batch runs: its item is skipped
            cancelled = self.rng.choice(stepping)
            cancelled[1].is_cancelled = lambda: True
        tasks = [asyncio.ensure_future(self.batchers[version].submit(item)) for version, item, _ in work]
        live = [(w, t) for w, t in zip(work, tasks, strict=True) if w is not cancelled]
        results = await asyncio.gather(*(t for _, t in live))
        for ((version, item, about), _), result in zip(live, results, strict=True):
            self.check(version, item, about, result, onnx)
        if cancelled is not None:
            task = tasks[work.index(cancelled)]
            assert not task.done()  # never answered, never run
            task.cancel()  # it drew nothing from its stream's generator, so the twin stays in step
        self.items += len(live)

    def check(self, version: str, item: WorkItem, about: dict, result: BatchResult, onnx: bool) -> None:
        reference = self.references[version]
        stream = about.get("stream")
        hidden = stream.hidden if stream is not None else about["hidden"]
        episode_start = about["reset"] if stream is not None else None
        expected = reference.predict(torch.from_numpy(item.obs), hidden, episode_start=episode_start)
        tol = {"rtol": 1e-5, "atol": 1e-5} if onnx else {"rtol": 1e-5, "atol": 1e-6}
        torch.testing.assert_close(torch.from_numpy(result.q_values), expected.q_values, **tol)
        self.q_values.append(result.q_values.copy())
        twin = stream.twin if stream is not None else about["twin"]
        ops = self.batchers[version].ops
        chosen = _reference_explore(ops, result.q_values, item.epsilon, item.action_mask, twin)
        assert result.actions.tolist() == chosen
        if item.action_mask is not None:
            assert bool(item.action_mask[np.arange(item.rows), result.actions].all())
        if stream is not None:
            stream.hidden = expected.hidden
        elif item.return_hidden:
            assert result.hidden is not None and expected.hidden is not None
            torch.testing.assert_close(torch.from_numpy(result.hidden[0]), expected.hidden[0], **tol)
            torch.testing.assert_close(torch.from_numpy(result.hidden[1]), expected.hidden[1], **tol)
        self.checked += 1

    def check_tables(self, onnx: bool) -> None:
        tol = {"rtol": 1e-5, "atol": 1e-5} if onnx else {"rtol": 1e-5, "atol": 1e-6}
        for stream in self.streams:
            if stream.slots is None or stream.fresh or stream.hidden is None:
                continue
            batcher = self.batchers[stream.version]
            assert batcher.table is not None
            h, c = batcher.read_rows(batcher.ops.index(stream.slots))
            torch.testing.assert_close(torch.from_numpy(h), stream.hidden[0][0], **tol)
            torch.testing.assert_close(torch.from_numpy(c), stream.hidden[1][0], **tol)


NEEDS_ONNX = pytest.mark.skipif(not ONNX, reason="no onnx")


async def _run_schedule(
    models: dict[str, Any], references: dict[str, HamletModel], seed: int, *, threaded: bool, max_batch: int,
    inline_rows: int, onnx: bool,
) -> tuple[_Schedule, list[int]]:  # fmt: skip
    torch.manual_seed(seed)
    executor = ThreadPoolExecutor(1, initializer=torch.set_num_threads, initargs=(1,)) if threaded else None
    sizes: list[int] = []
    batchers = {
        name: StepBatcher(
            model,
            executor,
            max_batch=max_batch,
            inline_rows=inline_rows,
            on_batch=lambda stats: sizes.append(stats.rows),
        )
        for name, model in models.items()
    }
    for batcher in batchers.values():
        batcher.start()
    schedule = _Schedule(seed, references, batchers)
    try:
        for _ in range(ROUNDS):
            await schedule.run_round(onnx=onnx)
        schedule.check_tables(onnx=onnx)
    finally:
        for batcher in batchers.values():
            await batcher.close()
        if executor is not None:
            executor.shutdown()
    return schedule, sizes


@pytest.mark.parametrize(
    ("backend", "kind", "threaded", "max_batch", "inline_rows"),
    [
        ("torch", "torch", False, 256, 0),  # every forward inline on the loop (the CPU default)
        ("torch", "torch", True, 256, 0),  # every forward on the worker thread
        ("torch", "torch", True, 5, 4),  # batches split at 5 rows; small ones inline, larger ones on the thread
        pytest.param("onnx", "numpy", False, 256, 0, marks=NEEDS_ONNX),
        pytest.param("onnx", "numpy", True, 3, 0, marks=NEEDS_ONNX),
        pytest.param("onnx-on-torch", "torch", False, 256, 0, marks=NEEDS_ONNX),
        pytest.param("onnx-on-torch", "torch", True, 3, 0, marks=NEEDS_ONNX),
    ],
)
@pytest.mark.parametrize("seed", range(4))
async def test_every_mix_matches_the_reference_path(
    backends: dict[str, dict[str, Any]],
    references: dict[str, HamletModel],
    backend: str,
    kind: str,
    threaded: bool,
    max_batch: int,
    inline_rows: int,
    seed: int,
) -> None:
    models = backends[backend]
    assert {ops_for(model).kind for model in models.values()} == {kind}
    schedule, sizes = await _run_schedule(
        models, references, seed, threaded=threaded, max_batch=max_batch, inline_rows=inline_rows,
        onnx=backend.startswith("onnx"),
    )  # fmt: skip
    assert schedule.checked == schedule.items > ROUNDS * 4
    assert max(sizes) > 1 and len(sizes) < schedule.items  # items really shared forwards
    if max_batch < 256:
        # no forward holds more than max_batch rows, except a single item that is larger on its own
        assert all(size <= max(max_batch, 4) for size in sizes)


@NEEDS_ONNX
@pytest.mark.parametrize("seed", range(2))
async def test_numpy_arrays_give_the_q_values_of_the_torch_array_path_bit_for_bit(
    backends: dict[str, dict[str, Any]], references: dict[str, HamletModel], seed: int
) -> None:
    """The onnx backend on numpy arrays (served now) against the same onnxruntime sessions driven through torch
    tensors (served before): the same schedule, inline (so the same batches), gives identical Q-values."""
    runs = [
        await _run_schedule(backends[name], references, seed, threaded=False, max_batch=256, inline_rows=0, onnx=True)
        for name in ("onnx", "onnx-on-torch")
    ]
    numpy_run, torch_run = (schedule for schedule, _ in runs)
    assert runs[0][1] == runs[1][1]  # the same batches
    assert len(numpy_run.q_values) == len(torch_run.q_values) == numpy_run.items
    for ours, before in zip(numpy_run.q_values, torch_run.q_values, strict=True):
        np.testing.assert_array_equal(ours, before)
