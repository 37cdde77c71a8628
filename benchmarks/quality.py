"""Quality at equal budget: the same steps, batch, learning rate, data and seed for every library.

* Density estimation: held-out negative log-likelihood (nats per example, lower is better) on pyro_nf's
  2D toy sets and on scikit-learn's bundled digits (64-D; pixel values 0..16 dequantised with uniform
  noise, divided by 17, then standardised with the training split's overall mean and std).
* Variational inference: reverse KL(q || p) in nats (lower is better, 0 is a perfect fit) to the
  energies U1..U4 of Rezende & Mohamed (pyro_nf.targets), with log Z by quadrature, for planar and IAF
  guides trained on the reparameterised reverse-KL loss with linear annealing of the target over the
  first half of the steps (beta from 0.01 to 1).
"""

from __future__ import annotations

import math
import time

import torch
from adapters import NotAvailable, build

TOY_SETS = ("moons", "8gaussians", "checkerboard")
TARGETS = ("U1", "U2", "U3", "U4")


def toy_data(name: str, n_train: int, n_test: int, seed: int = 0):
    from pyro_nf import datasets

    data = datasets.load(name, n_train + n_test, seed=seed)
    return data[:n_train].contiguous(), data[n_train:].contiguous()


def digits_data(seed: int = 0):
    """scikit-learn's 8x8 digits (1797 images, bundled: no download), dequantised and standardised;
    an 80/20 train/test split."""
    from sklearn.datasets import load_digits

    pixels = torch.as_tensor(load_digits().data, dtype=torch.float32)
    g = torch.Generator().manual_seed(seed)
    x = (pixels + torch.rand(pixels.shape, generator=g)) / 17.0
    order = torch.randperm(len(x), generator=g)
    cut = int(0.8 * len(x))
    train, test = x[order[:cut]], x[order[cut:]]
    # one mean and std for all pixels: per-pixel scaling would blow up the pixels that are (almost) always
    # blank in the training split but not in the test split
    mean, std = train.mean(), train.std()
    return ((train - mean) / std).contiguous(), ((test - mean) / std).contiguous()


def _finite(value: float) -> bool:
    return math.isfinite(value)


def fit_density(model, train, steps: int, batch: int, lr: float, seed: int):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        index = torch.randint(len(train), (batch,), generator=g).to(train.device)
        x = train[index]  # a fresh tensor at every step
        optimizer.zero_grad(set_to_none=True)
        loss = -model.log_prob(x).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        loss.backward()
        optimizer.step()


@torch.no_grad()
def test_nll(model, test, chunk: int = 4096) -> float:
    total = sum(float(-model.log_prob(test[i:i + chunk].clone()).sum()) for i in range(0, len(test), chunk))
    return total / len(test)


def fit_reverse_kl(model, target, steps: int, batch: int, lr: float):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for step in range(steps):
        beta = min(1.0, 0.01 + 0.99 * step / max(1, steps // 2))
        optimizer.zero_grad(set_to_none=True)
        z, log_q = model.sample_and_log_prob(batch)
        loss = (log_q - beta * target.log_prob(z)).mean()
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss at step {step}")
        loss.backward()
        optimizer.step()


@torch.no_grad()
def reverse_kl(model, target, log_z: float, num_samples: int, chunk: int = 5000) -> float:
    total, done = 0.0, 0
    while done < num_samples:
        n = min(chunk, num_samples - done)
        z, log_q = model.sample_and_log_prob(n)
        total += float((log_q - target.log_prob(z)).sum())
        done += n
    return total / num_samples + log_z


def _short(error: Exception) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0][:100]


def run_density(datasets: dict, archs, libraries, steps: dict, batch: int, lr: float, seeds=(0,),
                device="cpu", log=print, per_seed: dict | None = None) -> dict:
    """``datasets``: name -> (train, test). Returns {(dataset, arch, library): (kind, value)}, the value the
    mean over ``seeds`` (each seed: its own initialisation and batches); with ``per_seed`` given, the
    per-seed values land there under the same keys."""
    out = {}
    for name, (train, test) in datasets.items():
        train, test = train.to(device), test.to(device)
        dim = train.shape[1]
        n_steps = steps["digits"] if name == "digits" else steps["toy"]
        for arch in archs:
            for lib in libraries:
                start, values = time.perf_counter(), []
                try:
                    for seed in seeds:
                        model = build(lib, arch, dim, device=device, seed=seed)
                        torch.manual_seed(seed)
                        fit_density(model, train, n_steps, batch, lr, seed)
                        values.append(test_nll(model, test))
                    value = sum(values) / len(values)
                    out[(name, arch, lib)] = ("ok", value) if _finite(value) else ("error", "non-finite NLL")
                except NotAvailable as reason:
                    out[(name, arch, lib)] = ("n/a", str(reason))
                except Exception as error:  # noqa: BLE001 - a failed fit is a result
                    out[(name, arch, lib)] = ("error", _short(error))
                if per_seed is not None and out[(name, arch, lib)][0] == "ok":
                    per_seed[(name, arch, lib)] = values
                kind, value = out[(name, arch, lib)]
                shown = f"{value:.3f}" if kind == "ok" else kind
                seeds_text = f" over {len(seeds)} seeds" if len(seeds) > 1 else ""
                log(f"  {name:12s} {arch:18s} {lib:10s} NLL {shown:>9s}{seeds_text}  "
                    f"({time.perf_counter() - start:.1f}s)")
    return out


def run_reverse_kl(targets, archs, libraries, steps: int, batch: int, lr: float, num_samples: int,
                   seed: int = 0, device="cpu", log=print) -> dict:
    """Returns {(target, arch, library): (kind, value)}."""
    from pyro_nf import targets as pyro_nf_targets

    out = {}
    for name in targets:
        target = pyro_nf_targets.load(name)
        log_z = float(target.log_normalizer())
        for arch in archs:
            for lib in libraries:
                start = time.perf_counter()
                try:
                    model = build(lib, arch, 2, device=device, seed=seed)
                    torch.manual_seed(seed)
                    fit_reverse_kl(model, target, steps, batch, lr)
                    value = reverse_kl(model, target, log_z, num_samples)
                    out[(name, arch, lib)] = ("ok", value) if _finite(value) else ("error", "non-finite KL")
                except NotAvailable as reason:
                    out[(name, arch, lib)] = ("n/a", str(reason))
                except Exception as error:  # noqa: BLE001
                    out[(name, arch, lib)] = ("error", _short(error))
                kind, value = out[(name, arch, lib)]
                shown = f"{value:.3f}" if kind == "ok" else kind
                log(f"  {name:4s} {arch:8s} {lib:10s} KL {shown:>9s}  ({time.perf_counter() - start:.1f}s)")
    return out
