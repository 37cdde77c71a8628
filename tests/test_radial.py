"""Radial's closed-form inverse at the edges (issue 15, section 6): non-finite input used to come back as
NaN, and radii beyond ~1e19 (float32) overflowed."""

import pytest
import torch
from cases import inverse_with_parameters

from pyro_nf.transforms import Radial


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_radial_extreme_finite_inputs_stay_finite(dtype):
    """1e30 (float64) and 1e15 (float32) were the reported limits; every finite input, up to the largest
    float, now gives a finite z, x and log-det, and the round trip to rounding."""
    sizes = ([1e-30, 1.0, 1e15, 1e20, 1e30, 3e38] if dtype == torch.float32
             else [1e-300, 1e-30, 1.0, 1e30, 1e160, 1e300, 1.7e308])
    for beta_raw in (-3.0, 0.5, 4.0):
        torch.manual_seed(0)
        layer = Radial(3).to(dtype)
        with torch.no_grad():
            layer.beta_raw.fill_(beta_raw)
        for size in sizes:
            x = torch.tensor([[size, -size, 0.5 * size], [size, 0, 0], [0, 0, -size]], dtype=dtype)
            with torch.no_grad():
                z, ladj = layer._inverse_with_ladj(x)
                back, ladj_forward = layer._forward_with_ladj(z)
            assert torch.isfinite(z).all() and torch.isfinite(ladj).all() and torch.isfinite(back).all()
            scale = 1 + x.abs().amax(-1, keepdim=True)
            assert ((back - x).abs() / scale).max() <= 8 * torch.finfo(dtype).eps, (beta_raw, size)
            torch.testing.assert_close(ladj, ladj_forward, atol=8 * torch.finfo(dtype).eps, rtol=0)


def test_radial_inverse_gradients_near_the_centre_and_far_away():
    torch.manual_seed(2)
    template = Radial(2).double()
    names = [n for n, _ in template.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in template.parameters()]
    x = torch.cat([template.z0.detach() + 1e-3 * torch.randn(2, 2, dtype=torch.float64),
                   torch.randn(2, 2, dtype=torch.float64), 30 * torch.randn(2, 2, dtype=torch.float64)])
    x.requires_grad_(True)

    assert torch.autograd.gradcheck(inverse_with_parameters(Radial, 2, names), (x, *params))


# ----------------------------------------------------------------------------- a fit that reaches large c
