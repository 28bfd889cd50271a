"""Quality at default settings: the recipes the README promises still reach their numbers.

Slow (a minute or more each on two cores); run with ``python -m pytest -m slow``, as CI does after the
default suite.
"""

import pytest

from ebm.energy import EnergyConfig, train_energy
from ebm.lm import LMConfig, train_lm

KL_GOAL = 0.01  # nats: issue 9's goal for the best noise-contrastive estimator on the reference sets


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["rings", "2spirals"])
def test_default_energy_recipe_reaches_the_kl_goal(tmp_path, dataset):
    # The defaults are NCE against the fitted mixture with a 6 × 128 energy MLP, 5000 steps. Every seed measured
    # (bench/bench_energy.py) lies well inside the goal on these two sets (rings 0.002–0.005, 2spirals
    # 0.0015–0.0017), so another CPU's rounding, which changes the trajectory like another seed, still passes;
    # 8gaussians is left out because one seed in three sits on a plateau until late (0.015).
    result = train_energy(
        EnergyConfig(dataset=dataset, device="cpu", out=str(tmp_path / "run"), frames="none", progress=False)
    )
    # KL(p_data ‖ p_model) against the exact density on 100k test points: a standard error of about 0.0002 nats.
    assert 0 <= result["kl"] <= KL_GOAL, f"KL {result['kl']:.4f} ± {result['kl_stderr']:.4f} nats"
    assert result["normaliser_error"] <= KL_GOAL, f"normaliser error {result['normaliser_error']:.4f}"


@pytest.mark.slow
def test_nce_language_model_gets_close_to_the_synthetic_floor(tmp_path):
    result = train_lm(
        LMConfig(dataset="synthetic", synthetic_tokens=200_000, epochs=2, device="cpu",
                 out=str(tmp_path / "run"), progress=False)
    )
    # The exact floor exp(H) of the language bounds every model from below; NCE must be near it.
    assert result["floor_ppl"] <= result["test_ppl"] <= 1.25 * result["floor_ppl"]
    assert abs(result["test_log_z_gap_mean"]) <= 0.2  # self-normalised on average
