"""The network duck type is named: `QNetwork` is what HamletModel reads from a network; both Hamlet networks
are QNetworks, a module that lacks a member is refused with the member list."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from townlet.agent.networks import QNetwork, RecurrentSpatialQNetwork, SimpleQNetwork
from townlet.inference import HamletModel


def test_both_hamlet_networks_are_qnetworks() -> None:
    assert isinstance(SimpleQNetwork(obs_dim=8, action_dim=3), QNetwork)
    assert isinstance(RecurrentSpatialQNetwork(hidden_dim=16), QNetwork)


def test_a_module_without_the_members_is_refused_naming_them() -> None:
    with pytest.raises(TypeError, match=r"is_recurrent, obs_dim, action_dim and forward.*got Linear"):
        HamletModel(nn.Linear(4, 2))


def test_hamlet_model_reads_obs_dim_from_the_network() -> None:
    torch.manual_seed(0)
    model = HamletModel(SimpleQNetwork(obs_dim=8, action_dim=3))
    assert (model.obs_dim, model.action_dim, model.is_recurrent) == (8, 3, False)
