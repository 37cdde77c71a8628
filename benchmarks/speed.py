"""Speed: ``log_prob``, one training step and ``sample``, every library interleaved in one run.

For each (architecture, dimension, operation) the libraries run round-robin inside each repeat (the
starting library rotates from repeat to repeat), so drift of a shared machine hits them equally. Each
repeat gives a ratio ``time(pyro_nf) / time(library)`` (above 1: pyro_nf is slower); a cell shows the
median ratio over repeats and its interquartile range.

* ``log_prob``: without gradients, on a **fresh tensor object** at every call (``x.clone()``), so no
  library's cache of its last ``(x, y)`` pair gives it a free pass.
* ``train``: ``zero_grad``, loss, ``backward``, ``Adam.step``. Density architectures: ``-log_prob`` of a
  fresh clone of the batch (scoring the *same* tensor object at every step breaks Pyro's built-ins, see
  ``same_tensor_check``). IAF and planar, which are guides: the reverse-KL step, reparameterised samples
  and their log-density (from the layers' caches) against a Gaussian target.
* ``sample``: ``n`` samples without gradients.
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from adapters import TRAIN_KIND, NotAvailable, build, unavailable

OPS = ("log_prob", "train", "sample")


def target_log_prob(x: torch.Tensor) -> torch.Tensor:
    """An unnormalised Gaussian target for the reverse-KL step: ``N(0.5, I)``."""
    return -0.5 * ((x - 0.5) ** 2).sum(-1)


def make_step(model, arch: str, op: str, x: torch.Tensor, optimizer):
    """A no-argument callable running ``op`` once on ``model``."""
    n = x.shape[0]
    if op == "log_prob":
        def fn():
            with torch.no_grad():
                return model.log_prob(x.clone())
    elif op == "sample":
        def fn():
            return model.sample(n)
    elif TRAIN_KIND[arch] == "density":
        def fn():
            optimizer.zero_grad(set_to_none=True)
            loss = -model.log_prob(x.clone()).mean()
            loss.backward()
            optimizer.step()
            return loss
    else:
        def fn():
            optimizer.zero_grad(set_to_none=True)
            z, log_q = model.sample_and_log_prob(n)
            loss = (log_q - target_log_prob(z)).mean()
            loss.backward()
            optimizer.step()
            return loss
    return fn


def _synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, calls: int, device) -> float:
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        out = fn()
    _synchronize(device)
    elapsed = (time.perf_counter() - start) / calls
    if out is not None and not bool(torch.isfinite(out).all()):
        raise FloatingPointError("non-finite output")
    return elapsed


def _short(error: Exception) -> str:
    text = f"{type(error).__name__}: {error}".splitlines()[0]
    return text[:110] + ("..." if len(text) > 110 else "")


def run_group(steps: dict, repeats: int, min_time: float, budget: float, device) -> dict:
    """Time the callables of ``steps`` (library -> fn) round-robin; returns per-library times in seconds
    (lists over repeats) or an error string."""
    calls, errors = {}, {}
    for lib, fn in steps.items():
        try:
            first = _timed(fn, 1, device)  # warm-up: lazy initialisation, allocator
            if first < 0.5:  # fast: time a second call for the calibration; slow: the warm-up will do
                first = _timed(fn, 1, device)
            calls[lib] = (max(1, min(50, math.ceil(min_time / max(first, 1e-6)))), first)
        except Exception as error:  # noqa: BLE001 - a failing library is reported, not fatal
            errors[lib] = _short(error)
    libs = [lib for lib in steps if lib in calls]
    per_repeat = sum(max(c * t, min_time) for c, t in calls.values())
    repeats = max(3, min(repeats, int(budget / max(per_repeat, 1e-9)))) if libs else 0
    times = {lib: [] for lib in libs}
    for r in range(repeats):
        order = libs[r % len(libs):] + libs[:r % len(libs)]  # rotate who goes first
        for lib in order:
            if lib in errors:
                continue
            try:
                times[lib].append(_timed(steps[lib], calls[lib][0], device))
            except Exception as error:  # noqa: BLE001
                errors[lib] = _short(error)
    out = {lib: times[lib] for lib in libs if lib not in errors}
    out.update(errors)
    return out


def summarise(times: dict) -> dict:
    """Per library: (median, q1, q3) of the per-repeat ratios ``time(pyro_nf) / time(library)`` (> 1: pyro_nf
    is slower), or the error string."""
    ref = times.get("pyro_nf")
    cells = {}
    for lib, value in times.items():
        if isinstance(value, str):
            cells[lib] = value
            continue
        if not isinstance(ref, list):
            cells[lib] = (statistics.median(value), None, None)
            continue
        ratios = [r / t for t, r in zip(value, ref)]
        q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
        cells[lib] = (statistics.median(ratios), q[0], q[2])
    return cells


def run(archs, dims, libraries, batch: int, repeats: int, min_time: float, budget: float, device,
        skip=None, log=print) -> list[dict]:
    """Every (architecture, dimension, operation) group; a list of result rows."""
    rows = []
    for arch in archs:
        for dim in dims:
            models, optimizers, build_errors = {}, {}, {}
            for lib in libraries:
                try:
                    models[lib] = build(lib, arch, dim, device=device)
                    optimizers[lib] = torch.optim.Adam(models[lib].parameters(), lr=1e-4)
                except NotAvailable as reason:
                    build_errors[lib] = ("n/a", str(reason))
                except Exception as error:  # noqa: BLE001
                    build_errors[lib] = ("error", _short(error))
            torch.manual_seed(1)
            x = torch.randn(batch, dim, device=device)
            for op in OPS:
                skipped = skip(arch, op) if skip else None
                if skipped:
                    rows.append(dict(arch=arch, dim=dim, op=op, pyro_nf_ms=None, repeats=0,
                                     cells={lib: ("skipped", skipped) for lib in libraries}))
                    log(f"  {arch:18s} D={dim:<3d} {op:8s} skipped: {skipped}")
                    continue
                steps, cells = {}, {}
                for lib in libraries:
                    if lib in build_errors:
                        cells[lib] = build_errors[lib]
                        continue
                    reason = unavailable(lib, arch, op)
                    if reason:
                        cells[lib] = ("n/a", reason)
                        continue
                    steps[lib] = make_step(models[lib], arch, op, x, optimizers[lib])
                start = time.perf_counter()
                times = run_group(steps, repeats, min_time, budget, device)
                summary = summarise(times)
                for lib, value in summary.items():
                    cells[lib] = ("error", value) if isinstance(value, str) else ("ratio", value)
                ref = times.get("pyro_nf")
                ref_ms = 1e3 * statistics.median(ref) if isinstance(ref, list) else None
                n_rep = len(ref) if isinstance(ref, list) else 0
                rows.append(dict(arch=arch, dim=dim, op=op, pyro_nf_ms=ref_ms, repeats=n_rep, cells=cells))
                shown = " ".join(f"{lib}={_cell_text(cells[lib])}" for lib in libraries if lib != "pyro_nf")
                ms = f"{ref_ms:.2f} ms" if ref_ms is not None else "-"
                log(f"  {arch:18s} D={dim:<3d} {op:8s} pyro_nf {ms:>10s}  {shown}  "
                    f"({n_rep} repeats, {time.perf_counter() - start:.1f}s)")
    return rows


def _cell_text(cell) -> str:
    kind, value = cell
    if kind == "ratio":
        return f"{value[0]:.2f}"
    return kind


def same_tensor_check(archs, libraries, dim: int = 2, steps: int = 3, device="cpu") -> dict:
    """Train ``steps`` steps scoring the *same* data tensor object each time: does each library see
    the new parameters (``ok``) or fail? Returns {(arch, lib): text}."""
    out = {}
    for arch in archs:
        if TRAIN_KIND[arch] != "density":
            continue
        for lib in libraries:
            try:
                model = build(lib, arch, dim, device=device)
            except NotAvailable as reason:
                out[(arch, lib)] = f"n/a ({reason})"
                continue
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            torch.manual_seed(2)
            x = torch.randn(256, dim, device=device)
            losses = []
            try:
                for _ in range(steps):
                    optimizer.zero_grad(set_to_none=True)
                    loss = -model.log_prob(x).mean()
                    loss.backward()
                    optimizer.step()
                    losses.append(float(loss))
                with torch.no_grad():
                    fresh = float(-model.log_prob(x.clone()).mean())
                    again = float(-model.log_prob(x).mean())
                stale = not math.isclose(fresh, again, rel_tol=1e-4, abs_tol=1e-5)
                out[(arch, lib)] = "stale value (cache)" if stale else "ok"
            except Exception as error:  # noqa: BLE001
                out[(arch, lib)] = f"fails at step {len(losses) + 1}: {_short(error)[:75]}..."
    return out
