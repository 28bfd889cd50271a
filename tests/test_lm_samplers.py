"""Noise samplers: exact alias tables, draw frequencies, the log-uniform formula, bad input."""

import math

import pytest
import torch
from scipy import stats
from torch.overrides import TorchFunctionMode

from ebm.lm.samplers import (
    AliasSampler,
    LogUniformSampler,
    UniformSampler,
    build_alias_table,
    make_noise,
    unigram_probs,
)


def implied_probs(accept: torch.Tensor, alias: torch.Tensor) -> torch.Tensor:
    """q(w) = (accept_w + Σ_{b: alias_b = w} (1 − accept_b)) / V, the distribution an alias table draws."""
    q = accept.double().clone()
    q.index_add_(0, alias, 1 - accept.double())
    return q / accept.numel()


def zipf(vocab_size: int, power: float = 1.0) -> torch.Tensor:
    return 1.0 / torch.arange(1, vocab_size + 1, dtype=torch.float64) ** power


CASES = {
    "random": lambda v: torch.rand(v, dtype=torch.float64) ** 4,
    "mostly_heavy": lambda v: torch.rand(v, dtype=torch.float64) ** 0.1,
    "with_zeros": lambda v: torch.rand(v, dtype=torch.float64) * (torch.arange(v) % 3 != 1),
    "uniform": lambda v: torch.ones(v, dtype=torch.float64),
    "zipf": zipf,
    "one_hot": lambda v: torch.nn.functional.one_hot(torch.tensor(v // 2), v).double(),
}


@pytest.mark.parametrize("vocab_size", [1, 2, 3, 17, 1000, 20_000])
@pytest.mark.parametrize("case", sorted(CASES))
def test_alias_table_is_exact(vocab_size, case):
    probs = CASES[case](vocab_size)
    accept, alias = build_alias_table(probs)
    assert accept.shape == alias.shape == (vocab_size,)
    assert ((accept >= 0) & (accept <= 1)).all()
    assert ((alias >= 0) & (alias < vocab_size)).all()
    torch.testing.assert_close(implied_probs(accept, alias), probs / probs.sum(), rtol=1e-5, atol=1e-15)


def test_alias_draws_match_probabilities():
    """10⁶ draws at V = 10k: chi-square goodness of fit and total variation against the probabilities."""
    vocab_size, n = 10_000, 1_000_000
    probs = zipf(vocab_size) + 0.2 * torch.rand(vocab_size, dtype=torch.float64) / vocab_size
    probs = probs / probs.sum()
    sampler = AliasSampler(probs)
    draws = sampler.sample((n,), generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(draws, minlength=vocab_size).double()
    assert (n * probs).min() > 5  # the chi-square approximation holds
    chi2 = stats.chisquare(counts.numpy(), (n * probs).numpy())
    assert chi2.pvalue > 1e-3
    tv = 0.5 * (counts / n - probs).abs().sum().item()
    expected_tv = 0.5 * (2 * probs * (1 - probs) / (math.pi * n)).sqrt().sum().item()  # E|N(0, p(1−p)/n)|
    assert tv < 1.2 * expected_tv


def test_alias_log_prob_and_shapes():
    probs = torch.tensor([1.0, 3.0, 0.0, 4.0])
    sampler = AliasSampler(probs)
    torch.testing.assert_close(sampler.log_probs().exp(), probs / 8)
    idx = torch.tensor([[0, 1], [3, 3]])
    torch.testing.assert_close(sampler.log_prob(idx), (probs / 8).log()[idx])
    draws = sampler.sample((3, 5))
    assert draws.shape == (3, 5) and draws.dtype == torch.int64
    assert not (draws == 2).any()  # zero weight: never drawn
    assert sampler.sample(7).shape == (7,)


def test_generator_reproduces_draws():
    sampler = AliasSampler(zipf(100))
    a = sampler.sample((50,), generator=torch.Generator().manual_seed(3))
    b = sampler.sample((50,), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_state_dict_round_trip():
    sampler = AliasSampler(zipf(30))
    copy = AliasSampler(torch.ones(30))
    copy.load_state_dict(sampler.state_dict())
    torch.testing.assert_close(copy.log_probs(), sampler.log_probs())
    assert torch.equal(copy.alias, sampler.alias)


def test_unigram_counts_power_and_zero_floor():
    counts = torch.tensor([4, 0, 1, 16])
    probs = unigram_probs(counts, power=0.5)
    expected = torch.tensor([4, 0.5, 1, 16], dtype=torch.float64).sqrt()  # zero → half the smallest count
    torch.testing.assert_close(probs, expected / expected.sum())
    sampler = AliasSampler.from_counts(counts, power=0.75)
    assert torch.isfinite(sampler.log_probs()).all()
    torch.testing.assert_close(unigram_probs(counts, power=0.0), torch.full((4,), 0.25, dtype=torch.float64))


def test_log_uniform_matches_formula():
    vocab_size = 1000
    sampler = LogUniformSampler(vocab_size)
    k = torch.arange(vocab_size)
    formula = (torch.log(k + 2.0) - torch.log(k + 1.0)) / math.log(vocab_size + 1)
    torch.testing.assert_close(sampler.log_prob(k).exp(), formula.float())
    assert sampler.log_probs().double().exp().sum().item() == pytest.approx(1.0, abs=1e-5)
    n = 400_000
    draws = sampler.sample((n,), generator=torch.Generator().manual_seed(1))
    freq = torch.bincount(draws, minlength=vocab_size).double() / n
    assert 0.5 * (freq - formula.double()).abs().sum().item() < 0.02
    assert draws.min() >= 0 and draws.max() < vocab_size


def test_uniform():
    sampler = UniformSampler(10)
    assert sampler.log_prob(torch.tensor([0, 9])).tolist() == pytest.approx([-math.log(10)] * 2)
    assert sampler.sample((4, 2)).shape == (4, 2)


@pytest.mark.parametrize(
    "counts",
    [
        torch.tensor([1.0, -1.0, 2.0]),
        torch.tensor([1.0, float("nan")]),
        torch.tensor([1.0, float("inf")]),
        torch.zeros(5),
        torch.ones(2, 3),
        torch.ones(0),
    ],
    ids=["negative", "nan", "inf", "all_zero", "2d", "empty"],
)
def test_bad_counts_raise(counts):
    with pytest.raises(ValueError):
        AliasSampler.from_counts(counts)
    with pytest.raises(ValueError):
        AliasSampler(counts)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="log_uniform"):
        make_noise("zipfian", 10)
    with pytest.raises(ValueError, match="vocab_size"):
        make_noise(torch.ones(5), 6)
    with pytest.raises(ValueError, match="counts"):
        make_noise("unigram", 5)
    with pytest.raises(ValueError):
        unigram_probs(torch.ones(3), power=-1.0)
    with pytest.raises(IndexError):
        UniformSampler(5).log_prob(torch.tensor([5]))
    with pytest.raises(ValueError):
        LogUniformSampler(0)


SAMPLERS = {
    "alias": lambda: AliasSampler(zipf(50)),
    "log_uniform": lambda: LogUniformSampler(50),
    "uniform": lambda: UniformSampler(50),
}
ACCELERATORS = [d for d, ok in (("cuda", torch.cuda.is_available()), ("mps", torch.backends.mps.is_available())) if ok]


class _Float64Watch(TorchFunctionMode):
    """Records every float64 tensor that a torch call creates off the CPU."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.device.type != "cpu":
                self.found.append(getattr(func, "__name__", str(func)))
        return out


@pytest.mark.parametrize("device", ["meta", *ACCELERATORS])
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_draws_come_from_the_cpu_generator_on_any_device(name, device):
    """The random numbers come from the given CPU generator whatever the sampler's device: the generator
    advances exactly as for the sampler on the CPU (the meta device has no values, only this), real devices
    give the same indices, and torch's global generator is not touched."""
    on_cpu, moved = SAMPLERS[name](), SAMPLERS[name]().to(device)
    gen_cpu, gen_moved = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    expected = on_cpu.sample((6, 7), generator=gen_cpu)
    global_state = torch.get_rng_state()
    draws = moved.sample((6, 7), generator=gen_moved)
    assert draws.device.type == device and draws.shape == (6, 7) and draws.dtype == torch.int64
    assert torch.equal(gen_moved.get_state(), gen_cpu.get_state())
    assert torch.equal(torch.get_rng_state(), global_state)
    if device != "meta":
        assert torch.equal(draws.cpu(), expected)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_no_float64_off_the_cpu(name):
    """Drawing and scoring on a device create no float64 tensor there (Apple MPS has none); the meta device
    stands in for an accelerator."""
    sampler = SAMPLERS[name]().to("meta")
    with _Float64Watch() as watch:
        index = sampler.sample((3, 4), generator=torch.Generator().manual_seed(0))
        sampler.log_prob(index, check=False)
        log_q = sampler.log_probs()
    assert watch.found == [] and log_q.dtype == torch.float32


def test_equal_generator_states_give_equal_draws():
    for make in SAMPLERS.values():
        sampler, gen = make(), torch.Generator().manual_seed(11)
        state = gen.get_state()
        first = sampler.sample((100,), generator=gen)
        gen.set_state(state)
        assert torch.equal(sampler.sample((100,), generator=gen), first)
