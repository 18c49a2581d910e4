"""Teachers: cleaning, recorded sources, gold annotations, the resumable cache, and a real server.

The ``OpenAICompatible`` tests talk to ``transformers serve`` running the tiny model on
loopback (one server for the module), through ``FaultProxy``: a small asyncio HTTP proxy
on 127.0.0.1 that counts requests and can answer 429/500/401, hang, drop the connection or
send malformed JSON for the next requests before it forwards again. Counting at the proxy
is how "a rerun makes zero teacher calls" is checked. Kill-and-resume runs ``generate`` in a
real subprocess, SIGKILLs it after some records are on disk, and resumes.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
import warnings
from pathlib import Path

import pytest

from mdlab import answers, data, generation, gold, recorded, runs, teachers
from mdlab.data import Problem
from mdlab.gold import fmt_number

ROOT = Path(__file__).resolve().parent.parent


def _svamp(split: str, limit: int | None = None) -> list[Problem]:
    return data.load("svamp", split, limit=limit)


def _lines(run_dir: Path) -> list[dict]:
    """Every complete record in the run's rationales.jsonl (a line torn by a kill is left out)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return runs.JsonlStore(Path(run_dir) / teachers.RATIONALES_FILE).read()


# ------------------------------------------------------------------------------------ cleaning

def test_clean_program_strips_fences_prose_and_run_ons():
    fenced = "Here is the code:\n```python\napples = 3\nans = apples * 2\n```\nThis prints 6."
    assert answers.clean_program(fenced) == "apples = 3\nans = apples * 2"
    prose = "Sure! Let me solve it.\napples = 3\nans = apples * 2\nSo the answer is 6."
    assert answers.clean_program(prose) == "apples = 3\nans = apples * 2"
    run_on = "apples = 3\nans = apples * 2\n\n# Passage: Tom has 4 pears.\n# Question: How many?\npears = 4"
    assert answers.clean_program(run_on) == "apples = 3\nans = apples * 2"
    # a program whose own comments start with '# Question:' (Codex zero-shot) is not cut
    zero_shot = "import math\n\n# Question: How many?\ndef solver():\n    return 6\nans = solver()"
    assert answers.clean_program(zero_shot) == zero_shot
    assert answers.clean_program("   \n\n") == ""
    assert answers.clean_program("The answer is 6.") == ""
    assert not answers.has_code("") and not answers.has_code("x") and answers.has_code("ans = 6")


def test_clean_palm_cuts_run_on_and_evaluates_the_answer_expression():
    raw = ("There are 16 blocks. So 16 * 17 = 272 houses. The answer is (16 * 17) * 4.\n\n"
           "Q: There are 15 trees in the grove.\nA: ...")
    assert recorded.clean_palm(raw) == "There are 16 blocks. So 16 * 17 = 272 houses. The answer is 1088."
    assert recorded.clean_palm("So 186 / 19. The answer is (31 * 6) / 19.").endswith("The answer is 9.789474.")
    unevaluable = "So some bags + 4 bags = 8 bags. The answer is (some bags + 4 bags)."
    assert recorded.clean_palm(unevaluable) == unevaluable


def test_cache_key_covers_every_part():
    base = dict(teacher="t", prompt_hash="p", mode="cot", problem_id="chal-1", params={"temperature": 0.0},
                seed=0, sample=0)
    key = teachers.cache_key(**base)
    assert key == teachers.cache_key(**{**base, "params": dict(reversed(list(base["params"].items())))})
    for field, other in [("teacher", "u"), ("prompt_hash", "q"), ("mode", "pot"), ("problem_id", "chal-2"),
                         ("params", {"temperature": 0.7}), ("seed", 1), ("sample", 1)]:
        assert teachers.cache_key(**{**base, field: other}) != key, field


def test_specs_and_config_validation():
    assert teachers.parse_spec("openai:gpt-4o-mini@https://api.openai.com/v1") == (
        "openai", "gpt-4o-mini", "https://api.openai.com/v1")
    assert teachers.parse_spec("hf:embedded") == ("hf", "embedded", None)
    assert isinstance(teachers.from_spec("recorded:svamp-palm-cot"), teachers.Recorded)
    assert isinstance(teachers.from_spec("annotations"), teachers.Annotations)
    with pytest.raises(ValueError, match="unknown recorded source"):
        teachers.parse_spec("recorded:nope")
    with pytest.raises(ValueError, match="writes only cot"):
        teachers.TeacherConfig(pot=["recorded:svamp-palm-cot"])
    with pytest.raises(ValueError, match="temperature > 0"):
        teachers.TeacherConfig(n=4, live=["hf:tiny"])
    # recorded teachers replay their stored samples: n counts them, no temperature needed
    assert teachers.TeacherConfig(n=10, cot=["recorded:svamp-mcckd-cot"]).n == 10
    # a source of test-split rationales only: the leakage filter would drop all of them
    assert recorded.SOURCES["gsm8k-codex-pot"]["evaluation_only"]
    with pytest.raises(ValueError, match="covers only the gsm8k test split"):
        teachers.TeacherConfig(pot=["recorded:gsm8k-codex-pot"])
    assert isinstance(teachers.from_spec("recorded:gsm8k-codex-pot"), teachers.Recorded)  # still usable to evaluate
    # an empty table keeps its columns (notebook 01 selects them for a profile without live teachers)
    assert {"teacher", "mode", "status", "gold", "correct"} <= set(
        teachers.table([], data.load("svamp", "train", limit=1)).columns)


def test_mcckd_cots_get_the_students_answer_line():
    """MCC-KD's gpt-3.5 CoTs end in prose; they get "The answer is N." with the number they commit to."""
    prose = ("Points scored per round = 84/2 = 42 points\n\nTherefore, Luke scored 42 points per round in Trivia "
             "game.")
    assert recorded.with_answer_phrase(prose).endswith("\nThe answer is 42.")
    assert recorded.with_answer_phrase("So 7 - 2.5 = 4.5 apples are left").endswith("The answer is 4.5.")
    done = "5 + 4 = 9. The answer is 9."
    assert recorded.with_answer_phrase(done) == done
    assert recorded.with_answer_phrase("No numbers here.") == "No numbers here."
    with pytest.raises(ValueError, match="prices"):
        teachers.TeacherConfig(prices={"m": {"input": 1.0}})
    with pytest.raises(ValueError, match="unknown kind"):
        teachers.TeacherConfig(live=["gpt4"])


# ------------------------------------------------------------------------------------- recorded

def test_palm_rows_follow_the_svamp_split_permutation():
    """The distilling-step-by-step files are in data.py's RandomState(0) split order: row i is train[i]."""
    index = recorded.text_index("svamp", "all")
    base = "svamp/distilling_step_by_step/"
    for split, name in (("train", "svamp_train.json"), ("test", "svamp_test.json")):
        rows = data._jsonl(base + name)
        ids = [index[recorded.norm_text(r["input"])] for r in rows]
        assert all(len(i) == 1 for i in ids)
        assert [i[0] for i in ids] == [p.id for p in _svamp(split)]


def test_recorded_svamp_teachers_counts_and_raw_accuracy(tmp_path):
    """How many rationales each recorded SVAMP teacher yields on the 800/200 split, and how many are right."""
    train, test = _svamp("train"), _svamp("test")
    gold = data.by_id(train + test)
    counts = {}
    for source in ("svamp-palm-cot", "svamp-codex-pot", "svamp-codex-pot-zs", "svamp-davinci-cot", "svamp-mcckd-cot"):
        teacher = teachers.Recorded(source)
        for split, problems in (("train", train), ("test", test)):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                out = teachers.generate(teacher, problems, teacher.mode, n=10, run_dir=tmp_path / source,
                                        progress=False)
            correct = sum(answers.same(r.answer, gold[r.problem_id].answer) for r in out)
            covered = len({r.problem_id for r in out})
            counts[source, split] = (len(out), covered, correct)
            missed = len(problems) - covered
            assert (missed > 0) == any("no rationale for" in str(w.message) for w in caught)
    print("\nrecorded SVAMP teachers (rationales, problems covered, correct):")
    for key, value in counts.items():
        print(f"  {key[0]:<20} {key[1]:<5} {value}  acc {value[2] / max(1, value[0]):.3f}")
    assert counts["svamp-palm-cot", "train"][:2] == (800, 800) and counts["svamp-palm-cot", "test"][:2] == (200, 200)
    # an independent strict count (the expression after 'The answer is' evaluates to gold): 588 / 148;
    # answers.extract also reads answers the expression parser rejects ('(8 / 4) and (6 / 4)' -> 2)
    assert 585 <= counts["svamp-palm-cot", "train"][2] <= 600 and 145 <= counts["svamp-palm-cot", "test"][2] <= 160
    codex = [counts["svamp-codex-pot", s] for s in ("train", "test")]
    assert sum(c[0] for c in codex) == 999  # SVAMP.json[999] (chal-1000) has no program
    assert 840 <= sum(c[2] for c in codex) <= 851  # the source says executed == answer for 851 (sign forgiven)
    mcckd = [counts["svamp-mcckd-cot", s] for s in ("train", "test")]
    assert sum(c[1] for c in mcckd) == 700 and sum(c[0] for c in mcckd) == 7000
    assert counts["svamp-mcckd-cot", "test"][1] > 0  # its 700 train questions include problems of our test split


def test_recorded_other_sources_match_their_problems(tmp_path):
    gsm = teachers.Recorded("gsm8k-codex-pot")
    assert gsm.coverage(data.load("gsm8k", "test")) == (1318, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        asdiv = data.load("asdiv", "all")
    teacher = teachers.Recorded("asdiv-mcckd-cot")
    covered, _ = teacher.coverage(asdiv)
    assert covered >= 1422 and teacher.unmatched == 0
    with pytest.raises(ValueError, match="does not write pot"):
        teachers.generate(teacher, asdiv[:3], "pot", run_dir=tmp_path)


def test_recorded_samples_are_the_source_index_and_capped(tmp_path):
    teacher = teachers.Recorded("svamp-mcckd-cot")
    problem = next(p for p in _svamp("all") if teacher.available(p, "cot") == 10)
    out = teachers.generate(teacher, [problem], "cot", n=12, run_dir=tmp_path, progress=False)
    assert [r.sample for r in out] == list(range(10))
    assert out[3].raw.strip() == teacher.rows[problem.id][3][0].strip()  # the source's own text, kept
    assert out[3].text == recorded.with_answer_phrase(out[3].raw)  # plus the answer line the student learns


# ----------------------------------------------------------------------------------- annotations

def test_annotations_reach_the_gold_answer_on_all_of_svamp(tmp_path):
    problems = _svamp("all")
    gold = data.by_id(problems)
    with pytest.warns(UserWarning, match="no rationale for 1 of 1000 problems"):
        cot = teachers.generate(teachers.Annotations(), problems, "cot", run_dir=tmp_path, progress=False)
        pot = teachers.generate(teachers.Annotations(), problems, "pot", run_dir=tmp_path, progress=False)
    # chal-680's equation (4 - 2) + 3 = 5 contradicts its answer 1: no gold rationale for it
    assert len(cot) == len(pot) == 999 and "chal-680" not in {r.problem_id for r in cot}
    assert all(r.text.endswith(f"The answer is {fmt_number(gold[r.problem_id].answer)}.") for r in cot)
    assert all(answers.same(r.answer, gold[r.problem_id].answer) for r in cot)
    assert sum(answers.same(r.answer, gold[r.problem_id].answer) for r in pot) == 999, \
        [r for r in pot if r.status != "ok"][:3]
    first = next(r for r in pot if r.problem_id == "chal-1")
    assert first.text.splitlines()[-1].startswith("ans = ") and "dollars" in first.text


def test_annotations_of_a_zero_operand():
    problem = Problem("asdiv-x", "Tom had 3 apples. He gave 0 away. How many are left?", 3.0, "3-0=3", "asdiv", "all")
    assert gold.rationales(problem) == ("3 - 0 = 3. The answer is 3.", "apples = 3\naway = 0\nans = apples - away")
    assert gold.rationale(Problem("d", "8 cakes for 0 people?", 1.0, "8/0=1", "asdiv", "all"), "cot") is None


def test_annotations_from_gsm8k_calculator_marks(tmp_path):
    problems = data.load("gsm8k", "train", limit=300)
    cot = teachers.generate(teachers.Annotations(), problems, "cot", run_dir=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="no rationale for"):
        pot = teachers.generate(teachers.Annotations(), problems, "pot", run_dir=tmp_path, progress=False)
    gold = data.by_id(problems)
    assert len(cot) == 300 and all("<<" not in r.text for r in cot)
    assert all(answers.same(r.answer, gold[r.problem_id].answer) for r in cot)
    right = sum(answers.same(r.answer, gold[r.problem_id].answer) for r in pot)
    # a program needs every step annotated (or a last plain 'a / b = c'); the others get no PoT
    assert len(pot) >= 280 and right >= 0.97 * len(pot), (len(pot), right)
    assert "clips_in_may = 48 / 2" in pot[0].text.replace("48/2", "48 / 2") or "48/2" in pot[0].text


# ------------------------------------------------------------------------------- generate & cache

def test_generate_refuses_bad_input(tmp_path):
    teacher = teachers.Recorded("svamp-palm-cot")
    with pytest.raises(ValueError, match="no problems"):
        teachers.generate(teacher, [], "cot", run_dir=tmp_path)
    with pytest.raises(ValueError, match="mode"):
        teachers.generate(teacher, _svamp("train", 2), "words", run_dir=tmp_path)
    with pytest.raises(ValueError, match="temperature > 0"):
        teachers.generate(teachers.HFLocal("tiny"), _svamp("train", 2), "cot", n=2, run_dir=tmp_path)


def test_recorded_rerun_reads_the_cache_and_writes_nothing(tmp_path):
    problems = _svamp("train", 50)
    first = teachers.generate("recorded:svamp-codex-pot", problems, "pot", run_dir=tmp_path, progress=False)
    size = (tmp_path / teachers.RATIONALES_FILE).stat().st_size
    again = teachers.generate("recorded:svamp-codex-pot", problems, "pot", run_dir=tmp_path, progress=False)
    assert again == first and (tmp_path / teachers.RATIONALES_FILE).stat().st_size == size
    assert len({r.id for r in first}) == 50 and all(r.prompt_hash for r in first)
    assert runs.read_manifest(tmp_path)["stages"]["teachers"]["calls"]["recorded:svamp-codex-pot|pot"]["written"] == 50


def test_hflocal_tiny_samples_from_one_prefill_and_records_statuses(tmp_path):
    problems = _svamp("train", 2)
    teacher = teachers.HFLocal("tiny", batch_size=2, shots=1)  # a short prompt: seconds on a CPU
    out = teachers.generate(teacher, problems, "pot", n=3, temperature=1.0, seed=7, max_tokens=12, run_dir=tmp_path,
                            progress=False)
    assert len(out) == 6 and {r.sample for r in out} == {0, 1, 2}
    assert {r.params["request_n"] for r in out} == {3}  # three paths per prompt, one prefill
    # a seed per path, not per batch: generation.sample_seed of the problem, mode and sample
    assert [r.params["request_seed"] for r in out] == [
        generation.sample_seed(7, r.problem_id, "pot", r.sample) for r in out]
    assert len({r.params["request_seed"] for r in out}) == 6 and all(r.seed == 7 for r in out)
    assert all(r.status in teachers.STATUSES for r in out)  # a random model writes no code: still recorded
    assert all(r.tokens["completion"] <= 12 for r in out)
    cot = teachers.generate(teacher, problems[:1], "cot", max_tokens=8, run_dir=tmp_path, progress=False)
    assert cot[0].status in ("ok", "no_answer") and cot[0].teacher == "hf:tiny"


def test_the_profiles_teachers_run(tmp_path):
    """The smoke profile's teacher section end to end: two recorded teachers and a live tiny model."""
    from mdlab import config

    prof = config.load("smoke")
    problems = data.load(prof.data.dataset, prof.data.train_split, limit=prof.data.train_limit)
    out = teachers.generate_all(prof.teacher, problems, tmp_path, progress=False)
    names = {(r.teacher, r.mode) for r in out}
    assert {("recorded:svamp-palm-cot", "cot"), ("recorded:svamp-codex-pot", "pot"), ("hf:tiny", "cot"),
            ("hf:tiny", "pot")} == names
    summary = teachers.summary(teachers.load(tmp_path), problems)
    assert set(summary["teacher"]) == {t for t, _ in names} and summary["cost"].sum() == 0
    table = teachers.side_by_side(out, problems, k=2)
    assert len(table) == 2 and table.index[0] == problems[0].id  # the live teacher's problem comes first


# ----------------------------------------------------------------------------- the fault proxy

class FaultProxy:
    """An HTTP/1.1 proxy on 127.0.0.1 that counts POSTs and injects faults into the next ones.

    ``faults``: a list consumed one per POST: "429", "500", "401", "hang", "close", "malformed",
    or None (forward). ``match``: only POSTs whose body contains it get faults. ``delay``: seconds
    added before forwarding (to keep requests in flight).
    """

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.faults: list[str | None] = []
        self.delay = 0.0
        self.match: str | None = None
        self.posts = 0
        self.forwarded = 0
        self.auth_headers: set[str] = set()
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def reset(self, faults=(), delay: float = 0.0, match: str | None = None) -> None:
        with self._lock:
            self.faults, self.delay, self.match, self.posts, self.forwarded = list(faults), delay, match, 0, 0

    def _main(self) -> None:
        import httpx

        async def main():
            self._client = httpx.AsyncClient(timeout=120)
            self._server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            self._server.close()
            await self._client.aclose()

        asyncio.run(main())

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    async def _conn(self, reader, writer) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = {k.strip().lower(): v.strip() for k, v in
                           (line.split(":", 1) for line in lines[1:] if ":" in line)}
                body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
                fault = None
                if method == "POST":
                    with self._lock:
                        self.posts += 1
                        hit = self.match is None or self.match.encode() in body
                        fault = self.faults.pop(0) if self.faults and hit else None
                        self.auth_headers.add(headers.get("authorization", ""))
                if fault in ("429", "500", "401"):
                    await self._reply(writer, int(fault), json.dumps({"error": {"message": f"injected {fault}"}}))
                    continue
                if fault == "malformed":
                    await self._reply(writer, 200, '{"id": "x", "object": "chat.completion", "choices": [{"ind')
                    continue
                if fault == "close":
                    writer.transport.abort()
                    return
                if fault == "hang":
                    await asyncio.sleep(60)
                    return
                if self.delay:
                    await asyncio.sleep(self.delay)
                forward = {k: v for k, v in headers.items() if k in ("content-type", "authorization", "accept")}
                response = await self._client.request(method, self.upstream + path.removeprefix("/v1"),
                                                      content=body, headers=forward)
                with self._lock:
                    self.forwarded += method == "POST"
                await self._reply(writer, response.status_code, response.content,
                                  response.headers.get("content-type", "application/json"))
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _reply(writer, status: int, body, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else body
        writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {len(data)}\r\n"
                     "connection: keep-alive\r\n\r\n".encode() + data)
        await writer.drain()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model_path, stop_process):
    """``transformers serve`` with the tiny model on loopback, behind a FaultProxy (one for the module)."""
    port = _free_port()
    exe = Path(sys.executable).with_name("transformers")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from transformers.cli.transformers import main; main()"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"mdlab-serve-{port}.log", "w+")
    proc = subprocess.Popen(cmd + ["serve", str(tiny_model_path), "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    pytest.fail(f"transformers serve did not start: {log.read()[-3000:]}")
                time.sleep(0.2)
        started = time.perf_counter() - start
        proxy = FaultProxy(url + "/v1")
        print(f"\ntransformers serve (tiny model) ready in {started:.1f} s")
        yield {"proxy": proxy, "model": str(tiny_model_path), "direct": url + "/v1", "started": started}
        proxy.close()
    finally:
        stop_process(proc)
        log.close()
        print(f"transformers serve tests: {time.perf_counter() - start:.1f} s in all (start-up included)")


def _teacher(served, **kw) -> teachers.OpenAICompatible:
    options = dict(base_url=served["proxy"].url, concurrency=4, timeout=20,
                   name="openai:tiny")
    options.update(kw)
    return teachers.OpenAICompatible(served["model"], **options)


def test_openai_through_transformers_serve_and_rerun_makes_no_call(served, tmp_path):
    proxy = served["proxy"]
    proxy.reset()
    problems = _svamp("train", 3)
    model = served["model"]
    teacher = _teacher(served, prices={model: {"input": 1.0, "output": 2.0}})
    cot = teachers.generate(teacher, problems, "cot", max_tokens=8, run_dir=tmp_path, progress=False)
    pot = teachers.generate(teacher, problems, "pot", max_tokens=8, run_dir=tmp_path, progress=False)
    assert proxy.posts == proxy.forwarded == 6
    assert [r.problem_id for r in cot] == [p.id for p in problems] and all(r.teacher == "openai:tiny" for r in cot)
    assert all(r.status in ("ok", "no_answer") for r in cot)
    assert all(r.status in teachers.STATUSES for r in pot)
    for r in cot + pot:
        assert r.tokens["completion"] <= 8 and r.tokens["prompt"] > 100 and r.finish_reason
        assert math.isclose(r.cost, (r.tokens["prompt"] * 1.0 + r.tokens["completion"] * 2.0) / 1e6)
        assert r.prompt_hash and r.params["temperature"] == 0.0 and r.params["max_tokens"] == 8
    proxy.reset()
    again = teachers.generate(_teacher(served), problems, "cot", max_tokens=8, run_dir=tmp_path, progress=False)
    again += teachers.generate(_teacher(served), problems, "pot", max_tokens=8, run_dir=tmp_path, progress=False)
    assert proxy.posts == 0 and again == cot + pot
    assert len(_lines(tmp_path)) == 6
    # the legacy completions endpoint: a different prompt, so a different key and a fresh call
    proxy.reset()
    legacy = teachers.generate(_teacher(served, api="completions"), problems[:1], "cot", max_tokens=8,
                               run_dir=tmp_path, progress=False)
    assert proxy.posts == 1 and legacy[0].id not in {r.id for r in cot}


def test_server_without_n_gets_one_request_per_sample(served, tmp_path):
    proxy = served["proxy"]
    proxy.reset()
    teachers.OpenAICompatible._n_support.pop((served["proxy"].url, served["model"]), None)
    out = teachers.generate(_teacher(served), _svamp("train", 2), "cot", n=3, temperature=0.9, max_tokens=6,
                            run_dir=tmp_path, progress=False)
    assert len(out) == 6 and len({r.id for r in out}) == 6
    assert proxy.posts == 6  # the n=3 probe came back with one choice: it counts, then one request per sample
    assert teachers.OpenAICompatible._n_support[(served["proxy"].url, served["model"])] is False
    assert len({r.params["request_seed"] for r in out}) >= 5


def test_server_with_n_gets_one_request_per_problem(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_teachers", ROOT / "bench" / "teachers.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    proc, url = bench.start_server(latency=0.0)
    try:
        teacher = teachers.OpenAICompatible("bench-model", base_url=url, concurrency=4)
        out = teachers.generate(teacher, _svamp("train", 5), "cot", n=4, temperature=0.7, run_dir=tmp_path,
                                progress=False)
        assert len(out) == 20 and teacher.requests_sent == 5
        assert {r.params["request_n"] for r in out} == {4}
        assert sum(r.tokens["completion"] for r in out) == 5 * 80 and all(r.answer == 7 for r in out)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("faults", [["429", "429"], ["500", "500"], ["close", "close"], ["malformed"], ["hang"]],
                         ids=lambda f: "+".join(f))
def test_faults_are_retried(served, tmp_path, faults):
    proxy = served["proxy"]
    proxy.reset(faults)
    teacher = _teacher(served, concurrency=1, timeout=2.0 if "hang" in faults else 20)
    start = time.perf_counter()
    out = teachers.generate(teacher, _svamp("train", 2), "cot", max_tokens=6, run_dir=tmp_path, progress=False)
    assert len(out) == 2 and len(_lines(tmp_path)) == 2
    assert proxy.posts == 2 + len(faults) and proxy.forwarded == 2
    assert teacher.requests_sent == 2 + len(faults)
    print(f"{'+'.join(faults)}: {time.perf_counter() - start:.2f} s")


def test_persistent_failure_is_not_written_and_a_rerun_retries_only_it(served, tmp_path):
    proxy = served["proxy"]
    problems = _svamp("train", 3)
    proxy.reset(["500"] * 3, match=json.dumps(problems[1].question[:40])[1:-1])  # every try of problem 2
    teacher = _teacher(served, concurrency=2, retries=3)
    with pytest.raises(teachers.TeacherError, match=r"1 of 3 rationales failed.*run generate\(\) again"):
        teachers.generate(teacher, problems, "cot", max_tokens=6, run_dir=tmp_path, progress=False)
    assert proxy.posts == 5 and {r["problem_id"] for r in _lines(tmp_path)} == {problems[0].id, problems[2].id}
    proxy.reset()
    out = teachers.generate(teacher, problems, "cot", max_tokens=6, run_dir=tmp_path, progress=False)
    assert proxy.posts == 1 and len(out) == 3 and len(_lines(tmp_path)) == 3


def test_refused_access_stops_the_run_without_retrying(served, tmp_path):
    proxy = served["proxy"]
    proxy.reset(["401"] * 10)
    with pytest.raises(teachers.TeacherError, match="401|AuthenticationError"):
        teachers.generate(_teacher(served, concurrency=1), _svamp("train", 3), "cot", max_tokens=6,
                          run_dir=tmp_path, progress=False)
    assert proxy.posts == 1 and _lines(tmp_path) == []


def test_api_key_comes_from_the_environment_only_and_is_never_stored(served, tmp_path, monkeypatch):
    monkeypatch.delenv("MDLAB_TEST_KEY", raising=False)
    with pytest.raises(teachers.TeacherError, match="MDLAB_TEST_KEY is not set"):
        teachers.OpenAICompatible("gpt-4o-mini", base_url="https://api.example.com/v1", api_key_env="MDLAB_TEST_KEY")
    with pytest.raises(teachers.TeacherError, match="OPENAI_API_KEY"):
        monkeypatch.delenv("OPENAI_API_KEY", raising=False)
        teachers.from_spec("openai:gpt-4o-mini")
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MDLAB_TEST_KEY", secret)
    served["proxy"].reset()
    teacher = _teacher(served, api_key_env="MDLAB_TEST_KEY")
    assert secret not in repr(teacher) and secret not in json.dumps(vars(teacher), default=str)
    teachers.generate(teacher, _svamp("train", 1), "cot", max_tokens=4, run_dir=tmp_path, progress=False)
    assert f"Bearer {secret}" in served["proxy"].auth_headers  # it was sent...
    stored = "".join(p.read_text() for p in tmp_path.rglob("*") if p.is_file())
    assert secret not in stored  # ...and written nowhere


KILL_SCRIPT = """
import sys
from mdlab import data, teachers
problems = data.load("svamp", "train", limit={count})
teacher = teachers.OpenAICompatible({model!r}, base_url={url!r}, concurrency=2, name="openai:tiny")
teachers.generate(teacher, problems, "cot", max_tokens=6, run_dir={run_dir!r}, progress=False)
print("finished")
"""


def test_killed_run_resumes_with_nothing_lost_or_duplicated(served, tmp_path):
    proxy = served["proxy"]
    proxy.reset(delay=0.25)  # keep requests in flight so the kill lands mid-run
    count = 16
    script = KILL_SCRIPT.format(count=count, model=served["model"], url=proxy.url, run_dir=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.monotonic() + 120
    while len(_lines(tmp_path)) < 4:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the subprocess wrote nothing in 120 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    before = _lines(tmp_path)
    assert 4 <= len(before) < count, len(before)
    proxy.reset()
    out = teachers.generate(_teacher(served, concurrency=2), data.load("svamp", "train", limit=count), "cot",
                            max_tokens=6, run_dir=tmp_path, progress=False)
    after = _lines(tmp_path)
    ids = [r["id"] for r in after]
    assert len(out) == count and len(ids) == len(set(ids)) == count  # nothing lost, nothing twice
    assert proxy.posts == count - len(before)  # only the missing ones were asked for
    assert [r["id"] for r in after[:len(before)]] == [r["id"] for r in before]
