"""The energy network: shapes, log_prob = −energy − log_z, the base density, options."""

import pytest
import torch

from ebm.energy.model import ACTIVATIONS, EnergyMLP
from ebm.energy.noise import fixed_gaussian


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_shapes_and_log_prob_definition(activation):
    model = EnergyMLP(width=16, depth=2, activation=activation)
    with torch.no_grad():
        model.log_z.fill_(0.7)
    x = torch.randn(11, 2)
    assert model.energy(x).shape == (11,)
    assert torch.allclose(model.log_prob(x), -model.energy(x) - 0.7)
    assert sum(isinstance(m, torch.nn.Linear) for m in model.net) == 3


def test_base_density_is_added():
    noise = fixed_gaussian()
    plain, based = EnergyMLP(width=8, depth=1), EnergyMLP(width=8, depth=1, base=noise)
    based.net.load_state_dict(plain.net.state_dict())
    x = torch.randn(5, 2)
    assert torch.allclose(based.log_prob(x), plain.log_prob(x) + noise.log_prob(x))
    assert "log_z" in dict(based.named_parameters()) and "base.loc" in based.state_dict()
    assert not any(name.startswith("base") for name, _ in based.named_parameters())  # the base is not trained


def test_bad_options():
    with pytest.raises(ValueError, match="silu"):
        EnergyMLP(activation="gelu")
    with pytest.raises(ValueError, match="positive"):
        EnergyMLP(width=0)
