"""Automatic filters, curation state, the ipywidgets curator (skeleton; see issue 5)."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class CurateConfig:
    check_answer: bool = True  # drop rationales whose answer differs from gold

