"""Flow contrastive estimation (Gao, Nijkamp, Kingma, Xu, Dai & Wu, CVPR 2020): NCE whose noise is a flow
that is trained against the energy on the same value function.

    J(θ, φ) = E_data[log σ(G)] + ν·E_{q_φ}[log σ(−G)],   G = log p_θ − log q_φ − log ν

(``ebm.nce.nce_objective``). The energy ascends J; the flow descends it, through reparameterised samples
x̃ = T_φ⁻¹(z) and its log-density at both the data and the samples (``FlowNoise.rsample_and_log_prob``). At
ν = 1 and the optimal classifier, the flow's update minimises the Jensen–Shannon divergence to the data.

Alternation rules:
    accuracy  one update per call: the energy's while the classifier's balanced accuracy at the previous call
              was ≤ ``threshold``, the flow's otherwise (lifeitech/fce-2d: threshold 0.6, Adam 1e-3 for the
              energy and 7e-4 for the flow, ν = 1)
    both      both every call: the flow's update inside ``loss``, the energy's by the caller
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ebm.energy.estimators.base import Estimator, LogDensityModel, check_batch
from ebm.energy.flow import FlowNoise, fit_flow_noise
from ebm.nce import classifier_accuracy, nce_logit, nce_objective
from ebm.utils.checks import positive_float, probability

FCE_RULES = ("accuracy", "both")


class FlowContrastiveEstimation(Estimator):
    """FCE with the flow ``flow`` (a pre-fitted ``FlowNoise``, unfrozen here) and its own Adam optimiser.

    Buffers: ``flow_turn`` (whether the next call under the accuracy rule updates the flow). The optimiser's
    state travels in ``state_dict`` as extra state; load it after moving the estimator to its device.
    Statistics: ``accuracy``, ``value`` (J before the update) and ``flow_step`` (1 when the flow was updated).
    """

    name = "fce"
    learns_log_z = True
    uses_noise_ratio = True

    @classmethod
    def build(cls, options: Any, noise: nn.Module | None, fit_points: Tensor | None, seed: int) -> Estimator:
        """Its own flow, fitted to ``fit_points`` by maximum likelihood (``fce_pretrain_steps``, seed ``seed``); as
        a placeholder, a flow in the dimension of ``noise``."""
        flow = fit_flow_noise(fit_points, options.fce_pretrain_steps, seed) if fit_points is not None \
            else FlowNoise.empty(dims=noise.dims if noise is not None else 2)
        return cls(flow, options.noise_ratio, options.fce_rule, options.fce_threshold, options.fce_lr)

    @classmethod
    def needs_fit_points(cls, options: Any) -> bool:
        return True

    def __init__(
        self,
        flow: FlowNoise,
        noise_ratio: float = 1.0,
        rule: str = "accuracy",
        threshold: float = 0.6,
        lr: float = 7e-4,
    ):
        super().__init__()
        if not isinstance(flow, FlowNoise):
            raise ValueError(f"fce needs a FlowNoise as its flow, got {type(flow).__name__}")
        if rule not in FCE_RULES:
            raise ValueError(f"unknown fce_rule {rule!r}; choose one of {', '.join(FCE_RULES)}")
        self.flow = flow.requires_grad_(True)
        self.noise_ratio = positive_float("noise_ratio", noise_ratio)
        self.rule = rule
        self.threshold = probability("fce_threshold", threshold, open_low=True, open_high=True)
        self.optimizer = torch.optim.Adam(self.flow.parameters(), lr=positive_float("fce_lr", lr))
        self.register_buffer("flow_turn", torch.tensor(False))

    @property
    def noise(self) -> FlowNoise:
        """The flow, FCE's (trained) noise."""
        return self.flow

    def get_extra_state(self) -> dict:
        return {"flow_optimizer": self.optimizer.state_dict()}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["flow_optimizer"])

    def _value(
        self, model: LogDensityModel, data: Tensor, log_q_data: Tensor, samples: Tensor, log_q_samples: Tensor
    ) -> tuple[Tensor, Tensor]:
        """J and the classifier's balanced accuracy, for data (B, D) and flow samples (M, D) with their log q."""
        log_p = model.log_prob(torch.cat([data, samples]))  # (B + M,)
        logit_data = nce_logit(log_p[: len(data)], log_q_data, self.noise_ratio)  # (B,)
        logit_noise = nce_logit(log_p[len(data) :], log_q_samples, self.noise_ratio)  # (M,)
        return nce_objective(logit_data, logit_noise, self.noise_ratio), classifier_accuracy(logit_data, logit_noise)

    def _flow_step(self, value: Tensor) -> None:
        """One Adam step of the flow down J; no gradient reaches the energy's parameters."""
        parameters = list(self.flow.parameters())
        for parameter, grad in zip(parameters, torch.autograd.grad(value, parameters), strict=True):
            parameter.grad = grad
        self.optimizer.step()

    def loss(
        self, model: LogDensityModel, data: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor | None, dict[str, Tensor]]:
        check_batch(data, self.flow.dims)
        if getattr(model, "base", None) is self.flow:
            raise ValueError("the model's base density is FCE's trained flow; use base 'none' or a frozen copy of it")
        update_flow = self.rule == "both" or bool(self.flow_turn)
        update_energy = self.rule == "both" or not update_flow
        m = max(1, round(self.noise_ratio * len(data)))
        with torch.set_grad_enabled(update_flow):
            samples, log_q_samples = self.flow.rsample_and_log_prob((m,), generator)  # (M, D), (M,)
            flow_terms = (self.flow.log_prob(data), samples, log_q_samples)
        loss = None
        if update_energy:  # the flow's terms held fixed
            value, accuracy = self._value(model, data, *(t.detach() for t in flow_terms))
            loss = -value
        if update_flow:
            flow_value, flow_accuracy = self._value(model, data, *flow_terms)
            if not update_energy:
                value, accuracy = flow_value, flow_accuracy
            self._flow_step(flow_value)
        self.flow_turn.copy_(accuracy > self.threshold)
        stats = {
            "accuracy": accuracy.detach(),
            "value": value.detach(),
            "flow_step": torch.tensor(float(update_flow), device=data.device),
        }
        return loss, stats


__all__ = ["FCE_RULES", "FlowContrastiveEstimation"]
