"""Small functions shared by the layers' parameterisations."""

from __future__ import annotations

import torch


def soft_clamp(raw: torch.Tensor, bound) -> torch.Tensor:
    r"""``bound * tanh(raw / bound)``: the identity near 0, smoothly limited to ``(-bound, bound)``.

    Used for log-scales produced by networks, so one step cannot blow a scale up or down
    (the stabilised scale of seed 002); ``bound`` may be a tensor (a learned bound).
    """
    return bound * torch.tanh(raw / bound)
