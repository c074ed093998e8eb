"""The optimizers' side of the training loop (tinysora.train.trainer): the lr schedule,
and auxiliary networks with their own optimizers (a GAN's discriminators), checkpointed
and resumed with the model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_trainer import Stop, make_batch_fn, toy_cfg, toy_model
from torch import nn

from tinysora.io.checkpoint import CheckpointError
from tinysora.train.trainer import Auxiliary, TrainConfig, Trainer, lr_at

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- lr schedule


def test_lr_warmup_is_linear():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    for step in range(10):
        assert lr_at(cfg, step) == pytest.approx(1e-3 * (step + 1) / 10)
    assert lr_at(cfg, 9) == pytest.approx(1e-3)
    assert lr_at(cfg, 10) == pytest.approx(1e-3)  # cosine starts at the peak


def test_lr_cosine_ends_at_min_ratio():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    lrs = [lr_at(cfg, s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:], strict=False))
    assert lr_at(cfg, 55) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # halfway
    assert lr_at(cfg, 100) == pytest.approx(1e-4)
    assert lr_at(cfg, 5000) == pytest.approx(1e-4)  # clamped past the end
    assert lr_at(cfg, 99) > 1e-4


def test_lr_without_warmup():
    cfg = TrainConfig(steps=10, lr=2e-3, warmup_steps=0, min_lr_ratio=0.0)
    assert lr_at(cfg, 0) == pytest.approx(2e-3)
    assert lr_at(cfg, 10) == pytest.approx(0.0, abs=1e-12)


# ----------------------------------------------------------------------------- auxiliary


class ToyGAN:
    """A linear generator against a linear critic: the critic steps inside the loss."""

    def __init__(self, seed: int = 0):
        torch.manual_seed(seed + 1)
        self.critic = nn.Linear(2, 1)
        self.auxiliary = Auxiliary({"critic": self.critic})

    def loss(self, model: nn.Module, batch):
        x, y = batch
        fake = model(x)
        loss_d = (self.critic(fake.detach()) - self.critic(y)).mean()
        grad_d = self.auxiliary.update("critic", loss_d)
        loss = nn.functional.mse_loss(fake, y) - 0.1 * self.critic(fake).mean()
        return loss, {"loss_d": loss_d.detach(), "grad_d": grad_d}

    def trainer(self, out, batch_fn, model_seed: int = 0) -> Trainer:
        return Trainer(
            toy_model(model_seed), toy_cfg(), out, self.loss, batch_fn, auxiliary=self.auxiliary
        )


def test_auxiliary_network_trains_on_the_schedule_and_is_checkpointed(tmp_path):
    gan = ToyGAN()
    before = gan.critic.weight.detach().clone()
    t = gan.trainer(tmp_path, make_batch_fn())
    t.fit()
    assert not torch.equal(gan.critic.weight, before)
    assert gan.auxiliary.optimizers["critic"].param_groups[0]["lr"] == lr_at(t.cfg, 7)
    folder = tmp_path / "checkpoints" / "step_00000008"
    files = sorted(p.name for p in folder.iterdir())
    assert files == [
        "critic.safetensors",
        "critic_optimizer.safetensors",
        "model.safetensors",
        "optimizer.safetensors",
        "state.json",
    ]
    assert "critic" in json.loads((folder / "state.json").read_text())["auxiliary"]
    record = json.loads((tmp_path / "log.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["loss_d"]) and record["grad_d"] > 0


def test_auxiliary_network_resumes_to_the_uninterrupted_run(tmp_path):
    straight = ToyGAN()
    whole = straight.trainer(tmp_path / "a", make_batch_fn())
    whole.fit()
    crashed = ToyGAN()
    with pytest.raises(Stop):
        crashed.trainer(tmp_path / "b", make_batch_fn(5)).fit()
    resumed = ToyGAN(seed=7)  # another init: every weight must come from the checkpoint
    t = resumed.trainer(tmp_path / "b", make_batch_fn(), model_seed=9)
    assert t.load_checkpoint() and t.step == 4
    t.fit()
    for a, b in ((whole.model, t.model), (straight.critic, resumed.critic)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    sa = straight.auxiliary.optimizers["critic"].state_dict()["state"]
    sb = resumed.auxiliary.optimizers["critic"].state_dict()["state"]
    assert sa.keys() == sb.keys() and all(
        torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i]
    )


def test_a_checkpoint_without_the_auxiliary_network_is_a_one_line_error(tmp_path):
    plain = Trainer(
        toy_model(), toy_cfg(steps=2), tmp_path, lambda m, b: (m(b[0]).sum(), {}), make_batch_fn()
    )
    plain.fit()
    gan = ToyGAN()
    with pytest.raises(CheckpointError, match="has no critic"):
        gan.trainer(tmp_path, make_batch_fn()).load_checkpoint()
