"""Residual flow (issue 11): the Lipschitz bound, the fixed-point inverse and its implicit gradients, the
Russian-roulette log-det estimator (unbiased, constant memory), and training on two moons."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn

import pyro_nf as nf
from pyro_nf.transforms import LipSwish, Residual

F64 = torch.float64



def scrambled(layer: Residual, scale: float = 3.0, seed: int = 0) -> Residual:
    """Every weight and bias random and large: the spectral normalisation binds on every layer, and ``g`` is far
    from linear and from zero (a fresh block is the identity)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in layer.net.modules():
            if isinstance(m, nn.Linear):
                m.weight.copy_(scale * torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))
    return layer


# --------------------------------------------------------------------------- the Lipschitz bound
@pytest.mark.parametrize("lipschitz", [0.5, 0.97])
def test_g_is_a_contraction_below_c(lipschitz):
    torch.manual_seed(0)
    layer = scrambled(Residual(4, (32, 32), lipschitz=lipschitz).double()).eval()
    raw = math.prod(float(torch.linalg.matrix_norm(m.weight.detach(), ord=2)) for m in layer.net.modules()
                    if isinstance(m, nn.Linear))
    assert raw > 10, "the raw weights must need the normalisation for this test to mean something"
    assert layer.lipschitz_bound() <= lipschitz * (1 + 1e-9)
    # pairs at every distance, from far apart to nearly equal
    a = 3 * torch.randn(4000, 4, dtype=F64)
    b = a + torch.randn(4000, 4, dtype=F64) * torch.logspace(-6, 1, 4000, dtype=F64).unsqueeze(-1)
    with torch.no_grad():
        ratio = (layer.g(a) - layer.g(b)).norm(dim=-1) / (a - b).norm(dim=-1)
    assert ratio.max() < lipschitz
    assert ratio.max() > 0.05 * layer.lipschitz_bound(), "g should not be nearly constant"
    # the Jacobian's spectral norm at random points (autograd, independent of the layer's own Jacobian)
    jac = torch.func.vmap(torch.func.jacrev(layer.g))(a[:500])
    assert torch.linalg.matrix_norm(jac, ord=2).max() < lipschitz
    torch.testing.assert_close(layer._jacobian(layer._weights_no_update(), a[:500]), jac, rtol=1e-12, atol=1e-12)


def test_lipswish_is_one_lipschitz_for_any_beta():
    x = torch.linspace(-30, 30, 200001, dtype=F64)
    for beta in (0.01, 0.5, 1.0, 10.0, 1000.0):
        act = LipSwish(beta).double()
        slope = act.derivative(x)
        assert slope.max() < 1 and slope.min() > -0.1
        torch.testing.assert_close(torch.func.vmap(torch.func.grad(lambda v, act=act: act(v)))(x), slope)
    assert 0.99 < LipSwish(1.0).derivative(torch.tensor(2.4 / 1.0)) * 1.1 / 1.0998 < 1.0001


def test_power_iteration_state_moves_only_in_training_mode():
    torch.manual_seed(0)
    layer = scrambled(Residual(3, (16,)))
    with torch.no_grad():
        for s in layer.spectral:  # start the iteration far from converged
            s.u.copy_(torch.nn.functional.normalize(torch.randn_like(s.u), dim=0))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(8, 3)
    layer.eval()
    first = layer.inverse_and_ladj(x)
    second = layer.inverse_and_ladj(x)
    assert all(torch.equal(first[i], second[i]) for i in range(2)), "eval mode must be deterministic"
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items()), "eval mode changed a buffer"
    layer.train()
    layer.inverse_and_ladj(x)
    assert not all(torch.equal(s.u, before[f"spectral.{i}.u"]) for i, s in enumerate(layer.spectral))
    layer.eval()  # converged now: the stored vectors give the same map as the long iteration did
    torch.testing.assert_close(layer.inverse_and_ladj(x)[0], first[0], rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- the fixed-point inverse
@pytest.mark.parametrize("direction", ["density", "sampling"])
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_fixed_point_converges_for_extreme_inputs(dtype, direction):
    torch.manual_seed(0)
    layer = scrambled(Residual(3, (16, 16), direction=direction)).to(dtype).eval()
    b = torch.tensor([[0.0, 0.0, 0.0], [1e-30, -1e-30, 1e-30], [1e-3, 2.0, -5.0], [1e6, -1e6, 3e5],
                      [-1e20, 5.0, 1e20], [1e30, 1e30, -1e30]], dtype=dtype)
    solve, direct = (layer.forward_and_ladj, layer.inverse_and_ladj)
    if direction == "sampling":
        solve, direct = direct, solve
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "stopped after max_iter" warning
        a, _ = solve(b)
    assert torch.isfinite(a).all()
    back, _ = direct(a)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    scale = 1 + b.abs().amax(-1, keepdim=True)  # g mixes the coordinates: accuracy relative to the row
    assert ((back - b).abs() <= tol * scale).all(), (back - b).abs().max()


@pytest.mark.parametrize("direction", ["density", "sampling"])
def test_non_finite_input_of_the_inverse_names_layer_and_shape(direction):
    layer = Residual(3, (8,), direction=direction).eval()
    bad = torch.randn(2, 3)
    bad[1, 2] = float("inf")
    solve = layer.forward_and_ladj if direction == "density" else layer.inverse_and_ladj
    with pytest.raises(ValueError, match=r"Residual.*\(2, 3\).*non-finite"):
        solve(bad)


def test_sampling_direction_round_trip_and_log_det():
    torch.manual_seed(1)
    layer = scrambled(Residual(3, (16, 16), direction="sampling").double()).eval()
    z = torch.randn(32, 3, dtype=F64)
    x = layer(z)
    torch.testing.assert_close(layer.inv(x.clone()), z, rtol=1e-10, atol=1e-10)
    for point in z[:3]:
        jac = torch.autograd.functional.jacobian(lambda v: layer(v.clone()), point)
        expected = torch.linalg.slogdet(jac).logabsdet
        torch.testing.assert_close(layer.log_abs_det_jacobian(point, layer(point)), expected, rtol=1e-10, atol=1e-10)
        # the inverse's Jacobian (implicit gradients) is the inverse matrix
        back = torch.autograd.functional.jacobian(lambda v: layer.inv(v.clone()), layer(point).detach())
        torch.testing.assert_close(back @ jac, torch.eye(3, dtype=F64), rtol=1e-9, atol=1e-9)
    model = nf.transformed(layer)
    assert model.log_prob(model.rsample((4,))).shape == (4,)


def test_implicit_gradients_of_the_inverse():
    """d/dtheta of the fixed-point solution: the Newton step (exact regime) and the adjoint backward pass (estimator
    regime) agree with each other and with central finite differences."""
    torch.manual_seed(2)
    source = scrambled(Residual(4, (16,), lipschitz=0.9).double())
    z = torch.randn(6, 4, dtype=F64)
    w = torch.randn(6, 4, dtype=F64)
    grads = {}
    for label, below in (("newton", 100), ("adjoint", 0)):
        layer = Residual(4, (16,), lipschitz=0.9, exact_below_dim=below).double()
        layer.load_state_dict(source.state_dict())
        layer.train()
        layer.forward_and_ladj(z)  # converges the stored power-iteration vectors
        zz = z.clone().requires_grad_(True)
        x, _ = layer.forward_and_ladj(zz)  # density direction: the forward pass is the fixed-point solve
        grads[label] = torch.autograd.grad((x * w).sum(), [zz, *layer.parameters()], allow_unused=True)
        if label == "adjoint":  # the gradient captured at the output itself is not rewritten by the adjoint
            zz = z.clone().requires_grad_(True)
            x, _ = layer.forward_and_ladj(zz)
            torch.testing.assert_close(torch.autograd.grad((x * w).sum(), x)[0], w)
    for a, b in zip(grads["newton"], grads["adjoint"]):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)
    layer = source.eval()
    weight = layer.net.net[0].weight
    index = (3, 1)
    with torch.no_grad():
        values = []
        for h in (1e-6, -1e-6):
            weight[index] += h
            values.append((layer.forward_and_ladj(z)[0] * w).sum())
            weight[index] -= h
    numeric = (values[0] - values[1]) / 2e-6
    names = [n for n, _ in layer.named_parameters()]
    analytic = grads["newton"][1 + names.index("net.net.0.weight")][index]
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- the log-det estimator
def _estimates(layer, x, calls):
    values = []
    with torch.no_grad():
        for _ in range(calls):
            values.append(layer.inverse_and_ladj(x)[1])
    return torch.stack(values)


def large_trace_layer(**kwargs) -> Residual:
    """``g(x) = W^T LipSwish(W x + b)``: ``J_g = W^T diag(slope) W`` has a large positive trace, so the log-det
    (about -0.7 to -0.95 nats below) needs several series terms: truncating after 2 is off by 6-15 standard
    errors. Spectral radius about 0.45 < sqrt(1 - geom_p): the roulette estimate has finite variance."""
    torch.manual_seed(3)
    layer = scrambled(Residual(4, (16,), lipschitz=0.8, exact_below_dim=0, beta=1.0, **kwargs).double(), scale=1.0)
    with torch.no_grad():
        layer.net.net[2].weight.copy_(layer.net.net[0].weight.t())
    return layer


def test_russian_roulette_is_unbiased():
    """Mean of many training-mode estimates (float64) = the exact log-det within 4 standard errors; a biased
    two-term truncation fails the same test, so the test can tell."""
    layer = large_trace_layer()
    points = torch.randn(6, 4, dtype=F64)
    x = points.repeat(64, 1)  # 64 Hutchinson vectors per point and call; one roulette draw per call
    exact = layer.eval().inverse_and_ladj(points)[1].detach()
    assert (exact.abs() > 0.5).all()
    layer.train()
    per_call = _estimates(layer, x, 300).reshape(300, 64, 6).mean(1)
    mean, se = per_call.mean(0), per_call.std(0) / math.sqrt(300)
    assert (se > 0).all() and (se < 0.01).all(), se
    assert ((mean - exact).abs() < 4 * se).all(), f"mean {mean} exact {exact} se {se}"
    layer.n_power_series = 2
    biased = _estimates(layer, x, 100).reshape(100, 64, 6).mean(1)
    assert ((biased.mean(0) - exact).abs() > 4 * biased.std(0) / 10).any()
    # the fixed-point direction with gradients on (the implicit-gradient path) estimates the same log-det
    layer.n_power_series = None
    with torch.no_grad():
        z = layer.inverse_and_ladj(x)[0].requires_grad_(True)
    forward = torch.stack([-layer.forward_and_ladj(z)[1].detach() for _ in range(150)])
    per_call = forward.reshape(150, 64, 6).mean(1)
    mean, se = per_call.mean(0), per_call.std(0) / math.sqrt(150)
    assert ((mean + exact).abs() < 4 * se).all(), f"mean {mean} exact {-exact} se {se}"


def test_neumann_gradient_is_unbiased():
    """The memory-saving gradient estimate, projected on random directions, averages to the exact gradient."""
    layer = large_trace_layer()
    x = torch.randn(256, 4, dtype=F64)
    params = list(layer.parameters())

    def gradient(mode):
        layer.train(mode == "train")
        grads = torch.autograd.grad(layer.inverse_and_ladj(x)[1].mean(), params, allow_unused=True)
        # the last bias of g moves no Jacobian: no gradient
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(grads, params)])

    exact = gradient("eval")
    directions = torch.randn(4, exact.numel(), dtype=F64)
    samples = torch.stack([directions @ gradient("train") for _ in range(200)])
    mean, se = samples.mean(0), samples.std(0) / math.sqrt(200)
    assert ((mean - directions @ exact).abs() < 4 * se).all(), f"{mean} vs {directions @ exact} (se {se})"
    assert (se < 0.1 * (directions @ exact).abs()).all(), "too noisy for the check to mean something"


def _saved_bytes(function):
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        function()
    return total


def test_memory_does_not_grow_with_the_number_of_terms():
    """Bytes saved for the backward pass: constant in the number of series terms with the Neumann gradient,
    growing with it when backpropagating through every vector-Jacobian product."""
    x = torch.randn(128, 16)
    saved = {}
    for neumann in (True, False):
        for n in (2, 20):
            torch.manual_seed(0)
            layer = Residual(16, (32, 32), exact_below_dim=0, n_power_series=n, neumann_gradient=neumann)
            saved[neumann, n] = _saved_bytes(lambda layer=layer: layer.inverse_and_ladj(x))
    assert saved[True, 20] == saved[True, 2]
    assert saved[False, 20] > 4 * saved[False, 2]
    assert saved[False, 2] >= saved[True, 2]


def test_estimator_regime_trains_and_reaches_every_parameter():
    torch.manual_seed(5)
    flow = nf.build("residual", 8, num_layers=2, hidden_dims=(16,), exact_below_dim=4)
    model = nf.transformed(flow)
    x = torch.randn(64, 8)
    flow.train()
    loss = -model.log_prob(x).mean()
    loss.backward()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # and the sampling direction (fixed point + adjoint backward) for a variational guide
    flow.zero_grad()
    samples = model.rsample((16,))
    (samples.square().sum() + model.log_prob(samples).sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in flow.parameters() if p.grad is not None)
    with torch.no_grad():  # no graph is kept under no_grad, in either direction
        assert not model.log_prob(x.clone()).requires_grad


# --------------------------------------------------------------------------- options and training
def test_options_are_checked():
    for kwargs, match in (({"lipschitz": 1.0}, "lipschitz"), ({"direction": "up"}, "direction"),
                          ({"geom_p": 0.0}, "geom_p"), ({"n_power_series": 0}, "n_power_series"),
                          ({"n_exact_terms": -1}, "n_exact_terms"), ({"beta": 0.0}, "beta")):
        with pytest.raises(ValueError, match=match):
            Residual(2, (8,), **kwargs)
    flow = nf.build("residual", 2, num_layers=3, actnorm=False, direction="sampling")
    assert [type(p).__name__ for p in flow.parts] == ["Residual"] * 3
    assert all(p.direction == "sampling" for p in flow.parts)
    assert "Residual(input_dim=2" in repr(flow)


def test_trains_on_two_moons():
    """200 steps of fit_density: measured held-out NLL 1.05 nats with this seed (a Gaussian fit: 2.35; the same
    blocks with LipSwish beta = 1, nearly affine: 2.17)."""
    torch.manual_seed(0)
    flow = nf.build("residual", 2, num_layers=4, hidden_dims=(32, 32))
    model = nf.transformed(flow)
    nf.infer.fit_density(model, nf.datasets.two_moons(1000, seed=0), steps=200, lr=5e-3, seed=0, progress=False,
                         validation=0.0)
    flow.eval()
    with torch.no_grad():
        held_out = -model.log_prob(nf.datasets.two_moons(2000, seed=1)).mean().item()
    assert held_out < 1.4
    samples = model.sample((500,))
    assert torch.isfinite(samples).all()
