"""The API reference builds from the docstrings with Sphinx, warnings as errors (as CI runs it)."""

import pathlib
import subprocess
import sys

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"


def test_api_reference_builds_without_warnings(tmp_path):
    out = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-q", str(DOCS),
                          str(tmp_path / "html")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    page = (tmp_path / "html" / "api.html").read_text()
    for name in ("pyro_nf.flows.build", "pyro_nf.io.save", "pyro_nf.base.FlowTransform", "pyro_nf.infer.fit_density",
                 "pyro_nf.transforms.coupling.AffineCoupling", "pyro_nf.surjections.abs.Abs"):
        assert name in page, f"{name} is missing from the API reference"
