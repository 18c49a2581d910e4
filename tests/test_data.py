"""Dataset registry: exact counts, split membership against the source files, bad input."""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import shutil
import socket
import threading
import types
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
    monkeypatch.delenv("MDLAB_DATA_URL", raising=False)
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


# ------------------------------------------------------------------ downloads from a loopback mirror

DOWNLOAD = "mawps/pal/mawpsaddsub.jsonl"  # small, not derived, and the only file mawps-addsub needs


@pytest.fixture
def mirror(data_dir, tmp_path, monkeypatch):
    """A loopback HTTP server in place of raw.githubusercontent.com, serving the data dir's files at
    /<repo>/<commit>/<path>; ``mirror.mode`` spoils the answers, ``mirror.requests`` counts them.
    Downloads go to an empty cache under tmp_path, with nothing in MDLAB_DATA_DIR."""
    files = {f"/{s['source_repo']}/{s['source_commit']}/{s['source_path']}": data_dir / rel
             for rel, s in data.SOURCES.items()}
    state = types.SimpleNamespace(mode="ok", requests=[], url="")
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5  # a client that never reads cannot hold a server thread for long

        def do_GET(self):
            state.requests.append(self.path)
            if self.path not in files or state.mode == "404":
                self.send_error(404)
                return
            body = files[self.path].read_bytes()
            if state.mode == "wrong":
                body = b"[" + body[1:]  # same length, another sha256
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.mode in ("cut", "stall"):  # half the promised bytes, then hang up (or go quiet)
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                if state.mode == "stall":
                    release.wait(5)
                self.close_connection = True
                return
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("MDLAB_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("MDLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MDLAB_DATA_URL", state.url)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # an http_proxy in the environment must not take the request
    monkeypatch.delenv("MDLAB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(data, "_TIMEOUT", 5)
    yield state
    release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_download_is_checked_and_cached(mirror, tmp_path):
    path = data.resolve(DOWNLOAD)
    assert path == tmp_path / "cache" / "data" / DOWNLOAD
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.SOURCES[DOWNLOAD]["sha256"]
    assert _files(tmp_path / "cache") == [f"data/{DOWNLOAD}"]  # no temporary file left beside it
    assert data.resolve(DOWNLOAD) == path and len(mirror.requests) == 1  # the second resolve is the cache


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("mode,phrase", [
    ("404", "HTTP 404"),
    ("wrong", "another version (sha256"),
    ("cut", "stopped after 35455 of 70911 bytes"),
    ("stall", "timed out"),
    ("down", "could not connect"),
])
def test_failed_download_is_one_clear_error_and_leaves_no_file(mirror, tmp_path, monkeypatch, mode, phrase):
    mirror.mode = mode
    url = f"http://127.0.0.1:{_dead_port()}" if mode == "down" else mirror.url
    monkeypatch.setenv("MDLAB_DATA_URL", url)
    if mode == "stall":
        monkeypatch.setattr(data, "_TIMEOUT", 0.2)
    with pytest.raises(data.DataError) as info:
        data.resolve(DOWNLOAD)
    message = str(info.value)
    assert message.startswith(f"{DOWNLOAD}: the download from {url}/reasoning-machines/pal/")
    assert phrase in message and "MDLAB_DATA_DIR" in message
    assert _files(tmp_path / "cache") == []  # neither the file nor a partial one
    # the next attempt, against a working server, succeeds
    mirror.mode = "ok"
    monkeypatch.setenv("MDLAB_DATA_URL", mirror.url)
    path = data.resolve(DOWNLOAD)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.SOURCES[DOWNLOAD]["sha256"]


def test_leftover_part_file_from_a_crashed_run_does_not_matter(mirror, tmp_path):
    leftover = tmp_path / "cache" / "data" / (DOWNLOAD + ".part")
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a file")
    path = data.resolve(DOWNLOAD)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == data.SOURCES[DOWNLOAD]["sha256"]


def test_load_through_the_download(mirror, data_dir, monkeypatch):
    problems = data.load("mawps-addsub")
    assert data.files_read()[DOWNLOAD] == data.SOURCES[DOWNLOAD]["sha256"]
    commit = data.SOURCES[DOWNLOAD]["source_commit"]
    assert mirror.requests == [f"/reasoning-machines/pal/{commit}/datasets/mawpsaddsub.jsonl"]  # one download
    monkeypatch.setenv("MDLAB_DATA_DIR", str(data_dir))
    assert problems == data.load("mawps-addsub") and len(problems) == 395


def test_data_url_replaces_github(monkeypatch):
    monkeypatch.delenv("MDLAB_DATA_URL", raising=False)
    assert data.source_url(DOWNLOAD).startswith("https://raw.githubusercontent.com/reasoning-machines/pal/")
    monkeypatch.setenv("MDLAB_DATA_URL", "https://mirror.example/mdlab/")
    path = f"reasoning-machines/pal/{data.SOURCES[DOWNLOAD]['source_commit']}/datasets/mawpsaddsub.jsonl"
    assert data.source_url(DOWNLOAD) == f"https://mirror.example/mdlab/{path}"
