"""Quality at default settings: the recipes the README promises still reach their numbers.

Slow (a minute or more each on two cores); run with ``python -m pytest -m slow``, as CI does after the
default suite.
"""

import pytest

from ebm.energy import EnergyConfig, train_energy
from ebm.lm import LMConfig, train_lm


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["rings", "2spirals"])
def test_default_energy_recipe_learns_the_density_and_its_normaliser(tmp_path, dataset):
    result = train_energy(
        EnergyConfig(dataset=dataset, device="cpu", out=str(tmp_path / "run"), frames="none", progress=False)
    )
    assert 0 <= result["kl"] <= 0.05, f"KL gap {result['kl']:.4f} nats at default settings"
    assert result["normaliser_error"] <= 0.03, f"normaliser error {result['normaliser_error']:.4f}"


@pytest.mark.slow
def test_nce_language_model_gets_close_to_the_synthetic_floor(tmp_path):
    result = train_lm(
        LMConfig(dataset="synthetic", synthetic_tokens=200_000, epochs=2, device="cpu",
                 out=str(tmp_path / "run"), progress=False)
    )
    # The exact floor exp(H) of the language bounds every model from below; NCE must be near it.
    assert result["floor_ppl"] <= result["test_ppl"] <= 1.25 * result["floor_ppl"]
    assert abs(result["test_log_z_gap_mean"]) <= 0.2  # self-normalised on average
