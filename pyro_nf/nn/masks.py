"""Masks shared by the layers (which coordinates a coupling layer transforms)."""

from __future__ import annotations

import torch

COUPLING_MASKS = ("half", "alternate")


def coupling_mask(dim: int, kind: str = "half", flip: bool = False) -> torch.Tensor:
    """Boolean mask of length ``dim``; ``True`` marks the coordinates a coupling layer transforms.

    ``"half"`` transforms the second half (``dim // 2`` identity coordinates first),
    ``"alternate"`` every odd coordinate. ``flip`` swaps the roles, so consecutive layers
    built with ``flip = i % 2 == 1`` transform every coordinate.
    """
    if dim < 2:
        raise ValueError(f"coupling_mask: a coupling layer needs dim >= 2, got {dim}")
    if kind == "half":
        mask = torch.arange(dim) >= dim // 2
    elif kind == "alternate":
        mask = torch.arange(dim) % 2 == 1
    else:
        raise ValueError(f"coupling_mask: unknown kind {kind!r}; choose one of {COUPLING_MASKS}")
    return ~mask if flip else mask


def check_coupling_mask(mask, dim: int | None, owner: str) -> torch.Tensor:
    """Validate a user mask: 1-D, boolean or 0/1, with both identity and transformed entries."""
    mask = torch.as_tensor(mask)
    if mask.dim() != 1:
        raise ValueError(f"{owner}: mask must be 1-D, got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not torch.all((mask == 0) | (mask == 1)):
            raise ValueError(f"{owner}: mask must hold booleans or 0/1, got {mask.tolist()}")
        mask = mask.bool()
    if dim is not None and mask.numel() != dim:
        raise ValueError(f"{owner}: mask has {mask.numel()} entries but input_dim is {dim}")
    if mask.all() or not mask.any():
        raise ValueError(f"{owner}: mask must transform some coordinates and keep others, got {mask.int().tolist()}")
    return mask
