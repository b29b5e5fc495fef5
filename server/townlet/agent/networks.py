"""Hamlet's two Q-networks, rebuilt with exactly Hamlet's module names and tensor shapes.

A real Hamlet ``state_dict`` loads into these with ``strict=True`` (reference sections 2.1 and 2.2).
Unlike upstream, recurrent state is functional: it is passed in and returned, never stored on the module.

Both networks share one call signature so that callers need not branch::

    q, hidden = network(obs, hidden)     # obs [B, obs_dim]; q [B, A]; hidden (h, c) each [1, B, H] or None
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["NUM_EXTRAS", "Hidden", "QNetwork", "RecurrentSpatialQNetwork", "SimpleQNetwork"]

NUM_EXTRAS = 4
"""Trailing observation features every Townlet level carries (time sin/cos, progress, lifetime); unread."""

Hidden = tuple[Tensor, Tensor]
"""LSTM state ``(h, c)``, each ``[1, B, H]`` (num_layers = 1, batch on axis 1)."""


@runtime_checkable
class QNetwork(Protocol):
    """What the model layer reads from a Q-network besides ``nn.Module``'s own API: both networks below have
    it, and a network of your own that has it can be wrapped in a ``HamletModel`` (saving it needs one of the
    two). ``isinstance(module, QNetwork)`` checks that the members exist."""

    @property
    def is_recurrent(self) -> bool: ...
    @property
    def obs_dim(self) -> int: ...
    @property
    def action_dim(self) -> int: ...

    def __call__(self, obs: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden | None]:
        """``obs [B, obs_dim]`` -> ``(q [B, action_dim], hidden')``; ``hidden'`` is None when not recurrent."""
        ...


class SimpleQNetwork(nn.Module):
    """MLP Q-network for full observability: ``obs [B, obs_dim] -> Q [B, action_dim]``.

    ``net`` = Linear(obs, 128) · LayerNorm · ReLU · Linear(128, 128) · LayerNorm · ReLU · Linear(128, A),
    so the state_dict keys are ``net.{0,1,3,4,6}.{weight,bias}``.
    """

    is_recurrent = False

    def __init__(self, obs_dim: int, action_dim: int, hidden_dim: int = 128) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.action_dim = action_dim
        self.hidden_dim = hidden_dim
        self.net = nn.Sequential(
            nn.Linear(obs_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, action_dim),
        )

    def forward(self, obs: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, None]:
        """Return ``(q [B, A], None)``; ``hidden`` is accepted for a uniform signature and ignored."""
        return self.net(obs), None


class RecurrentSpatialQNetwork(nn.Module):
    """CNN + LSTM Q-network for partial observability (Hamlet L2/L3).

    The flat observation is split by position into
    ``[window (w*w) | position (2) | meters (num_meters) | affordance one-hot (num_affordance_types + 1) | rest]``;
    the trailing temporal extras are ignored, as in Hamlet. Defaults are the values Hamlet trains with
    (6 actions, 5x5 window, 8 meters, 14 affordance types), not upstream's constructor defaults.
    """

    is_recurrent = True

    def __init__(
        self,
        action_dim: int = 6,
        window_size: int = 5,
        num_meters: int = 8,
        num_affordance_types: int = 14,
        hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.action_dim = action_dim
        self.window_size = window_size
        self.num_meters = num_meters
        self.num_affordance_types = num_affordance_types
        self.hidden_dim = hidden_dim

        self.vision_encoder = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * window_size * window_size, 128),
            nn.LayerNorm(128),
            nn.ReLU(),
        )
        self.position_encoder = nn.Sequential(nn.Linear(2, 32), nn.ReLU())
        self.meter_encoder = nn.Sequential(nn.Linear(num_meters, 32), nn.ReLU())
        self.affordance_encoder = nn.Sequential(nn.Linear(num_affordance_types + 1, 32), nn.ReLU())
        self.lstm = nn.LSTM(input_size=128 + 32 + 32 + 32, hidden_size=hidden_dim, num_layers=1, batch_first=True)
        self.lstm_norm = nn.LayerNorm(hidden_dim)
        self.q_head = nn.Sequential(
            nn.Linear(hidden_dim, 128),
            nn.LayerNorm(128),
            nn.ReLU(),
            nn.Linear(128, action_dim),
        )

    @property
    def obs_dim(self) -> int:
        """Width of the flat observation this network reads (54 for Hamlet L2/L3)."""
        return self.window_size**2 + 2 + self.num_meters + self.num_affordance_types + 1 + NUM_EXTRAS

    def initial_hidden(self, batch_size: int, device: torch.device | str | None = None) -> Hidden:
        """Zero LSTM state for ``batch_size`` sequences: ``(h, c)`` each ``[1, B, H]``."""
        if device is None:
            device = next(self.parameters()).device
        zeros = torch.zeros(1, batch_size, self.hidden_dim, device=device)
        return zeros, zeros.clone()

    def encode(self, obs: Tensor) -> Tensor:
        """The LSTM input for ``obs [N, obs_dim]``: the four encoders' outputs side by side, ``[N, 224]``."""
        w = self.window_size
        cuts = [w * w, w * w + 2, w * w + 2 + self.num_meters]
        cuts.append(cuts[2] + self.num_affordance_types + 1)
        return torch.cat(
            [
                self.vision_encoder(obs[:, : cuts[0]].reshape(-1, 1, w, w)),
                self.position_encoder(obs[:, cuts[0] : cuts[1]]),
                self.meter_encoder(obs[:, cuts[1] : cuts[2]]),
                self.affordance_encoder(obs[:, cuts[2] : cuts[3]]),
            ],
            dim=1,
        )

    def forward(self, obs: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """One step: ``obs [B, obs_dim]``, ``hidden (h, c) [1, B, H]`` (zeros if None) -> ``(q [B, A], (h', c'))``.

        The step runs the ``lstm`` module's weights through the fused ``torch.lstm_cell`` kernel: on CPU,
        ``nn.LSTM`` re-packs its weights on every call, which made a batch-1 step ~4x slower (513 vs 110 us
        measured). The two agree to ~1e-7. ONNX export traces ``nn.LSTM`` itself (a standard ONNX LSTM node).
        """
        batch = obs.shape[0]
        if hidden is None:
            hidden = self.initial_hidden(batch, obs.device)
        features = self.encode(obs)
        if torch.onnx.is_in_onnx_export():
            out, (h, c) = self.lstm(features.unsqueeze(1), hidden)
            return self.q_head(self.lstm_norm(out.squeeze(1))), (h, c)
        w_ih, w_hh, b_ih, b_hh = self.lstm.all_weights[0]  # layer 0: the module's own parameters
        h1, c1 = torch.lstm_cell(features, (hidden[0][0], hidden[1][0]), w_ih, w_hh, b_ih, b_hh)
        return self.q_head(self.lstm_norm(h1)), (h1.unsqueeze(0), c1.unsqueeze(0))

    def forward_sequence(self, obs: Tensor, hidden: Hidden | None = None) -> tuple[Tensor, Hidden]:
        """A whole sequence at once: ``obs [B, T, obs_dim]`` -> ``(q [B, T, A], (h, c) after the last step)``.

        The encoders run once on all ``B*T`` observations and ``nn.LSTM`` once over the sequence: the fast
        path for training on replayed windows.
        """
        batch, steps = obs.shape[:2]
        if hidden is None:
            hidden = self.initial_hidden(batch, obs.device)
        features = self.encode(obs.reshape(batch * steps, obs.shape[2])).reshape(batch, steps, -1)
        out, (h, c) = self.lstm(features, hidden)
        return self.q_head(self.lstm_norm(out)), (h, c)
