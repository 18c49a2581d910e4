"""Figures and the results table: PNGs are written, the paper's numbers sit beside ours."""

from __future__ import annotations

import pandas as pd
import pytest

from mdlab import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _frames():
    rows = []
    for student, base in (("md", 0.3), ("cot", 0.2), ("pot", 0.25)):
        policies = {"md": ("cot", "pot", "mixed", "pot_then_cot"), "cot": ("cot",), "pot": ("pot",)}[student]
        for policy in policies:
            for k in (1, 2, 4):
                acc = base + 0.02 * k
                rows.append({"student": student, "policy": policy, "k": k, "acc": acc, "lo": acc - 0.05,
                             "hi": acc + 0.05, "n": 40})
    curves = pd.DataFrame(rows)
    greedy = pd.DataFrame([{"student": "md", "policy": "cot", "acc": 0.25, "lo": 0.1, "hi": 0.4, "n": 40},
                           {"student": "md", "policy": "pot", "acc": 0.3, "lo": 0.15, "hi": 0.45, "n": 40},
                           {"student": "cot", "policy": "cot", "acc": 0.2, "lo": 0.1, "hi": 0.35, "n": 40}])
    return curves, greedy


def test_write_report_writes_figures_tables_and_markdown(tmp_path):
    curves, greedy = _frames()
    paths = plots.write_report(tmp_path, curves, greedy, data="SVAMP test (200-problem split), first 40",
                               student_model="SmolLM2-135M", temperature=0.7,
                               teacher="recorded PaLM CoT + Codex PoT")
    for key in ("curves_png", "greedy_png"):
        assert paths[key].read_bytes()[:8] == PNG and paths[key].stat().st_size > 5000
    assert pd.read_csv(paths["curves"]).equals(curves)
    text = paths["results"].read_text()
    for expected in ("82.0", "84.5", "85.5", "split not published", "first 40", "greedy, 1 CoT path",
                     "4 paths per mode, T=0.7", "figures/accuracy_vs_k.png", "recorded PaLM CoT"):
        assert expected in text, expected


def test_results_table_rows_state_split_and_decoding():
    curves, greedy = _frames()
    table, markdown = plots.results_table(curves, greedy, data="SVAMP test, first 40", student_model="S",
                                          temperature=0.7, top_p=0.9)
    paper = table[table["source"] == "paper"]
    assert paper["accuracy"].tolist() == ["82.0", "84.5", "85.5"]
    ours = table[table["source"] == "mdlab"]
    # md: 2 greedy + 4 policies at k=4; cot: 1 greedy + 1; pot: 1 policy
    assert len(ours) == 2 + 4 + 1 + 1 + 1
    mixed = ours[ours["decoding"].str.contains("mixed") & ours["system"].str.contains("MD")]
    assert mixed["accuracy"].iloc[0] == "38.0 [33.0, 43.0]" and "top-p 0.9" in mixed["decoding"].iloc[0]
    assert markdown.count("\n|") == len(table) + 1


def test_accuracy_vs_k_needs_curves():
    with pytest.raises(ValueError, match="no acc@k"):
        plots.accuracy_vs_k(pd.DataFrame(columns=["student", "policy", "k", "acc", "lo", "hi"]))
