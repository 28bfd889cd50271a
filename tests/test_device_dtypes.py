"""Nothing float64 reaches the training device (Apple MPS has no float64).

A training step of each setting runs on PyTorch's "meta" device, which has dtypes and shapes but no data, as a
stand-in for an accelerator: a dispatch mode records the dtype of every tensor an operation places on it. CPU
work (fitting the noise, exact densities, float64 sums after a copy to the CPU) is not on the device and may
use float64.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ebm.data.toy import sample
from ebm.energy.config import EnergyConfig
from ebm.energy.estimators import ESTIMATORS, make_estimator
from ebm.energy.noise import make_noise
from ebm.energy.task import build_energy, energy_step
from ebm.harness.context import DistributedContext
from ebm.lm.build import build_model as build_lm
from ebm.lm.config import LMConfig
from ebm.lm.distributed import DistributedLM
from ebm.lm.optim import make_optimizer

DEVICE = torch.device("meta")
ALLOWED = {torch.float32, torch.int64, torch.int32, torch.bool, torch.uint8}


class DeviceDtypes(TorchDispatchMode):
    """Collects (operation, dtype) for every tensor an operation creates on ``DEVICE``."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device == DEVICE:
                self.seen.add((str(func), tensor.dtype))
        return out

    def bad(self):
        return sorted((op, str(dtype)) for op, dtype in self.seen if dtype not in ALLOWED)


def test_recorder_catches_a_float64_tensor_on_the_device():
    with DeviceDtypes() as recorder:
        torch.zeros(3, device=DEVICE, dtype=torch.float64) + 1
    assert recorder.bad()


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_energy_training_step_places_no_float64_on_the_device(estimator):
    # fce's "accuracy" rule reads the last accuracy on the host (a sync the meta device cannot do): use "both"
    config = EnergyConfig(dataset="pinwheel", width=16, depth=2, estimator=estimator, fce_pretrain_steps=2,
                          fce_rule="both", cd_buffer=64, cd_steps=2, mle_resolution=8)
    fit_points = sample("pinwheel", 2000, torch.Generator().manual_seed(0))
    noise = make_noise("gmm", fit_points, 4, 1.5, 0)
    objective = make_estimator(estimator, config, noise, fit_points)
    with DeviceDtypes() as recorder:
        model = build_energy(config, noise).to(DEVICE)
        noise, objective = noise.to(DEVICE), objective.to(DEVICE)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        batch = sample("pinwheel", 64, torch.Generator().manual_seed(1)).to(DEVICE)
        for _ in range(2):
            energy_step(model, objective, batch, optimizer, torch.Generator().manual_seed(2))
    assert recorder.seen and recorder.bad() == []


def test_lm_training_step_places_no_float64_on_the_device():
    config = LMConfig(emb_size=8, hidden_size=8, noise_ratio=5, dropout=0.1, num_layers=2)
    counts = torch.arange(1, 51)
    with DeviceDtypes() as recorder:
        model = build_lm(config, counts, sparse=False).to(DEVICE)  # as on MPS: dense row gradients
        optimizer = make_optimizer(model, config.optimizer, config.lr, model.sparse_parameters())
        parallel = DistributedLM(model, DistributedContext(device=DEVICE))
        tokens = torch.randint(50, (4, 7), generator=torch.Generator().manual_seed(0))
        hidden = None
        for step in range(2):  # the second step carries the state: as LMTask.step does
            optimizer.zero_grad(set_to_none=True)
            _, hidden = parallel.forward_backward(tokens[:, :-1], tokens[:, 1:], hidden, None,
                                                  noise=torch.Generator().manual_seed(1), dropout_seed=step)
            optimizer.step()
    assert recorder.seen and recorder.bad() == []
