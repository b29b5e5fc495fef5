"""`bench/floor.py --compute MODEL`, the diagnosis baseline of bench_server.py, does the real network work.

If it answered without running the model, "ours / floor with the network in situ" would flatter our server.
Its Predict must return the model's Q-values, and a stream must carry the LSTM state from step to step.
"""

from __future__ import annotations

import sys
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from demo_models import DEMO_L2

from hamlet_client.proto import inference_service_pb2 as pb
from hamlet_client.proto import inference_service_pb2_grpc as pb_grpc
from hamlet_client.proto import tensor_pb2
from townlet.inference import HamletModel

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from floor import spawn_ready  # noqa: E402

pytestmark = pytest.mark.slow


def _tensor(array: np.ndarray) -> tensor_pb2.Tensor:
    return tensor_pb2.Tensor(shape=array.shape, dtype=tensor_pb2.DATA_TYPE_FLOAT32, data=array.tobytes())


def _q(tensor: tensor_pb2.Tensor) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


def test_compute_floor_answers_the_models_q_values_and_keeps_stream_state() -> None:
    model = HamletModel.load(DEMO_L2)
    obs = np.random.default_rng(0).random((4, model.obs_dim), dtype=np.float32)
    proc, target = spawn_ready([sys.executable, str(ROOT / "bench" / "floor.py"), "--compute", str(DEMO_L2)], cwd=ROOT)
    try:
        with grpc.insecure_channel(target) as channel:
            stub = pb_grpc.InferenceServiceStub(channel)
            answer = stub.Predict(pb.PredictRequest(model="any", observations=_tensor(obs[:1])), timeout=30)
            expected = model.predict(torch.from_numpy(obs[:1]))
            np.testing.assert_allclose(_q(answer.q_values), expected.q_values.numpy(), rtol=1e-4, atol=1e-4)
            assert list(answer.actions) == expected.q_values.argmax(dim=1).tolist()

            requests = [pb.StreamEpisodeRequest(start=pb.EpisodeStart(model="any", num_envs=1))]
            requests += [
                pb.StreamEpisodeRequest(step=pb.EpisodeStep(observations=_tensor(obs[i : i + 1]))) for i in range(4)
            ]
            replies = list(stub.StreamEpisode(iter(requests), timeout=30))
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    hidden = None
    for i, reply in enumerate(replies[1:]):
        local = model.predict(torch.from_numpy(obs[i : i + 1]), hidden)
        hidden = local.hidden
        np.testing.assert_allclose(_q(reply.step.q_values), local.q_values.numpy(), rtol=1e-4, atol=1e-4)
    assert len(replies) == 5 and not np.allclose(_q(replies[1].step.q_values), _q(replies[4].step.q_values))
