"""Optional: ``torch.compile`` of a whole bijective pyro_nf flow's ``log_prob``.

Two ways to hold the flow, the same density:

* ``nf.transformed(flow)``: a ``FlowDistribution`` over the whole ``Flow``. Its ``log_prob`` asks each
  layer once for its inverse and log-det together (``inverse_and_ladj``), so a compiled call runs each
  conditioner once, as eager does (where the caches answer the rest).
* ``TransformedDistribution(base, list(flow.parts))``: torch's generic walk over the layers, calling each
  layer's inverse and then its log-determinant: two conditioner passes per layer when compiled, since the
  layers' caches are off while compiling (``torch.compiler.is_compiling()``).

``torch._dynamo.explain`` counts graphs and graph breaks; eager (the usual ``nf.transformed(flow)``) and
compiled ``log_prob`` (no gradients, a fresh tensor each call) are timed interleaved.
"""

from __future__ import annotations

import statistics
import time

import pyro.distributions as dist
import torch
from speed import _short, _timed

VARIANTS = ("whole Flow", "flow.parts")


def run(archs, dim: int, batch: int, repeats: int, device, log=print) -> list[dict]:
    import pyro_nf as nf

    rows = []
    for arch in archs:
        torch.manual_seed(0)
        flow = nf.build(arch, dim).to(device)
        eager_model = nf.transformed(flow)
        x = torch.randn(batch, dim, device=device)

        def eager(model=eager_model, x=x):
            with torch.no_grad():
                return model.log_prob(x.clone())

        for variant in VARIANTS:
            model = eager_model if variant == "whole Flow" else dist.TransformedDistribution(
                eager_model.base_dist, list(flow.parts))
            row = dict(arch=arch, dim=dim, variant=variant)
            try:
                torch._dynamo.reset()
                explanation = torch._dynamo.explain(model.log_prob)(x.clone())
                row["graphs"], row["breaks"] = explanation.graph_count, explanation.graph_break_count
                reasons = sorted({str(b.reason).splitlines()[0][:80] for b in explanation.break_reasons})
                row["reasons"] = "; ".join(reasons)
                torch._dynamo.reset()
                compiled = torch.compile(model.log_prob)
                start = time.perf_counter()
                with torch.no_grad():
                    compiled(x.clone())
                row["compile_s"] = time.perf_counter() - start

                def fast(compiled=compiled, x=x):
                    with torch.no_grad():
                        return compiled(x.clone())

                row["max_abs_diff"] = float((eager() - fast()).abs().max())
                eager_t, fast_t = [], []
                for _ in range(repeats):
                    eager_t.append(_timed(eager, 3, device))
                    fast_t.append(_timed(fast, 3, device))
                row["eager_ms"] = 1e3 * statistics.median(eager_t)
                row["compiled_ms"] = 1e3 * statistics.median(fast_t)
                row["speedup"] = statistics.median(e / f for e, f in zip(eager_t, fast_t))
            except Exception as error:  # noqa: BLE001 - reported in the table
                row["error"] = _short(error)
            rows.append(row)
            shown = f"{row['speedup']:.2f}x" if "speedup" in row else row.get("error", "")
            log(f"  compile {arch:18s} D={dim} {variant:10s}: graphs {row.get('graphs')}, "
                f"breaks {row.get('breaks')}, {shown}")
    torch._dynamo.reset()
    return rows
