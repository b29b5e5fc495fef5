"""Episode snapshots: a stream's state leaves the server in-band and comes back, to this or another replica.

    snapshot = take_snapshot(session, key)        # after a step, or when a drain ends the stream
    state = open_snapshot(snapshot, key)          # verified, or RequestError (code + error reason)
    restore(session, state)                       # step index, generator, and (h, c) for the next step

The state (`hamlet.v1.EpisodeState`) is serialized deterministically; the snapshot carries its sha256 (any
change of a byte is caught) and, when the server has a bearer token, an HMAC-SHA256 keyed by it, so a client
can neither forge nor edit the (h, c) or generator state a server will trust. Tensors travel as raw
little-endian float32 bytes: 2 x H x 4 bytes per environment.
"""

from __future__ import annotations

import hashlib
import hmac

import grpc
import numpy as np
import torch
from google.protobuf.message import DecodeError

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_server.sessions import Session
from hamlet_server.status import RequestError
from hamlet_server.tensor_codec import encode_tensor

__all__ = ["SNAPSHOT_FORMAT", "open_snapshot", "restore", "take_snapshot"]

SNAPSHOT_FORMAT = 1
SC = grpc.StatusCode


def take_snapshot(session: Session, key: bytes | None) -> pb.EpisodeSnapshot:
    """The session as it stands between steps (its rows are not being written)."""
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
        state.rng_state = session.generator.get_state().numpy().tobytes()
    payload = state.SerializeToString(deterministic=True)
    return pb.EpisodeSnapshot(state=payload, checksum=hashlib.sha256(payload).digest(), mac=_mac(payload, key))


def open_snapshot(snapshot: pb.EpisodeSnapshot, key: bytes | None) -> pb.EpisodeState:
    """The verified state of ``snapshot``; RequestError (INVALID_ARGUMENT BAD_SNAPSHOT, PERMISSION_DENIED
    SNAPSHOT_FORGED) when it is corrupt, tampered with, foreign, or not signed with this server's token."""
    payload = snapshot.state
    if not hmac.compare_digest(hashlib.sha256(payload).digest(), snapshot.checksum):
        raise _bad("resume_from: the snapshot's checksum does not match its state (corrupt or edited)")
    if key is not None and not hmac.compare_digest(_mac(payload, key), snapshot.mac):
        raise RequestError(
            SC.PERMISSION_DENIED,
            "resume_from: the snapshot is not signed with this server's token (forged, edited, or taken by a "
            "server with another token); resume only from snapshots a replica of this deployment sent",
            "SNAPSHOT_FORGED",
        )
    try:
        state: pb.EpisodeState = pb.EpisodeState.FromString(payload)
    except DecodeError:
        raise _bad("resume_from: the snapshot's state does not parse") from None
    if state.format_version != SNAPSHOT_FORMAT:
        raise _bad(f"resume_from: snapshot format {state.format_version}; this server reads {SNAPSHOT_FORMAT}")
    if state.num_envs < 1 or state.step_index < 0:
        raise _bad(f"resume_from: num_envs {state.num_envs}, step_index {state.step_index} are not valid")
    return state


def restore(session: Session, state: pb.EpisodeState) -> None:
    """Continue ``state`` in the freshly started ``session``: step index, generator, and the (h, c) its next
    step starts from (handed to the batcher with that step, which writes it into the session's rows)."""
    session.step_index = int(state.step_index)
    session.fresh = bool(state.fresh)
    if state.rng_state:
        generator = torch.Generator(device="cpu")
        try:
            generator.set_state(torch.frombuffer(bytearray(state.rng_state), dtype=torch.uint8))
        except RuntimeError:
            raise _bad("resume_from: the snapshot's generator state is not valid") from None
        session.generator = generator
    hidden_dim = session.model.hidden_dim
    if not session.model.is_recurrent or state.fresh:
        return
    h, c = (_rows(t, state.num_envs, hidden_dim, name) for t, name in ((state.hidden_h, "h"), (state.hidden_c, "c")))
    session.pending_hidden = (h.unsqueeze(0), c.unsqueeze(0))


def _rows(tensor: object, num_envs: int, hidden_dim: int, name: str) -> torch.Tensor:
    shape, data = list(tensor.shape), tensor.data  # type: ignore[attr-defined]
    if shape != [num_envs, hidden_dim] or len(data) != num_envs * hidden_dim * 4:
        raise RequestError(
            SC.FAILED_PRECONDITION,
            f"resume_from: hidden {name} is {shape}; this model version needs [{num_envs}, {hidden_dim}] "
            "(another architecture)",
            "SNAPSHOT_MISMATCH",
        )
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").reshape(num_envs, hidden_dim).copy())


def _mac(payload: bytes, key: bytes | None) -> bytes:
    return b"" if key is None else hmac.new(key, payload, hashlib.sha256).digest()


def _bad(message: str) -> RequestError:
    return RequestError(SC.INVALID_ARGUMENT, message, "BAD_SNAPSHOT")
