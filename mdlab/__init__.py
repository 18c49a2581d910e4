"""mdlab: a notebook-driven workbench for Mixed Distillation (MD).

A teacher writes Chain-of-Thought (CoT) and Program-of-Thought (PoT) rationales, bad ones
are filtered automatically and by hand, a small student learns both modes at once, and it
answers by voting over several sampled paths. One flat module per stage; see docs/design.md.

Submodules are imported on first use (``from mdlab import train``) so that importing
``mdlab`` itself stays cheap: torch and transformers load only when a stage needs them.
"""

from __future__ import annotations

import importlib
import logging
import os
import platform
import sys

__version__ = "0.1.0"

# bitsandbytes logs this when imported (by env_report, peft) on a CPU with AVX512-BF16 and no optional `kernels`
# package; its own CPU code runs instead, so the red line in every notebook says nothing to act on
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(lambda r: "kernels-community" not in r.getMessage())

if os.environ.get("MDLAB_HEADLESS"):  # set by `python -m mdlab demo` for its kernels (papermill)
    import tqdm.auto
    import tqdm.std

    class _NoBar(tqdm.std.tqdm):
        """No progress bars: a saved notebook would show a widget bar frozen at 0%, or every text update."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **{**kwargs, "disable": True})

    tqdm.auto.tqdm = _NoBar  # before transformers, datasets and mdlab's stages import it

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


def html_table(frame):
    """A DataFrame as an HTML table that needs no CSS, so it survives an untrusted notebook (which drops
    ``<style>``): text escaped, its line breaks and indentation kept, cells aligned left and top."""
    import html

    from IPython.display import HTML

    def cell(tag: str, value) -> str:
        text = html.escape(str(value)).replace("\n", "<br>").replace("  ", "&nbsp;&nbsp;")
        return f'<{tag} align="left" valign="top"><div align="left">{text}</div></{tag}>'

    frame = frame.reset_index() if any(frame.index.names) else frame
    rows = ["<tr>" + "".join(cell("th", c) for c in frame.columns) + "</tr>"]
    rows += ["<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in frame.itertuples(index=False)]
    return HTML("<table>" + "".join(rows) + "</table>")
