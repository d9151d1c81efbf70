import os
from pathlib import Path

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["PYRO_GENMODELS_NO_DOWNLOAD"] = "1"  # tests never reach for the network

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """``$PYRO_GENMODELS_DATA`` or ``../shared/data`` when it holds the MNIST files."""
    for candidate in (os.environ.get("PYRO_GENMODELS_DATA"), ROOT.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "binarized_mnist.npz").is_file():
            return Path(candidate)
    return None


@pytest.fixture(autouse=True)
def _seed():
    # the suite runs under Pyro's default settings (the library changes none on import);
    # an empty param store keeps one test's modules out of the next
    pyro.clear_param_store()
    torch.manual_seed(0)
    yield


@pytest.fixture
def digits_binary():
    from pyro_genmodels.data import load_dataset

    return load_dataset("digits", "train", "binary").fixed()
