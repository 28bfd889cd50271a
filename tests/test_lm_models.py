"""Language models, exact evaluation and sparse-aware optimisation."""

import math

import pytest
import torch

from ebm.data.corpus import batchify
from ebm.lm.evaluate import evaluate
from ebm.lm.models import RNNLM, GenericNCELM, LockedDropout
from ebm.lm.optim import add_weight_decay_, clip_grad_norm_, make_optimizer
from ebm.lm.output import SampledOutput
from ebm.lm.samplers import AliasSampler

V = 40


def make_lm(loss="nce", cell="lstm", **kwargs):
    out_size = kwargs.pop("out_size", None) or (12 if kwargs.get("tie_weights") else 16)
    output = SampledOutput(in_features=out_size, vocab_size=V, noise=torch.arange(1, V + 1), loss=loss, noise_ratio=8)
    return RNNLM(V, output, emb_size=12, hidden_size=16, num_layers=2, dropout=0.1, cell=cell, out_size=out_size,
                 **kwargs)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_shapes_state_and_projection(cell):
    model = make_lm(cell=cell, out_size=10)
    x = torch.randint(V, (3, 7))
    features, state = model(x)
    assert features.shape == (3, 7, 10)
    loss, _ = model.loss(x, x, state)
    assert loss.dim() == 0 and torch.isfinite(loss)
    nll, gap, _ = model.scores(x, x)
    assert nll.shape == gap.shape == (3, 7)


def test_tied_weights_are_one_parameter():
    model = make_lm(tie_weights=True)
    assert model.embedding.weight is model.output.weight
    with pytest.raises(ValueError, match="tie_weights"):
        make_lm(tie_weights=True, out_size=16)
    with pytest.raises(ValueError, match="cell"):
        make_lm(cell="rnn")


def test_sampled_training_gives_sparse_gradients_full_gives_dense():
    model = make_lm("nce")
    x = torch.randint(V, (2, 5))
    model.loss(x, x)[0].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["embedding.weight"].is_sparse and grads["output.weight"].is_sparse
    assert {id(p) for p in model.sparse_parameters()} == {
        id(model.embedding.weight), id(model.output.weight), id(model.output.bias)}
    model = make_lm("full")
    model.loss(x, x)[0].backward()
    assert not model.output.weight.grad.is_sparse and model.embedding.weight.grad.is_sparse
    assert make_lm("full", tie_weights=True).sparse_parameters() == []


def test_uniform_model_has_perplexity_v():
    model = make_lm("nce")
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    result = evaluate(model, batchify(torch.randint(V, (500,)), 4), bptt=9)
    assert result["ppl"] == pytest.approx(V, rel=1e-6)
    assert result["log_z_gap_mean"] == pytest.approx(math.log(V) - model.output.norm.item(), abs=1e-5)
    assert result["ppl_selfnorm"] == pytest.approx(math.exp(model.output.norm.item()), rel=1e-5)


def test_chunked_evaluation_equals_unchunked():
    model = make_lm("nce")
    data = batchify(torch.randint(V, (400,)), 4)
    whole = evaluate(model, data, bptt=1000)
    model.output.eval_chunk_elements = 7  # a few vocabulary rows at a time
    chunked = evaluate(model, data, bptt=6)  # and short bptt chunks with the state carried over
    for key in ("nll", "log_z_gap_mean", "log_z_gap_std"):
        assert chunked[key] == pytest.approx(whole[key], rel=1e-5, abs=1e-6)
    assert chunked["tokens"] == whole["tokens"] == 4 * 99


def test_scores_are_normalised_over_the_vocabulary():
    model = make_lm("sampled").eval()
    context = torch.randint(V, (1, 6))
    input = context.expand(V, 6)
    target = torch.cat([input[:, 1:], torch.arange(V).unsqueeze(1)], dim=1)
    nll, _, _ = model.scores(input, target)
    assert torch.exp(-nll[:, -1].double()).sum().item() == pytest.approx(1.0, abs=1e-5)


def make_generic(k=5, **kwargs):
    noise = AliasSampler.from_counts(torch.arange(1, V + 1))
    return GenericNCELM(V, noise, noise_ratio=k, emb_size=8, hidden_size=10, num_layers=1, dropout=0.0, chunk_size=7,
                        **kwargs)


def test_generic_model_factorised_score_equals_grucell():
    model = make_generic()
    context, words = torch.randn(4, 10), torch.tensor([3, 0, 39])
    pairs = model.cell(model.embedding(words).repeat(4, 1), context.repeat_interleave(3, dim=0))
    expected = model.scorer(pairs).view(4, 3)
    torch.testing.assert_close(model.score(context, words), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.target_score(context, torch.tensor([3, 3, 3, 3])), expected[:, 0])
    log_z = model.log_normaliser(context)
    torch.testing.assert_close(log_z, model.score(context, torch.arange(V)).logsumexp(-1), rtol=1e-5, atol=1e-5)


def test_generic_model_trains_and_evaluates_exactly():
    model = make_generic()
    x = torch.randint(V, (3, 6))
    loss, _ = model.loss(x, x, mask=torch.ones(3, 6, dtype=torch.bool))
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    nll, gap, _ = model.scores(x[:1].expand(V, 6), torch.cat([x[:1, 1:].expand(V, 5), torch.arange(V)[:, None]], 1))
    assert torch.exp(-nll[:, -1].double()).sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="noise_ratio"):
        make_generic(k=0)


def test_generic_model_learns_its_norm():
    """norm="learn": a scalar parameter at log V whose gradient is the NCE formula's,
    ∂loss/∂norm = mean_n [(1 − σ(G_t)) − Σ_j σ(G_j)]  (G = s − norm − log k q, so ∂G/∂norm = −1),
    that moves with training and is the norm the log Z gap uses."""
    model = make_generic(k=4, norm="learn")
    assert isinstance(model.norm, torch.nn.Parameter) and model.norm.item() == pytest.approx(math.log(V))
    x, y = torch.randint(V, (3, 6)), torch.randint(V, (3, 6))
    model.loss(x, y, generator=torch.Generator().manual_seed(0))[0].backward()
    noise = model.noise.sample((4,), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        context = model(x)[0].flatten(0, 1)  # (N, H)
        log_q = model.noise.log_probs()
        logit_t = model.target_score(context, y.flatten()) - model.norm - log_q[y.flatten()] - math.log(4)
        logit_n = model.score(context, noise) - model.norm - log_q[noise] - math.log(4)  # (N, k)
        expected = ((1 - torch.sigmoid(logit_t)) - torch.sigmoid(logit_n).sum(1)).mean()
    assert torch.isfinite(model.norm.grad)
    torch.testing.assert_close(model.norm.grad, expected)

    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.loss(x, y, generator=gen)[0].backward()
    assert abs(model.norm.item() - math.log(V)) > 1e-3
    _, gap, _ = model.scores(x, x)
    torch.testing.assert_close(gap.flatten(), model.log_normaliser(model(x)[0].flatten(0, 1)) - model.norm.detach())
    assert make_generic(norm=2.5).norm.item() == 2.5 and make_generic().norm.item() == pytest.approx(math.log(V))
    with pytest.raises(ValueError, match="'auto', 'learn' or a finite number"):
        make_generic(norm="max")


def test_loss_draws_noise_from_the_given_generator():
    """model.loss(..., generator=g) draws its noise from g only: equal generator states give equal losses,
    whatever the global generator does, and the value is the NCE formula on the noise g yields."""
    x, y = torch.randint(V, (2, 5)), torch.randint(V, (2, 5))
    rnn = make_lm("nce").eval()
    first = rnn.loss(x, y, generator=torch.Generator().manual_seed(7))[0]
    torch.rand(10)  # move the global generator
    features, _ = rnn(x)
    expected = rnn.output(features, y, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, expected)
    assert rnn.loss(x, y, generator=torch.Generator().manual_seed(8))[0] != first

    generic = make_generic(k=4)
    loss = generic.loss(x, y, generator=torch.Generator().manual_seed(3))[0]
    torch.rand(10)
    noise = generic.noise.sample((4,), generator=torch.Generator().manual_seed(3))
    context = generic(x)[0].flatten(0, 1)  # (N, H)
    log_q = generic.noise.log_probs()
    logit_t = generic.target_score(context, y.flatten()) - generic.norm - log_q[y.flatten()] - math.log(4)
    logit_n = generic.score(context, noise) - generic.norm - log_q[noise] - math.log(4)  # (N, k)
    by_hand = -torch.log(torch.sigmoid(logit_t)) - torch.log(1 - torch.sigmoid(logit_n)).sum(1)
    torch.testing.assert_close(loss, by_hand.mean())


def _with_sparse_grad():
    model = make_lm("nce")
    x = torch.randint(V, (2, 5))
    model.loss(x, torch.roll(x, 1))[0].backward()
    return model


def test_clip_and_weight_decay_match_dense_reference():
    model = _with_sparse_grad()
    params = list(model.parameters())
    dense = [p.grad.to_dense().clone() for p in params]
    norm = torch.sqrt(sum(g.pow(2).sum() for g in dense))
    assert clip_grad_norm_(params, 0.01).item() == pytest.approx(norm.item(), rel=1e-5)
    for p, g in zip(params, dense, strict=True):
        torch.testing.assert_close(p.grad.to_dense(), g * 0.01 / norm.item(), rtol=1e-4, atol=1e-8)
    model = _with_sparse_grad()
    weight = model.embedding.weight
    before = weight.grad.coalesce().to_dense().clone()
    touched = before.abs().sum(1) > 0
    add_weight_decay_([weight], 0.5)
    after = weight.grad.to_dense()
    assert weight.grad.is_sparse
    torch.testing.assert_close(after[touched], before[touched] + 0.5 * weight.detach()[touched])
    assert (after[~touched] == 0).all()


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_optimizer_updates_only_touched_rows(name):
    model = _with_sparse_grad()
    touched = model.embedding.weight.grad.coalesce().to_dense().abs().sum(1) > 0
    before = model.embedding.weight.detach().clone()
    make_optimizer(model, name, 0.1, model.sparse_parameters()).step()
    changed = (model.embedding.weight.detach() != before).any(1)
    assert changed[touched].all() and not changed[~touched].any()
    with pytest.raises(ValueError, match="optimizer"):
        make_optimizer(model, "lbfgs", 0.1)


def test_adam_on_a_model_whose_parameters_are_all_sparse_updates_only_touched_rows():
    layer = SampledOutput(in_features=4, vocab_size=50, noise="uniform", loss="nce", noise_ratio=5)
    optimizer = make_optimizer(layer, "adam", 0.1, sparse=layer.sparse_parameters())
    before = layer.weight.detach().clone()
    target = torch.tensor([3, 7])
    layer(torch.randn(2, 4), target, generator=torch.Generator().manual_seed(0)).backward()
    touched = layer.weight.grad.coalesce().indices()[0]
    optimizer.step()
    changed = (layer.weight.detach() != before).any(dim=1).nonzero().squeeze(1)
    assert set(changed.tolist()) == set(touched.tolist()) and {3, 7} <= set(changed.tolist())


def make_dropout_lm(**rates):
    """A 2-layer LSTM LM (H = out_size = 16: no projection) with the given dropout rates."""
    output = SampledOutput(in_features=16, vocab_size=V, noise=torch.arange(1, V + 1), noise_ratio=8)
    return RNNLM(V, output, emb_size=12, hidden_size=16, num_layers=2, cell="lstm", **rates)


def test_dropout_is_off_in_eval_mode():
    """In eval mode a model with dropout 0.5 everywhere gives the features of the same weights without dropout;
    in training mode two calls differ."""
    model = make_dropout_lm(dropout=0.5)
    reference = make_dropout_lm(dropout=0.0)
    reference.load_state_dict(model.state_dict())
    x = torch.randint(V, (4, 9))
    model.eval()
    torch.testing.assert_close(model(x)[0], reference.train()(x)[0])
    model.train()
    assert not torch.allclose(model(x)[0], model(x)[0])


def test_output_dropout_alone_zeroes_features_and_scales_the_rest():
    """Only dropout_output = 0.5 (the last operation when there is no projection): each training feature is 0 or
    twice the evaluation feature, about half of them 0 (binomial, 4 standard errors)."""
    model = make_dropout_lm(dropout=0.0, dropout_output=0.5)
    x = torch.randint(V, (8, 10))
    clean = model.eval()(x)[0]
    noisy = model.train()(x)[0]
    dropped = noisy == 0
    torch.testing.assert_close(noisy[~dropped], 2 * clean[~dropped])
    n = dropped.numel()
    assert abs(dropped.float().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)


def test_embedding_dropout_alone_changes_features_without_zeroing_them():
    model = make_dropout_lm(dropout=0.0, dropout_embedding=0.5)
    x = torch.randint(V, (8, 10))
    clean, noisy = model.eval()(x)[0], model.train()(x)[0]
    assert not torch.allclose(clean, noisy) and (noisy != 0).all()
    with pytest.raises(ValueError, match="dropout_between"):
        make_dropout_lm(dropout_between=1.0)


def test_locked_dropout_shares_one_mask_over_time():
    """x = 1: every (sequence, unit) is 0 at all time steps or 1/(1 − p) at all of them; a fraction ≈ p is 0."""
    drop = LockedDropout(0.25)
    out = drop(torch.ones(64, 7, 32))
    first = out[:, :1, :]
    assert (out == first).all()
    values = out.unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.75)
    n = first.numel()
    assert abs((first == 0).float().mean().item() - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    x = torch.randn(2, 3, 4)
    assert torch.equal(drop.eval()(x), x)


def test_locked_dropout_in_the_model_keeps_each_sequence_mask_over_time():
    """locked_dropout with only dropout_output: a feature unit of a sequence is dropped at every step or none."""
    model = make_dropout_lm(dropout=0.0, dropout_output=0.5, locked_dropout=True).train()
    features = model(torch.randint(V, (16, 6)))[0]
    zero = features == 0  # (B, T, H)
    assert zero.any()
    assert (zero == zero[:, :1, :]).all()
