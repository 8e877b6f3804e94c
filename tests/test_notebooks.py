"""Every notebook in examples/ runs top to bottom without an error, on CPU, offline.

The kernel is the interpreter running pytest (``sys.executable``), declared in a kernelspec written to a temporary
folder, so a ``python3`` kernel registered elsewhere on the machine (another venv, a user-wide Jupyter) can never be
picked up instead. The kernel starts in a scratch directory, so what a notebook writes stays out of the repository,
and it imports ``mae`` from this checkout.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402  (after the importorskip guards)
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("*.ipynb"))
NOTEBOOK_TIMEOUT_S = 300  # whole notebook, CPU; each one is expected to take well under a minute
KERNEL = "mae-tests-python"


@pytest.fixture(scope="module")
def kernel_spec_manager(tmp_path_factory) -> KernelSpecManager:
    kernel_dir = tmp_path_factory.mktemp("kernels") / KERNEL
    kernel_dir.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"mae tests ({sys.executable})",
        "language": "python",
        # One intra-op thread, as in conftest.py: tiny CPU work stalls on thread barriers on a shared machine.
        "env": {
            "PYTHONPATH": pythonpath,
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        },
    }
    (kernel_dir / "kernel.json").write_text(json.dumps(spec))
    return KernelSpecManager(kernel_dirs=[str(kernel_dir.parent)], ensure_native_kernel=False)


def test_examples_exist():
    assert NOTEBOOKS, f"no notebook found in {EXAMPLES}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, kernel_spec_manager: KernelSpecManager, tmp_path: Path):
    nb = nbformat.read(path, as_version=4)
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=kernel_spec_manager)
    assert km.kernel_spec.argv[0] == sys.executable
    start = time.monotonic()

    def keep_within_budget(cell, cell_index):
        # Each cell may use what is left of the notebook's budget, so the whole notebook stops at the limit.
        left = NOTEBOOK_TIMEOUT_S - (time.monotonic() - start)
        if left <= 0:
            raise TimeoutError(f"{path.name} exceeded {NOTEBOOK_TIMEOUT_S} s before cell {cell_index}")
        client.timeout = int(left) + 1

    client = nbclient.NotebookClient(
        nb,
        km=km,
        timeout=NOTEBOOK_TIMEOUT_S,
        startup_timeout=120,
        allow_errors=False,
        resources={"metadata": {"path": str(tmp_path)}},  # scratch cwd: notebook files stay out of the repo
        on_cell_start=keep_within_budget,
    )
    try:
        client.execute()
    finally:
        if km.has_kernel:
            import asyncio

            asyncio.run(km.shutdown_kernel(now=True))
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert code_cells and all(c.execution_count for c in code_cells), "some code cells did not run"
    errors = [o for c in code_cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
