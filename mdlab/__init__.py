"""mdlab: a notebook-driven workbench for Mixed Distillation (MD).

A teacher writes Chain-of-Thought (CoT) and Program-of-Thought (PoT) rationales, bad ones
are filtered automatically and by hand, a small student learns both modes at once, and it
answers by voting over several sampled paths. One flat module per stage; see design.md.

Submodules are imported on first use (``from mdlab import train``) so that importing
``mdlab`` itself stays cheap: torch and transformers load only when a stage needs them.
"""

from __future__ import annotations

import importlib
import platform
import sys

__version__ = "0.1.0"

_STAGES = ("config", "data", "answers", "sandbox", "prompts", "teachers", "curate", "models",
           "train", "evaluate", "plots", "runs")


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"mdlab.{name}")
    raise AttributeError(f"module 'mdlab' has no attribute {name!r}")


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def env_report(file=None) -> dict:
    """Print (and return) versions, device, CUDA and bitsandbytes availability."""
    report = {"python": platform.python_version(), "mdlab": __version__, "platform": platform.platform()}
    for dist in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "openai", "papermill"):
        report[dist] = _version(dist)
    try:
        import torch

        report["device"] = "cuda" if torch.cuda.is_available() else "cpu"
        report["cuda"] = torch.version.cuda if torch.cuda.is_available() else None
        if torch.cuda.is_available():
            report["gpu"] = torch.cuda.get_device_name(0)
        report["threads"] = torch.get_num_threads()
    except ImportError:
        report["device"] = "cpu (torch not installed)"
    try:
        import bitsandbytes  # noqa: F401

        report["bitsandbytes_ok"] = True
    except Exception as exc:  # bitsandbytes raises various errors on unsupported setups
        report["bitsandbytes_ok"] = f"no ({type(exc).__name__})"
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}", file=file or sys.stdout)
    return report
