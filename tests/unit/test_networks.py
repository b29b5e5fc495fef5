"""The rebuilt networks match Hamlet's module names, shapes and parameter counts (reference 2.1, 2.2)."""

from __future__ import annotations

import pytest
import torch

from townlet.agent.networks import RecurrentSpatialQNetwork, SimpleQNetwork

# Reference 2.2: the 26 tensors of a trained L2 network and their shapes.
L2_SHAPES = {
    "vision_encoder.0.weight": [16, 1, 3, 3], "vision_encoder.0.bias": [16],
    "vision_encoder.2.weight": [32, 16, 3, 3], "vision_encoder.2.bias": [32],
    "vision_encoder.5.weight": [128, 800], "vision_encoder.5.bias": [128],
    "vision_encoder.6.weight": [128], "vision_encoder.6.bias": [128],
    "position_encoder.0.weight": [32, 2], "position_encoder.0.bias": [32],
    "meter_encoder.0.weight": [32, 8], "meter_encoder.0.bias": [32],
    "affordance_encoder.0.weight": [32, 15], "affordance_encoder.0.bias": [32],
    "lstm.weight_ih_l0": [1024, 224], "lstm.weight_hh_l0": [1024, 256],
    "lstm.bias_ih_l0": [1024], "lstm.bias_hh_l0": [1024],
    "lstm_norm.weight": [256], "lstm_norm.bias": [256],
    "q_head.0.weight": [128, 256], "q_head.0.bias": [128],
    "q_head.1.weight": [128], "q_head.1.bias": [128],
    "q_head.3.weight": [6, 128], "q_head.3.bias": [6],
}  # fmt: skip


def test_recurrent_state_dict_is_hamlets() -> None:
    net = RecurrentSpatialQNetwork(action_dim=6)
    assert {k: list(v.shape) for k, v in net.state_dict().items()} == L2_SHAPES
    assert sum(p.numel() for p in net.parameters()) == 636_486
    assert net.obs_dim == 54


@pytest.mark.parametrize(("obs_dim", "params"), [(91, 29_574), (36, 22_534), (76, 27_654)])
def test_simple_parameter_counts(obs_dim: int, params: int) -> None:
    net = SimpleQNetwork(obs_dim, 6)
    assert sum(p.numel() for p in net.parameters()) == params
    assert sorted(net.state_dict()) == sorted(f"net.{i}.{kind}" for i in (0, 1, 3, 4, 6) for kind in ("weight", "bias"))


def test_hidden_state_is_functional_not_stored() -> None:
    torch.manual_seed(0)
    net = RecurrentSpatialQNetwork().eval()
    obs = torch.rand(3, 54)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    q1, h1 = net(obs)
    q2, h2 = net(obs)  # no hidden given twice: both start from zeros, so both calls agree
    assert torch.equal(q1, q2) and torch.equal(h1[0], h2[0])
    q3, _ = net(obs, h1)  # feeding the state back changes the answer
    assert not torch.equal(q1, q3)
    assert not any(isinstance(v, torch.Tensor) and k.startswith("hidden") for k, v in vars(net).items())
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    h0, c0 = net.initial_hidden(4)
    assert list(h0.shape) == [1, 4, 256] and not h0.any() and h0.data_ptr() != c0.data_ptr()


def test_recurrent_ignores_temporal_extras() -> None:
    torch.manual_seed(0)
    net = RecurrentSpatialQNetwork().eval()
    obs = torch.rand(2, 54)
    shifted = obs.clone()
    shifted[:, 50:] = torch.rand(2, 4)
    assert torch.equal(net(obs)[0], net(shifted)[0])


def test_fused_step_matches_nn_lstm_and_sequence() -> None:
    torch.manual_seed(1)
    net = RecurrentSpatialQNetwork().eval()
    obs = torch.rand(4, 6, 54)
    with torch.no_grad():
        hidden = net.initial_hidden(4)
        steps = []
        for t in range(6):
            q, hidden = net(obs[:, t], hidden)
            steps.append(q)
        seq_q, seq_hidden = net.forward_sequence(obs)
        # the plain nn.LSTM path, as Hamlet computes it
        features = net.encode(obs[:, 0])
        out, _ = net.lstm(features.unsqueeze(1), net.initial_hidden(4))
        reference_q0 = net.q_head(net.lstm_norm(out.squeeze(1)))
    assert torch.allclose(torch.stack(steps, dim=1), seq_q, atol=1e-5)
    assert torch.allclose(hidden[1], seq_hidden[1], atol=1e-5)
    assert torch.allclose(steps[0], reference_q0, atol=1e-5)
