"""Profiles load, validate, and reject typos with the file and section named."""

from __future__ import annotations

from pathlib import Path

import pytest

from mdlab import config


@pytest.mark.parametrize("name", config.PROFILES)
def test_profiles_load(name):
    profile = config.load(name)
    assert profile.name == name
    assert profile.data.dataset == ("gsm8k" if "gsm8k" in name else "svamp")
    assert profile.to_dict()["data"]["train_split"] == profile.data.train_split


def test_smoke_is_small_and_cpu_uses_embedded():
    smoke, cpu = config.load("smoke"), config.load("cpu")
    assert smoke.train.model == "tiny" and smoke.data.train_limit <= 20
    assert cpu.train.model == "embedded"


def test_unknown_key_names_file_and_section(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  datset: svamp\n")
    with pytest.raises(config.ConfigError, match=r"p.yaml: unknown key\(s\) \['datset'\] in section 'data'"):
        config.load(path)


def test_bad_values_are_rejected(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("data:\n  dataset: svamp\n  test_split: dev\n")
    with pytest.raises(config.ConfigError, match="no split 'dev'"):
        config.load(path)
    path.write_text("data:\n  train_limit: 0\n")
    with pytest.raises(config.ConfigError, match="train_limit"):
        config.load(path)
    path.write_text("trian: {}\n")
    with pytest.raises(config.ConfigError, match="unknown section"):
        config.load(path)


def test_missing_profile():
    with pytest.raises(config.ConfigError, match="no profile 'nope.yaml'"):
        config.load("nope.yaml")


def test_overrides():
    assert config.load("smoke", data={"test_limit": 2}).data.test_limit == 2
    profile = config.load("cpu", {"train.model": "tiny", "evaluate.k": 2, "train.students": ["md", "pot"]})
    assert (profile.train.model, profile.evaluate.k, profile.train.students) == ("tiny", 2, ["md", "pot"])
    assert config.load("cpu").train.model == "embedded"  # the file itself is untouched
    with pytest.raises(config.ConfigError, match=r"unknown key\(s\) \['modle'\] in section 'train'"):
        config.load("cpu", {"train.modle": "tiny"})
    with pytest.raises(config.ConfigError, match="section.key"):
        config.load("cpu", {"trian.model": "tiny"})
    with pytest.raises(config.ConfigError, match=r"k >= 0"):
        config.load("cpu", {"evaluate.k": -1})


def test_cli_set_values_are_yaml(tmp_path):
    parsed = config.parse_overrides(["train.students=[md, pot]", "data.test_limit=null", "evaluate.k=4"])
    assert parsed == {"train.students": ["md", "pot"], "data.test_limit": None, "evaluate.k": 4}
    with pytest.raises(config.ConfigError, match="section.key=value"):
        config.parse_overrides(["k=4"])
    written = config.write_profile("cpu", parsed, tmp_path / "profile.yaml")
    again = config.load(written)
    assert again.name == "cpu" and again.train.students == ["md", "pot"] and again.data.test_limit is None


def test_relative_profile_path_from_the_notebooks_folder(tmp_path, monkeypatch):
    # a kernel opened by JupyterLab starts in notebooks/: "configs/cpu.yaml" must still mean the project's file
    monkeypatch.chdir(config.CONFIG_DIR.parent / "notebooks")
    assert config.profile_path("configs/cpu.yaml") == config.CONFIG_DIR / "cpu.yaml"
    assert config.load("configs/cpu.yaml").name == "cpu"
    (tmp_path / "mine.yaml").write_text((config.CONFIG_DIR / "smoke.yaml").read_text())
    monkeypatch.chdir(tmp_path)  # a file beside the kernel wins over the project's
    assert config.profile_path("mine.yaml") == Path("mine.yaml")
    with pytest.raises(config.ConfigError):
        config.load("configs/missing.yaml")


@pytest.mark.parametrize("name", config.PROFILES)
def test_profiles_state_only_what_differs_from_the_defaults(name):
    import yaml

    raw = yaml.safe_load(config.profile_path(name).read_text())
    for section, cls in config._stage_classes().items():
        defaults = cls()
        same = [key for key, value in (raw.get(section) or {}).items() if getattr(defaults, key) == value]
        assert not same, f"configs/{name}.yaml, {section}: {same} repeat the defaults"
