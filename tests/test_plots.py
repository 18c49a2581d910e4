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


def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    box, frame = artist.get_window_extent(), fig.bbox
    return frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1


def test_one_panel_figure_keeps_its_title_and_draws_greedy_points():
    curves, greedy = _frames()
    fig = plots.accuracy_vs_k(curves[curves["policy"] == "cot"], greedy=greedy[greedy["policy"] == "cot"])
    ax = [a for a in fig.axes if a.get_visible()]
    assert len(ax) == 1 and _inside(fig, fig._suptitle)
    # two greedy CoT points (md, cot) with whiskers at the "greedy" position left of k = 1
    points = [line for line in ax[0].lines if line.get_marker() == "D"]
    assert len(points) == 2 and all(line.get_xdata()[0] < 0.5 for line in points)


def test_ensemble_shares_the_mixed_panel_and_greedy_only_students_appear():
    curves, greedy = _frames()
    ensemble = curves[(curves["student"] == "md") & (curves["policy"] == "mixed")].assign(
        student="cot+pot", policy="ensemble")
    base = pd.DataFrame([{"student": "base", "policy": "pot", "acc": 0.05, "lo": 0.0, "hi": 0.1, "n": 40}])
    fig = plots.accuracy_vs_k(pd.concat([curves, ensemble]), greedy=pd.concat([greedy, base]))
    titles = [a.get_title() for a in fig.axes if a.get_visible()]
    assert len(titles) == 4 and not any("ensemble vote" in t for t in titles)  # no panel of its own
    mixed = next(a for a in fig.axes if a.get_title().startswith("CoT + PoT pooled"))
    assert {line.get_label() for line in mixed.lines} >= {"MD (CoT + PoT)", "CoT-only + PoT-only (ensemble)"}
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "untrained base model" in legend and "greedy (one path)" in legend


def test_teacher_figure_and_comparisons_table(tmp_path):
    curves, _ = _frames()
    teacher = pd.DataFrame({"k": [1, 2, 3], "acc": [0.68, 0.69, 0.75], "lo": [0.65, 0.66, 0.72],
                            "hi": [0.7, 0.71, 0.77], "n": 564})
    path = tmp_path / "figures" / "teacher.png"
    fig = plots.teacher_self_consistency(teacher, path, curves=curves, teacher_label="gpt-3.5 (MCC-KD)")
    assert path.read_bytes()[:8] == PNG and _inside(fig, fig._suptitle)
    labels = [line.get_label() for line in fig.axes[0].lines]
    assert labels == ["gpt-3.5 (MCC-KD), 564 problems", "MD (CoT + PoT), 40 problems",
                      "CoT only, 40 problems"]
    table = plots.comparisons_markdown([
        {"a": "md/greedy_pot", "b": "pot/greedy_pot", "diff": 5.0, "lo": -2.5, "hi": 12.5, "n_problems": 40,
         "p_mcnemar": 0.25},
        {"a": "md/mixed@8", "b": "cot+pot/ensemble@8", "diff": -1.25, "lo": -5.0, "hi": 2.5,
         "n_problems": 40}])
    assert "| md/greedy_pot | pot/greedy_pot | +5.0 [-2.5, +12.5] | 0.25 | 40 |" in table
    assert "| md/mixed@8 | cot+pot/ensemble@8 | -1.2 [-5.0, +2.5] |  | 40 |" in table
