"""One pre-training epoch (train/pretrain.py): the reported reconstruction loss is the per-image mean of the
hand-computable per-batch losses; the schedule and step hook are called once per update."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from objmae_ray.config import MaskingConfig
from objmae_ray.method.model import create_objmae
from objmae_ray.train.pretrain import pretrain_epoch


def constant_images(values: list[float]) -> torch.Tensor:
    """[B, 3, 32, 32], image b filled with values[b]: every patch of it has squared pixel mean values[b]**2."""
    return torch.tensor(values).view(-1, 1, 1, 1).expand(-1, 3, 32, 32).clone()


@pytest.mark.parametrize("padding", ["zero", "replicate"])
def test_epoch_recon_loss_is_the_per_image_mean_of_hand_computed_losses(padding):
    """A decoder head of zeros predicts 0 for every pixel, so the loss of a target patch of image b is
    values[b]**2 (MSE against 0), whichever patches the masks pick, and a batch's loss is the mean of
    values[b]**2 over its images (every image has the same number of valid target slots). lr 0 keeps
    the model fixed, so the epoch's loss is known exactly: the per-image mean over the epoch."""
    torch.manual_seed(0)
    model = create_objmae("micro", img_size=32, patch_size=8)
    torch.nn.init.zeros_(model.decoder_pred.weight)
    torch.nn.init.zeros_(model.decoder_pred.bias)
    batches = [{"image": constant_images([1.0, 2.0, 3.0])}, {"image": constant_images([4.0])}]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    updates, steps = [], []
    stats = pretrain_epoch(model, batches, optimizer, SimpleNamespace(step_update=updates.append), epoch=2,
                           first_update=10, num_patches=16, masking=MaskingConfig(alpha=0.25, selection="mae",
                                                                                  padding=padding),
                           generator=torch.Generator().manual_seed(0), device=torch.device("cpu"),
                           on_step=lambda e, s: steps.append((e, s)))
    # batch losses (1 + 4 + 9) / 3 and 16: per image (14 + 16) / 4 = 7.5 (per batch it would be 10.33)
    assert stats.loss == pytest.approx(7.5, rel=1e-6)
    assert (stats.images, stats.steps, stats.fallback) == (4, 2, 0)
    assert updates == [10, 11] and steps == [(2, 0), (2, 1)]


def test_epoch_trains_the_model():
    torch.manual_seed(0)
    model = create_objmae("micro", img_size=32, patch_size=8)
    before = model.decoder_pred.weight.detach().clone()
    batch = {"image": torch.randn(4, 3, 32, 32)}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = [pretrain_epoch(model, [batch], optimizer, SimpleNamespace(step_update=lambda i: None), epoch=e,
                             first_update=e, num_patches=16, masking=MaskingConfig(alpha=0.5, selection="mae"),
                             generator=torch.Generator().manual_seed(0), device=torch.device("cpu")).loss
              for e in range(3)]  # the same masks every epoch (same seed): the loss must fall
    assert not torch.equal(model.decoder_pred.weight, before)
    assert losses[2] < losses[0]
