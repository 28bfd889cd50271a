"""Learning-rate schedules of ebm.lm.optim, checked against values worked out by hand."""

import math

import pytest

from ebm.harness.schedule import plateau_lr, scheduled_lr


def test_cosine_schedule_hand_values():
    """cos(π/3) = ½ gives the shape ¾ at a third of the way; with final = 0.1 the lr is 0.1 + 0.9·¾ of base."""
    assert scheduled_lr(2.0, 0.0, "cosine") == pytest.approx(2.0)
    assert scheduled_lr(2.0, 1 / 3, "cosine") == pytest.approx(1.5)
    assert scheduled_lr(2.0, 0.5, "cosine") == pytest.approx(1.0)
    assert scheduled_lr(2.0, 1.0, "cosine") == pytest.approx(0.0, abs=1e-12)
    assert scheduled_lr(2.0, 1 / 3, "cosine", final=0.1) == pytest.approx(2.0 * (0.1 + 0.9 * 0.75))
    assert scheduled_lr(2.0, 7.0, "cosine", final=0.1) == pytest.approx(0.2)  # past the end: the final lr


def test_warm_up_is_linear_then_the_decay_starts_from_the_base():
    """Warm-up over the first quarter: ½ of base at progress 1/8; then x = (p − ¼)/(¾), so p = ⅝ is x = ½."""
    assert scheduled_lr(1.0, 0.125, "cosine", warmup=0.25) == pytest.approx(0.5)
    assert scheduled_lr(1.0, 0.25, "cosine", warmup=0.25) == pytest.approx(1.0)
    assert scheduled_lr(1.0, 0.625, "cosine", warmup=0.25) == pytest.approx(0.5)
    assert scheduled_lr(1.0, 0.625, "linear", warmup=0.25) == pytest.approx(0.5)
    assert scheduled_lr(1.0, 0.25 + 0.75 * 0.2, "linear", warmup=0.25) == pytest.approx(0.8)
    assert scheduled_lr(1.0, 0.125, "plateau", warmup=0.25) == pytest.approx(0.5)
    assert scheduled_lr(1.0, 0.9, "plateau", warmup=0.25) == pytest.approx(1.0)


def test_hold_keeps_the_base_until_the_decay_starts():
    """hold = ½: base until half-way, then the cosine over the second half: at p = ¾, x = ½ and the lr is ½ base."""
    assert scheduled_lr(1.0, 0.4, "cosine", hold=0.5) == pytest.approx(1.0)
    assert scheduled_lr(1.0, 0.75, "cosine", hold=0.5) == pytest.approx(0.5)
    assert scheduled_lr(1.0, 0.75, "linear", hold=0.5, final=0.2) == pytest.approx(0.6)
    assert scheduled_lr(1.0, 0.05, "cosine", warmup=0.1, hold=0.5) == pytest.approx(0.5)  # warm-up first


def test_schedule_is_monotone_after_warm_up():
    values = [scheduled_lr(1.0, i / 100, "cosine", warmup=0.1, final=0.05) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    assert values[-1] == pytest.approx(0.05)
    assert math.isclose(max(values), 1.0)


def test_plateau_halves_when_the_metric_does_not_improve():
    """Perplexities 10, 9, 9.5, 9.2, 8, 8 with factor ½: halved after 9.5 and 9.2 (no better than 9) and after
    the repeated 8, kept after each improvement."""
    lr, best, lrs = 1.0, math.inf, []
    for ppl in (10, 9, 9.5, 9.2, 8, 8):
        lr, best = plateau_lr(lr, best, ppl, 0.5)
        lrs.append(lr)
    assert lrs == [1.0, 1.0, 0.5, 0.25, 0.25, 0.125]
    assert best == 8


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="cosine"):
        scheduled_lr(1.0, 0.5, "step")
    with pytest.raises(ValueError, match="warmup"):
        scheduled_lr(1.0, 0.5, "cosine", warmup=1.0)
    with pytest.raises(ValueError, match="final"):
        scheduled_lr(1.0, 0.5, "cosine", final=1.5)
    with pytest.raises(ValueError, match="hold"):
        scheduled_lr(1.0, 0.5, "cosine", hold=-0.1)
