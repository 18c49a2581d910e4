"""MD example builder and (Q)LoRA fine-tuning (skeleton; see issue 6)."""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass
class TrainConfig:
    model: str = "embedded"  # student: "embedded", "tiny", a hub id or a local path
    mode: Literal["md", "cot", "pot"] = "md"  # md = CoT and PoT mixed; cot / pot = single-mode baselines
    seed: int = 0  # seed for data order and LoRA init

