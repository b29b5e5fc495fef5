"""Episode snapshots: a stream's state leaves the server in-band and comes back, to this or another replica.

    snapshot = take_snapshot(session, keys)       # after a step, or when a drain ends the stream
    state = open_snapshot(snapshot, keys, allow_unsigned=False, max_envs=1024)   # or RequestError
    restore(session, state)                       # step index, generator, and (h, c) for the next step

The state (`hamlet.v1.EpisodeState`) is serialized deterministically; the snapshot carries its sha256 (any
change of a byte is caught) and an HMAC-SHA256 under the deployment's snapshot key (`hamlet_server.snapshot_keys`,
``--snapshot-key-file``: a secret of the replicas, never the bearer token clients hold), so a client can
neither forge nor edit the (h, c), generator, epsilon or step index a server will trust. A server without a
key still takes snapshots (unsigned) but refuses to resume one unless ``--allow-unsigned-snapshots`` says
that every client is trusted. A verified state is also checked field by field with the rules of a fresh
start and step (epsilon in [0, 1], a finite hidden state, a step index below `MAX_STEP_INDEX`, 1..--max-envs
environments, a valid generator state): a key that leaked must not crash a replica. A snapshot can be
resumed any number of times (an episode can be forked): it carries no nonce. Tensors travel as raw
little-endian float32 bytes: 2 x H x 4 bytes per environment. The generator state starts with its kind
(`hamlet_server.array_ops`: ``numpy-pcg64:`` from an onnx backend, ``torch-cpu:`` from a torch one; no prefix:
an older torch snapshot); a replica of the other backend refuses it with FAILED_PRECONDITION SNAPSHOT_MISMATCH.
"""

from __future__ import annotations

import hashlib
import hmac

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import tensor_pb2
from hamlet_server.array_ops import GeneratorStateError
from hamlet_server.sessions import Session, StepLimitError, check_num_envs, check_step_index
from hamlet_server.snapshot_keys import SnapshotKeys
from hamlet_server.status import RequestError
from hamlet_server.tensor_codec import decode_tensor, encode_tensor
from townlet.inference.validation import check_epsilon, check_finite

__all__ = ["SNAPSHOT_FORMAT", "open_snapshot", "restore", "take_snapshot"]

SNAPSHOT_FORMAT = 1
SC = grpc.StatusCode


def take_snapshot(session: Session, keys: SnapshotKeys | None) -> pb.EpisodeSnapshot:
    """The session as it stands between steps (its rows are not being written); unsigned without keys."""
    model = session.model
    state = pb.EpisodeState(
        format_version=SNAPSHOT_FORMAT, model=model.name, version=model.version, step_index=session.step_index,
        num_envs=session.num_envs, epsilon=session.epsilon, fresh=session.fresh,
        snapshot_every=session.snapshot_every,
    )  # fmt: skip
    if session.slot_index is not None and not session.fresh:
        h, c = model.batcher.read_rows(session.slot_index)
        encode_tensor(h, state.hidden_h)
        encode_tensor(c, state.hidden_c)
    if session.generator is not None:
        state.rng_state = model.batcher.ops.generator_state(session.generator)
    payload = state.SerializeToString(deterministic=True)
    mac = b"" if keys is None else keys.sign(payload)
    return pb.EpisodeSnapshot(state=payload, checksum=hashlib.sha256(payload).digest(), mac=mac)


def open_snapshot(
    snapshot: pb.EpisodeSnapshot, keys: SnapshotKeys | None, *, allow_unsigned: bool, max_envs: int
) -> pb.EpisodeState:
    """The verified, checked state of ``snapshot``, or RequestError: FAILED_PRECONDITION RESUME_DISABLED (no
    key and unsigned snapshots not allowed), INVALID_ARGUMENT BAD_SNAPSHOT (corrupt, foreign format, a field
    out of range) or the rule's own reason (BAD_EPSILON, ENV_LIMIT), PERMISSION_DENIED SNAPSHOT_FORGED (not
    signed with any of this server's snapshot keys)."""
    if keys is None and not allow_unsigned:
        raise RequestError(
            SC.FAILED_PRECONDITION,
            "resume_from: this server has no snapshot key, so it cannot tell a snapshot a replica took from one "
            "a client made; start every replica with the same --snapshot-key-file (HAMLET_SNAPSHOT_KEY_FILE), "
            "or with --allow-unsigned-snapshots when every client is trusted",
            "RESUME_DISABLED",
        )
    payload = snapshot.state
    if not hmac.compare_digest(hashlib.sha256(payload).digest(), snapshot.checksum):
        raise _bad("resume_from: the snapshot's checksum does not match its state (corrupt or edited)")
    if keys is not None and not keys.verify(payload, snapshot.mac):
        raise RequestError(
            SC.PERMISSION_DENIED,
            "resume_from: the snapshot is not signed with this server's snapshot keys (forged, edited, unsigned, "
            "or taken by a server with other keys); resume only from snapshots a replica of this deployment sent",
            "SNAPSHOT_FORGED",
        )
    try:
        state: pb.EpisodeState = pb.EpisodeState.FromString(payload)
    except DecodeError:
        raise _bad("resume_from: the snapshot's state does not parse") from None
    _check_state(state, max_envs)
    return state


def _check_state(state: pb.EpisodeState, max_envs: int) -> None:
    """Each field by the rule a fresh start or step is held to (hidden state: in `restore`, which knows H)."""
    if state.format_version != SNAPSHOT_FORMAT:
        raise _bad(f"resume_from: snapshot format {state.format_version}; this server reads {SNAPSHOT_FORMAT}")
    try:
        check_step_index(state.step_index, "resume_from.step_index")
    except StepLimitError as exc:
        raise _bad(str(exc)) from None
    check_num_envs(state.num_envs, max_envs, "resume_from.num_envs")
    check_epsilon(state.epsilon, "resume_from.epsilon")


def restore(session: Session, state: pb.EpisodeState) -> None:
    """Continue ``state`` in the freshly started ``session``: step index, generator, and the (h, c) its next
    step starts from (handed to the batcher with that step, which writes it into the session's rows)."""
    session.step_index = int(state.step_index)
    session.fresh = bool(state.fresh)
    if state.rng_state:
        try:
            session.generator = session.model.batcher.ops.restore_generator(state.rng_state)
        except GeneratorStateError as exc:
            if not exc.mismatch:
                raise _bad(f"resume_from.rng_state: {exc}") from None
            raise RequestError(SC.FAILED_PRECONDITION, f"resume_from.rng_state: {exc}", "SNAPSHOT_MISMATCH") from None
    if not session.model.is_recurrent or state.fresh:
        return
    h, c = (_rows(t, state.num_envs, session, name) for t, name in ((state.hidden_h, "h"), (state.hidden_c, "c")))
    session.pending_hidden = (h[None], c[None])


def _rows(tensor: tensor_pb2.Tensor, num_envs: int, session: Session, name: str) -> np.ndarray:
    """One of the snapshot's ``[num_envs, H]`` float32 parts, by the rules of a request's hidden state."""
    field = f"resume_from.hidden_{name}"
    array = decode_tensor(tensor, field=field)  # dtype set, bytes fit the shape (BAD_TENSOR)
    if array.dtype != np.float32:
        raise _bad(f"{field}: expected DATA_TYPE_FLOAT32, got {array.dtype}")
    model, hidden_dim = session.model, session.model.hidden_dim
    if list(array.shape) != [num_envs, hidden_dim]:
        raise RequestError(
            SC.FAILED_PRECONDITION,
            f"{field}: the snapshot's state is {list(array.shape)} ([environments, hidden size]); model "
            f"{model.name!r} version {model.version} needs [{num_envs}, {hidden_dim}] (another architecture); "
            "resume on a version with the snapshot's hidden size",
            "SNAPSHOT_MISMATCH",
        )
    check_finite(field, array)  # NaN or Inf: BAD_TENSOR, naming the environments
    return array.copy()


def _bad(message: str) -> RequestError:
    return RequestError(SC.INVALID_ARGUMENT, message, "BAD_SNAPSHOT")
