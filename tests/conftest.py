"""Shared test set-up: offline, data from MDLAB_DATA_DIR, a cache of tiny models, markers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("MDLAB_DATA_DIR", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MDLAB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") and not has_cuda:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return Path(os.environ["MDLAB_DATA_DIR"])


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    """A small random Llama with the embedded tokenizer, built once and cached."""
    from mdlab import models

    return models.tiny_path()


def _stop(proc, timeout: float = 20) -> None:
    """Terminate a server started by a test, then kill it if it has not exited after ``timeout`` s."""
    import subprocess

    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def stop_process():
    """``stop_process(proc)``: the one teardown of every server the tests start (JupyterLab, transformers serve)."""
    return _stop
