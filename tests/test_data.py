"""Dataset registry: exact counts, split membership against the source files, bad input."""

from __future__ import annotations

import json
import math
import shutil
import warnings

import pytest

from mdlab import data


def _norm(text: str) -> str:
    return " ".join(text.replace("\n", " ").split()).rstrip(".?").lower()


@pytest.mark.parametrize("name,split,count", [
    ("svamp", "all", 1000), ("svamp", "train", 800), ("svamp", "test", 200),
    ("svamp", "train700", 700), ("svamp", "test300", 300),
    ("gsm8k", "train", 7473), ("gsm8k", "test", 1319), ("asdiv", "all", 2305),
    ("mawps-addsub", "test", 395), ("mawps-multiarith", "test", 600),
    ("mawps-singleeq", "test", 508), ("mawps-singleop", "test", 562),
])
def test_exact_counts_and_unique_ids(name, split, count):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        problems = data.load(name, split)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert all(p.dataset == name and p.split == split and p.question for p in problems)


def test_svamp_800_200_is_distilling_step_by_step_split(data_dir):
    """Same problems, same order, as svamp_train/test.json (matched by text and equation)."""
    for split in ("train", "test"):
        rows = [json.loads(line) for line in (data_dir / f"svamp/distilling_step_by_step/svamp_{split}.json").open()]
        problems = data.load("svamp", split)
        assert len(rows) == len(problems)
        for row, problem in zip(rows, problems):
            assert _norm(row["input"]) == _norm(problem.question)
            assert row["label"] == problem.equation
    train, test = ({p.id for p in data.load("svamp", s)} for s in ("train", "test"))
    assert not train & test and len(train | test) == 1000


def test_svamp_700_300_is_fine_tune_cot_indices(data_dir):
    split = json.loads((data_dir / "svamp/reasoning_teacher/split/svamp__default.json").read_text())
    every = data.load("svamp", "all")
    for name, key in (("train700", "train"), ("test300", "test")):
        assert [p.id for p in data.load("svamp", name)] == [every[i].id for i in split[key]]
    train, test = ({p.id for p in data.load("svamp", s)} for s in ("train700", "test300"))
    assert not train & test and len(train | test) == 1000


def test_svamp_ids_and_answers_match_source(data_dir):
    source = json.loads((data_dir / "svamp/SVAMP.json").read_text())
    problems = data.load("svamp", "all")
    assert [p.id for p in problems] == [r["ID"] for r in source] == [f"chal-{i}" for i in range(1, 1001)]
    assert all(p.answer == r["Answer"] for p, r in zip(problems, source))


def test_gsm8k_answers_and_ids(data_dir):
    rows = [json.loads(line) for line in (data_dir / "gsm8k/test.jsonl").open()]
    problems = data.load("gsm8k", "test")
    assert problems[0].id == "gsm8k-test-0" and problems[0].answer == 18.0
    assert all(p.answer == float(r["answer"].split("####")[1].replace(",", "")) for p, r in zip(problems, rows))
    assert sum(p.answer < 0 for p in problems) == 2  # the two negative answers survive parsing


def test_asdiv_license_warning_and_non_numeric_answers():
    with pytest.warns(UserWarning, match="CC BY-NC 4.0"):
        problems = data.load("asdiv", "all")
    assert problems[0].id == "nluds-0001" and problems[0].answer == 9.0
    words = [p for p in problems if math.isnan(p.answer)]
    # answers like "Yes" or "3:30 p.m." are kept with NaN and their text, never guessed
    assert 100 < len(words) < 200 and all(p.answer_text for p in words)
    assert data.REGISTRY["asdiv"].license.startswith("CC BY-NC 4.0")


def test_limit_and_unknown_names():
    assert [p.id for p in data.load("svamp", "test", limit=3)] == [p.id for p in data.load("svamp", "test")[:3]]
    with pytest.raises(data.DataError, match="unknown dataset 'svampp'"):
        data.load("svampp")
    with pytest.raises(data.DataError, match="no split 'dev'.*train, test"):
        data.load("gsm8k", "dev")


def _copy_tree(data_dir, tmp_path, relpath):
    target = tmp_path / relpath
    target.parent.mkdir(parents=True)
    shutil.copy(data_dir / relpath, target)
    return target


def test_sha256_mismatch_names_file_and_fix(data_dir, tmp_path, monkeypatch):
    target = _copy_tree(data_dir, tmp_path, "mawps/pal/mawpsaddsub.jsonl")
    target.write_text(target.read_text().replace("Joan", "Jane", 1))
    monkeypatch.setenv("MDLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match=r"mawpsaddsub.jsonl: sha256 .* does not match the pinned"):
        data.load("mawps-addsub")


def test_missing_file_offline_names_variable_and_url(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MDLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MDLAB_OFFLINE", "1")
    with pytest.raises(data.DataError) as info:
        data.load("mawps-singleop")
    message = str(info.value)
    assert "MDLAB_DATA_DIR" in message and "raw.githubusercontent.com/reasoning-machines/pal/" in message


def test_derived_file_cannot_be_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLAB_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MDLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(data.DataError, match="derived"):
        data.resolve("asdiv/asdiv.jsonl")


def test_cache_is_second_in_resolution_order(data_dir, tmp_path, monkeypatch):
    _copy_tree(data_dir, tmp_path / "cache" / "data", "mawps/pal/mawpssingleeq.jsonl")
    monkeypatch.setenv("MDLAB_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MDLAB_CACHE", str(tmp_path / "cache"))
    assert len(data.load("mawps-singleeq")) == 508
    assert data.resolve("mawps/pal/mawpssingleeq.jsonl").is_relative_to(tmp_path / "cache")


def _pin(monkeypatch, relpath, path):
    """Pretend ``path``'s content is the pinned version, to reach the parser behind the hash check."""
    digest = data._sha256(str(path), path.stat().st_size, path.stat().st_mtime)
    monkeypatch.setitem(data.SOURCES, relpath, {**data.SOURCES[relpath], "sha256": digest})


@pytest.mark.parametrize("content,message", [
    ('{"input": "ok", "target": 1}\n{"input": "broken"\n', r"mawpsaddsub.jsonl:2: malformed JSON line"),
    ('{"input": "no target here"}\n', r"mawpsaddsub.jsonl line 1: missing field 'target'"),
    ('{"input": "x", "target": "seven"}\n', r"line 1: field 'target' is str, expected"),
])
def test_malformed_row_is_one_clear_error(tmp_path, monkeypatch, content, message):
    relpath = "mawps/pal/mawpsaddsub.jsonl"
    bad = tmp_path / relpath
    bad.parent.mkdir(parents=True)
    bad.write_text(content)
    _pin(monkeypatch, relpath, bad)
    monkeypatch.setenv("MDLAB_DATA_DIR", str(tmp_path))
    with pytest.raises(data.DataError, match=message):
        data.load("mawps-addsub")


def test_test_ids_cover_test_splits():
    ids = data.test_ids()
    assert {p.id for p in data.load("svamp", "test")} <= ids["svamp"]
    assert len(ids["gsm8k"]) == 1319
