"""ONNX export of a `HamletModel`, and verification of an exported file against PyTorch with onnxruntime.

    export_to_onnx(model, "agent.onnx")                # one self-contained file, dynamic batch axis
    report = verify_onnx_export("agent.onnx", model)   # raises ExportVerificationError unless every element
    print(report.summary())                            # has |onnx - torch| <= atol + rtol * |torch|
    path, report = export_verified(model, "agent.onnx")  # both; the file appears only if it verifies

Verification compares the way numerical libraries do (``numpy.allclose``): element-wise
``|onnx - torch| <= atol + rtol * |torch|`` with ``atol = rtol = 1e-5`` by default. A pure absolute bound is
wrong for trained agents: their Q-values reach |Q| ~ 50-100, where one float32 ULP is ~4e-6-8e-6 and the two
runtimes' different summation orders land a few ULPs apart (measured on the demo models: 2-3e-5 absolute,
under 1e-6 relative).

The graph's interface, for both networks (``B`` is dynamic)::

    simple:    obs [B, obs_dim]                                    -> q_values [B, A]
    recurrent: obs [B, obs_dim], hidden_h [1, B, H], hidden_c [1, B, H]
                                                                   -> q_values [B, A], new_hidden_h, new_hidden_c

``metadata_props`` carry ``format`` (``hamlet_onnx_v1``), ``network_type``, ``obs_dim``, ``action_dim``,
``hidden_dim``, ``checkpoint_sha256`` (of the file the model was loaded from, ``none`` for an in-memory
model), ``weights_sha256`` (of the PyTorch weights), ``graph_weights_sha256`` (of the ONNX initializers, to
detect later edits), ``torch_version``, ``opset``, ``exporter``, ``source_format``, ``episode``,
``num_parameters`` and ``checkpoint_metadata`` (the checkpoint's scalar metadata as JSON: epsilon, created_at,
curriculum stage, ...; what a server serving the ``.onnx`` file shows in GetModelMetadata).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import Tensor, nn

from townlet.inference.atomic_write import atomic_write
from townlet.inference.errors import InferenceError, InvalidInputError, first_line
from townlet.inference.model import HamletModel
from townlet.inference.onnx_runtime import HAMLET_ONNX_FORMAT, INPUT_NAMES, OUTPUT_NAMES, OnnxModel, parse_metadata
from townlet.inference.validation import ONNX_ATOL, ONNX_RTOL

__all__ = [
    "DEFAULT_ATOL",
    "DEFAULT_OPSET",
    "DEFAULT_RTOL",
    "ExportVerificationError",
    "OnnxVerificationReport",
    "export_to_onnx",
    "export_verified",
    "graph_weights_sha256",
    "verify_onnx_export",
    "weights_sha256",
]

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
_MIN_OPSET = 17
_MAX_OPSET = 20
"""The TorchScript exporter's declared maximum (torch.onnx._constants); past it torch dumps its IR and fails."""
DEFAULT_ATOL = ONNX_ATOL
"""Absolute part of the tolerance: the Hamlet spec's 1e-5, which is what matters for Q-values near 0."""
DEFAULT_RTOL = ONNX_RTOL
"""Relative part: ~80 float32 ULPs of |torch|, room for summation-order differences at any |Q|."""


class ExportVerificationError(InferenceError):
    """An ONNX file does not reproduce the PyTorch model: it is unreadable, fails ``onnx.checker``, belongs to
    another checkpoint, was edited after export, or its outputs differ by more than the tolerance.

    ``problems`` lists each finding; ``report`` holds the measured numbers when the comparison ran.
    """

    def __init__(self, path: str | Path, problems: list[str], report: OnnxVerificationReport | None = None) -> None:
        self.path = str(path)
        self.problems = list(problems)
        self.report = report
        super().__init__(f"{self.path}: ONNX export does not match the model: " + "; ".join(self.problems))


@dataclass(frozen=True)
class OnnxVerificationReport:
    """What `verify_onnx_export` measured, per output over every check.

    An element passes when ``|onnx - torch| <= atol + rtol * |torch|``; ``max_tolerance_ratio`` is the worst
    ``|onnx - torch| / (atol + rtol * |torch|)``, so the file passes when it is <= 1.
    """

    onnx_path: str
    network_type: str
    opset: int | None
    checker_passed: bool
    atol: float
    rtol: float
    batch_sizes: tuple[int, ...]
    rollout_steps: int
    max_abs_diff: dict[str, float]
    """Output name -> largest |onnxruntime - PyTorch| seen in any check."""
    max_rel_diff: dict[str, float]
    """Output name -> largest |onnxruntime - PyTorch| / |PyTorch| over the elements with |PyTorch| > atol."""
    max_tolerance_ratio: dict[str, float]
    """Output name -> largest |onnxruntime - PyTorch| / (atol + rtol * |PyTorch|); <= 1 passes."""
    diffs_by_check: dict[str, dict[str, float]]
    """``"batch=1"``, ``"batch=7"``, ``"batch=256"``, ``"rollout=50"`` -> output name -> max abs diff."""
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.checker_passed and not self.problems

    def summary(self) -> str:
        """A few human-readable lines: verdict, the abs diff of every output in every check, the worst cases."""
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            f"{verdict}: {self.onnx_path} ({self.network_type}, opset {self.opset}); onnx.checker "
            f"{'ok' if self.checker_passed else 'FAILED'}; tolerance |onnx - torch| <= {self.atol:g} + "
            f"{self.rtol:g} * |torch|"
        ]
        for check, diffs in self.diffs_by_check.items():
            lines.append(f"  {check:<11} " + "  ".join(f"{name}={diff:.3e}" for name, diff in diffs.items()))
        for label, values in (
            ("max abs", self.max_abs_diff),
            ("max rel", self.max_rel_diff),
            ("of tol", self.max_tolerance_ratio),
        ):
            lines.append(f"  {label:<11} " + "  ".join(f"{name}={value:.3e}" for name, value in values.items()))
        lines.extend(f"  problem: {problem}" for problem in self.problems)
        return "\n".join(lines)

    def brief(self) -> str:
        """One line for a log: the worst absolute and relative difference and the share of the tolerance used."""
        worst = max(self.max_tolerance_ratio, key=lambda name: self.max_tolerance_ratio[name])
        return (
            f"max abs diff {max(self.max_abs_diff.values()):.2e}, max rel diff {max(self.max_rel_diff.values()):.2e}, "
            f"{self.max_tolerance_ratio[worst]:.0%} of the tolerance (atol {self.atol:g}, rtol {self.rtol:g}; "
            f"worst output {worst})"
        )


@dataclass
class _Worst:
    """Running maxima of one output's differences; a NaN or Inf anywhere makes every maximum Inf (fails)."""

    abs: float = 0.0
    rel: float = 0.0
    ratio: float = 0.0

    def add(self, got: np.ndarray, want: np.ndarray, atol: float, rtol: float) -> None:
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        ref = np.abs(want.astype(np.float64))
        if not (np.isfinite(diff).all() and np.isfinite(ref).all()):
            self.abs = self.rel = self.ratio = float("inf")
            return
        big = ref > atol  # relative error is only meaningful where the absolute part does not dominate
        rel = diff[big] / ref[big]
        self.abs = max(self.abs, float(diff.max()))
        self.rel = max(self.rel, float(rel.max()) if rel.size else 0.0)
        self.ratio = max(self.ratio, float((diff / (atol + rtol * ref)).max()))

    def merge(self, other: _Worst) -> None:
        self.abs, self.rel, self.ratio = (
            max(self.abs, other.abs),
            max(self.rel, other.rel),
            max(self.ratio, other.ratio),
        )


# --------------------------------------------------------------------------- export


class _SimpleGraph(nn.Module):
    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, obs: Tensor) -> Tensor:
        q, _ = self.network(obs)
        return q  # type: ignore[no-any-return]


class _RecurrentGraph(nn.Module):
    """Flat ``(obs, h, c) -> (q, h', c')``: ONNX has no tuple inputs (reference 2.3 item 10)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, obs: Tensor, hidden_h: Tensor, hidden_c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, (h, c) = self.network(obs, (hidden_h, hidden_c))
        return q, h, c


def export_to_onnx(model: HamletModel, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``model`` as one self-contained ``.onnx`` file (no external data) and return its path.

    The export runs on a CPU copy of the network, so the model (on whatever device) is left untouched. It
    uses the TorchScript exporter (``dynamo=False``): under a second per network against ~15 s for dynamo,
    with identical numbers. The file is written atomically (temp file + rename).

    Raises:
        InvalidInputError: ``opset`` is outside 17..20 or ``model`` is not a `HamletModel`.
    """
    if not isinstance(model, HamletModel):
        raise InvalidInputError(f"model: expected a HamletModel, got {type(model).__name__}")
    if isinstance(opset, bool) or not isinstance(opset, int) or not _MIN_OPSET <= opset <= _MAX_OPSET:
        raise InvalidInputError(f"opset: expected an int from {_MIN_OPSET} to {_MAX_OPSET}, got {opset!r}")
    kind = "recurrent" if model.is_recurrent else "simple"
    network = _cpu_copy(model.network)
    graph: nn.Module = _RecurrentGraph(network) if model.is_recurrent else _SimpleGraph(network)
    example = _example_inputs(model, batch=2)
    dynamic_axes = {name: {1 if name.startswith(("hidden", "new_hidden")) else 0: "batch"} for name in _names(kind)}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hamlet-onnx-") as scratch, warnings.catch_warnings():
        # The TorchScript exporter warns that it is legacy, about tracing bools, and about LSTM batch sizes;
        # verify_onnx_export checks batch 1, 7 and 256, which is what those warnings are about.
        warnings.simplefilter("ignore")
        raw_path = Path(scratch) / "raw.onnx"
        try:
            torch.onnx.export(
                graph,
                tuple(example.values()),
                raw_path,
                dynamo=False,
                opset_version=opset,
                input_names=list(INPUT_NAMES[kind]),
                output_names=list(OUTPUT_NAMES[kind]),
                dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
        except RuntimeError as exc:
            if "opset" not in str(exc):
                raise
            raise InvalidInputError(
                f"opset {opset}: torch {torch.__version__}'s exporter cannot write it ({first_line(exc)}); "
                f"use {DEFAULT_OPSET} (the default)"
            ) from None
        proto = onnx.load(str(raw_path))
    _set_metadata(proto, model, network, opset)
    data = proto.SerializeToString()
    out = atomic_write(Path(path), lambda handle: handle.write(data))
    logger.info("exported %s network to %s in %.2fs (opset %d)", kind, out, time.perf_counter() - started, opset)
    return out


def weights_sha256(network: nn.Module) -> str:
    """sha256 of a network's state_dict (names, dtypes, shapes and bytes, in name order), device-independent."""
    digest = hashlib.sha256()
    for name, tensor in sorted(network.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{value.dtype}|{list(value.shape)}|".encode())
        digest.update(value.numpy().tobytes())
    return digest.hexdigest()


def graph_weights_sha256(proto: onnx.ModelProto) -> str:
    """sha256 of an ONNX graph's initializers (names, shapes and values), to notice edits after export."""
    digest = hashlib.sha256()
    for init in sorted(proto.graph.initializer, key=lambda t: t.name):
        value = numpy_helper.to_array(init)
        digest.update(f"{init.name}|{value.dtype}|{list(value.shape)}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _names(kind: str) -> tuple[str, ...]:
    return INPUT_NAMES[kind] + OUTPUT_NAMES[kind]


def _cpu_copy(network: nn.Module) -> nn.Module:
    """A detached CPU copy in eval mode: the caller's network keeps its device, mode and weights."""
    clone = copy.deepcopy(network).to("cpu").eval()
    for param in clone.parameters():
        param.requires_grad_(False)
    return clone


def _example_inputs(model: HamletModel, batch: int, seed: int = 0) -> dict[str, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    inputs = {"obs": torch.rand(batch, model.obs_dim, generator=gen)}
    if model.hidden_dim is not None:
        inputs["hidden_h"] = torch.randn(1, batch, model.hidden_dim, generator=gen) * 0.5
        inputs["hidden_c"] = torch.randn(1, batch, model.hidden_dim, generator=gen) * 0.5
    return inputs


def _set_metadata(proto: onnx.ModelProto, model: HamletModel, network: nn.Module, opset: int) -> None:
    meta = model.metadata
    props = {
        "format": HAMLET_ONNX_FORMAT,
        "network_type": str(meta["network_type"]),
        "obs_dim": str(model.obs_dim),
        "action_dim": str(model.action_dim),
        "hidden_dim": "none" if model.hidden_dim is None else str(model.hidden_dim),
        "checkpoint_sha256": str(meta.get("sha256") or "none"),
        "weights_sha256": weights_sha256(network),
        "graph_weights_sha256": graph_weights_sha256(proto),
        "torch_version": torch.__version__,
        "opset": str(opset),
        "exporter": "torchscript",
        "source_format": str(meta.get("format_version") or "none"),
        "episode": str(meta.get("episode") if meta.get("episode") is not None else "none"),
        "num_parameters": str(model.num_parameters),
        # What GetModelMetadata shows for a served .onnx file: the checkpoint's scalar metadata, as JSON.
        "checkpoint_metadata": json.dumps(
            {
                key: value
                for key, value in meta.items()
                if key not in ("source_path", "sha256")
                and (isinstance(value, str | int | float | bool) or value is None)
            },
            sort_keys=True,
        ),
    }
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


# --------------------------------------------------------------------------- verification


def verify_onnx_export(
    onnx_path: str | os.PathLike[str],
    model: HamletModel,
    *,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    batch_sizes: tuple[int, ...] = (1, 7, 256),
    rollout_steps: int = 50,
    rollout_batch: int = 4,
    seed: int = 0,
) -> OnnxVerificationReport:
    """Check an ONNX file against ``model``; return the report, or raise `ExportVerificationError`.

    Checks, in order: the file loads and passes ``onnx.checker`` (full check); its metadata_props name the
    same network type and dims, and the same weights (``weights_sha256``; a differing ``checkpoint_sha256``
    with equal weights only logs a warning, as re-saving a checkpoint changes its bytes, not the model); its
    initializers are those written at export (``graph_weights_sha256``); onnxruntime reproduces a CPU copy of
    the PyTorch network for every output at each of ``batch_sizes`` and over a ``rollout_steps`` rollout
    in which each side feeds back its own hidden state. Passing means every element of every output has
    ``|onnx - torch| <= atol + rtol * |torch|``.

    Raises:
        InvalidInputError: ``atol`` or ``rtol`` is negative or not a number, or both are 0.
        ExportVerificationError: the file does not reproduce the model (``.report`` has the numbers).
    """
    _check_tolerance(atol, rtol)
    path = Path(onnx_path)
    proto = _load_proto(path)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise ExportVerificationError(path, [f"onnx.checker rejects the file: {first_line(exc)}"]) from None
    props = {entry.key: entry.value for entry in proto.metadata_props}
    try:
        meta = parse_metadata(props, path)
    except InferenceError as exc:
        raise ExportVerificationError(path, [str(exc)]) from None
    network = _cpu_copy(model.network)
    problems = _identity_problems(meta, model, network, proto)
    if problems:
        raise ExportVerificationError(path, problems)
    runtime = OnnxModel(path)
    names = OUTPUT_NAMES[meta["network_type"]]
    worst = {name: _Worst() for name in names}
    diffs: dict[str, dict[str, float]] = {}
    rng = np.random.default_rng(seed)
    comparison = _Comparison(runtime, network, model, atol, rtol, worst)
    for batch in batch_sizes:
        diffs[f"batch={batch}"] = comparison.step(batch, rng)
    if rollout_steps > 0:
        diffs[f"rollout={rollout_steps}"] = comparison.rollout(rollout_batch, rollout_steps, rng)
    numeric = [
        f"{name}: {w.ratio:.2f}x the tolerance (max abs diff {w.abs:.3e}, max rel diff {w.rel:.3e}; "
        f"allowed {atol:g} + {rtol:g} * |torch|)"
        for name, w in worst.items()
        if not w.ratio <= 1.0
    ]
    report = OnnxVerificationReport(
        onnx_path=str(path),
        network_type=meta["network_type"],
        opset=meta.get("opset"),
        checker_passed=True,
        atol=atol,
        rtol=rtol,
        batch_sizes=tuple(batch_sizes),
        rollout_steps=rollout_steps,
        max_abs_diff={name: w.abs for name, w in worst.items()},
        max_rel_diff={name: w.rel for name, w in worst.items()},
        max_tolerance_ratio={name: w.ratio for name, w in worst.items()},
        diffs_by_check=diffs,
        problems=numeric,
    )
    if numeric:
        raise ExportVerificationError(path, numeric, report)
    logger.info("verified %s: %s", path, report.brief())
    return report


def export_verified(
    model: HamletModel,
    path: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
) -> tuple[Path, OnnxVerificationReport]:
    """Export ``model`` and verify it; ``path`` appears only if the file verifies.

    The file is written under a hidden temporary name beside ``path``, verified there, and renamed onto
    ``path`` on success; on any failure the temporary file is removed and ``path`` is left as it was.

    Raises:
        ExportVerificationError: the exported graph does not reproduce the model (nothing is written).
        InvalidInputError: a bad ``opset``, ``atol`` or ``rtol``.
    """
    _check_tolerance(atol, rtol)
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".verifying.onnx", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        export_to_onnx(model, tmp, opset=opset)
        report = verify_onnx_export(tmp, model, atol=atol, rtol=rtol)
        os.replace(tmp, final)
    except ExportVerificationError as exc:
        raise ExportVerificationError(
            final, exc.problems, None if exc.report is None else replace(exc.report, onnx_path=str(final))
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return final, replace(report, onnx_path=str(final))


def _check_tolerance(atol: float, rtol: float) -> None:
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise InvalidInputError(f"{name}: expected a number >= 0, got {value!r}")
    if atol == 0 and rtol == 0:
        raise InvalidInputError("atol and rtol are both 0: float32 runtimes never agree exactly; use e.g. 1e-5")


def _load_proto(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ExportVerificationError(path, ["no such file"])
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # truncated / random bytes: protobuf DecodeError and friends
        raise ExportVerificationError(path, [f"not a readable ONNX file: {first_line(exc)}"]) from None


def _identity_problems(
    meta: dict[str, Any], model: HamletModel, network: nn.Module, proto: onnx.ModelProto
) -> list[str]:
    """Does the file's metadata describe this model, and are its initializers those written at export?"""
    problems: list[str] = []
    expected = {
        "network_type": "recurrent" if model.is_recurrent else "simple",
        "obs_dim": model.obs_dim,
        "action_dim": model.action_dim,
        "hidden_dim": model.hidden_dim,
    }
    differing = [
        f"{key} {want} in the model, {meta.get(key)} in the file"
        for key, want in expected.items()
        if meta.get(key) != want
    ]
    if differing:
        return ["checkpoint and ONNX file do not match: " + "; ".join(differing)]
    weights = weights_sha256(network)
    if meta.get("weights_sha256") != weights:
        problems.append(
            f"checkpoint and ONNX file do not match: the file was exported from other weights "
            f"(weights_sha256 {_short(meta.get('weights_sha256'))}, model {_short(weights)}); "
            f"file's checkpoint_sha256 {_short(meta.get('checkpoint_sha256'))}, "
            f"model's {_short(model.metadata.get('sha256'))}"
        )
    elif meta.get("checkpoint_sha256") not in (None, model.metadata.get("sha256")) and model.metadata.get("sha256"):
        logger.warning(
            "checkpoint_sha256 differs (file %s, model %s) but the weights are identical; a re-saved checkpoint?",
            _short(meta.get("checkpoint_sha256")),
            _short(model.metadata.get("sha256")),
        )
    recorded = meta.get("graph_weights_sha256")
    if recorded is not None and recorded != graph_weights_sha256(proto):
        problems.append(
            "the ONNX initializers were modified after export (graph_weights_sha256 does not match); re-export it"
        )
    return problems


@dataclass
class _Comparison:
    """onnxruntime vs a CPU copy of the PyTorch network on the same inputs; folds every diff into ``worst``."""

    runtime: OnnxModel
    network: nn.Module
    model: HamletModel
    atol: float
    rtol: float
    worst: dict[str, _Worst]

    def step(self, batch: int, rng: np.random.Generator) -> dict[str, float]:
        """One forward at ``batch`` from random observations and hidden state; output name -> max abs diff."""
        obs = rng.random((batch, self.model.obs_dim), dtype=np.float32)
        hidden = None
        if self.model.hidden_dim is not None:
            shape = (1, batch, self.model.hidden_dim)
            hidden = (
                rng.standard_normal(shape, dtype=np.float32) * 0.5,
                rng.standard_normal(shape, dtype=np.float32) * 0.5,
            )
        ort_out = _flat(*self.runtime.forward(obs, hidden))
        return self._fold(ort_out, _torch_flat(self.network, obs, hidden))

    def rollout(self, batch: int, steps: int, rng: np.random.Generator) -> dict[str, float]:
        """``steps`` forwards, each side feeding back its own hidden state; output name -> max abs diff."""
        ort_hidden = torch_hidden = None
        worst: dict[str, float] = {}
        for _ in range(steps):
            obs = rng.random((batch, self.model.obs_dim), dtype=np.float32)
            ort_out = _flat(*self.runtime.forward(obs, ort_hidden))
            torch_out = _torch_flat(self.network, obs, torch_hidden)
            for name, diff in self._fold(ort_out, torch_out).items():
                worst[name] = max(worst.get(name, 0.0), diff)
            if self.model.hidden_dim is not None:
                ort_hidden = (ort_out[1], ort_out[2])
                torch_hidden = (torch_out[1], torch_out[2])
        return worst

    def _fold(self, ort_out: list[np.ndarray], torch_out: list[np.ndarray]) -> dict[str, float]:
        result = {}
        for name, got, want in zip(self.worst, ort_out, torch_out, strict=True):
            if got.shape != want.shape:
                raise ExportVerificationError(
                    self.runtime.path,
                    [f"{name}: onnxruntime shape {list(got.shape)} != PyTorch shape {list(want.shape)}"],
                )
            one = _Worst()
            one.add(got, want, self.atol, self.rtol)  # each difference computed once, then folded in
            self.worst[name].merge(one)
            result[name] = one.abs
        return result


def _flat(q: np.ndarray, hidden: Any) -> list[np.ndarray]:
    return [q] if hidden is None else [q, hidden[0], hidden[1]]


def _torch_flat(network: nn.Module, obs: np.ndarray, hidden: Any) -> list[np.ndarray]:
    with torch.no_grad():
        torch_hidden = None if hidden is None else (torch.from_numpy(hidden[0]), torch.from_numpy(hidden[1]))
        q, new_hidden = network(torch.from_numpy(obs), torch_hidden)
    return _flat(q.numpy(), None if new_hidden is None else (new_hidden[0].numpy(), new_hidden[1].numpy()))


def _short(value: Any) -> str:
    return "none" if not value else str(value)[:12]
