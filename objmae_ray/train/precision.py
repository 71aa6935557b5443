"""Numeric precision of a trial's forward and backward passes (TrialConfig.precision).

  auto  bf16 on a CUDA device with native bf16 (Ampere and later); fp16 with loss scaling on CUDA cards
        without it (Turing: the paper's TITAN RTX, T4 / g4dn; Volta: V100); fp32 on CPU
  bf16  autocast to bfloat16, no loss scaling (bf16 has fp32's exponent range)
  fp16  autocast to float16 with `torch.amp.GradScaler`: the loss is multiplied by a scale before the
        backward pass and the gradients divided by it before the optimiser step; a step whose gradients
        hold inf/NaN is skipped and the scale halved, and the scale doubles after `growth_interval`
        good steps. The scaler's state goes into every checkpoint (train_state["scaler"]).
  fp32  no autocast
Parameters and optimiser state stay fp32 in every mode; losses are computed in fp32. An explicit bf16
or fp16 is honoured on CPU too (CPU autocast supports both; the tests use it for loss scaling).
"""
from __future__ import annotations

from contextlib import AbstractContextManager

import torch

from objmae_ray.errors import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def bf16_native(device: torch.device) -> bool:
    """Whether `device` runs bf16 in hardware (CUDA compute capability 8.0+; emulation does not count)."""
    return device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_precision(requested: str, device: torch.device | str) -> str:
    """The precision a worker on `device` uses for `requested` ("auto" resolved; see the module docstring).
    An explicit bf16 on a CUDA card without native bf16 is a ConfigError naming the field and the card."""
    device = torch.device(device)
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if bf16_native(device) else "fp16"
    if requested == "bf16" and device.type == "cuda" and not bf16_native(device):
        raise ConfigError(f"precision: bf16 but {torch.cuda.get_device_name(device)} has no native bf16; "
                          f"use precision auto or fp16")
    return requested


class Precision:
    """Autocast and (fp16 only) loss scaling of one worker; `name` is the resolved precision."""

    def __init__(self, requested: str, device: torch.device | str):
        self.device = torch.device(device)
        self.name = resolve_precision(requested, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def autocast(self) -> AbstractContextManager:
        """The forward pass's context: autocast to bf16 / fp16, or a no-op for fp32."""
        return torch.autocast(self.device.type, dtype=DTYPES.get(self.name, torch.bfloat16),
                              enabled=self.name in DTYPES)

    def backward(self, loss: torch.Tensor) -> None:
        """Backward pass of `loss` (multiplied by the scale for fp16); gradients accumulate."""
        self.scaler.scale(loss).backward()

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        """Optimiser step on the accumulated gradients (unscaled first; skipped for fp16 when one is inf/NaN),
        then the scale update. No host sync: the scaler's checks stay on the device."""
        self.scaler.step(optimizer)
        self.scaler.update()

    def backward_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """One update from one loss: zero the gradients, `backward`, `step`."""
        optimizer.zero_grad(set_to_none=True)
        self.backward(loss)
        self.step(optimizer)

    def state_dict(self) -> dict:
        """The scaler's state ({} unless fp16)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if state and self.scaler.is_enabled():
            self.scaler.load_state_dict(state)
