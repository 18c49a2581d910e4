"""The host side of ``mdlab.sandbox``: warm workers, the queue that feeds them, and the reading
of their replies into ``ExecResult``s (statuses are decided here, not in the program's process)."""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings

from .layers import _FORBIDDEN_EXIT, _STRICT, _remove_tree, _seccomp_program
from .worker import (
    _PROGRAM_CAP,
    _REPLY_HEAD,
    _REQ_HEAD,
    _SETUP_EXIT,
    _TAIL_CAP,
    _cpu_limit,
    _flavour,
    _read_frame,
)

STATUSES = ("ok", "error", "timeout", "memory", "forbidden", "no_answer")
MODES = ("strict", "degraded", "portable")
_PIPELINE = 2  # requests queued at a worker at once (only small ones: pipes hold 64 KiB)
_PIPELINE_BYTES = 16 * 1024
_LAYERS_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layers.py")
_WORKER_PY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py")


@dataclasses.dataclass
class ExecResult:
    status: str  # one of STATUSES
    answer: float | None  # the program's answer, converted to float (None unless status == "ok")
    stdout: str  # captured stdout, capped (truncation is marked in the text)
    error: str | None  # last line of the exception, or why there is no answer
    seconds: float  # wall time of the program's process (0.0 if it never ran)


_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


# Starts the zygote: layers.py and worker.py, compiled from source by compile() and run as
# __main__ (layers.py as the module _mdlab_sandbox_layers), without importing this package.
# Measured here: children of a zygote started this way copy ~235 pages each, against ~390 when the
# zygote runs its code as a script or loads it from __pycache__, and run_many is about twice as
# fast. (The memory the compiler frees stays in the heap, so that children's new objects land on
# pages they copy anyway; a script keeps its parse tree alive while it runs, bytecode leaves no
# free memory at all.)
_BOOTSTRAP = """if 1:
    import sys
    layers_path, path = sys.argv[1], sys.argv[2]
    sys.argv[:] = sys.argv[2:]
    layers = type(sys)("_mdlab_sandbox_layers")
    layers.__file__ = layers_path
    with open(layers_path, encoding="utf-8") as fh:
        exec(compile(fh.read(), layers_path, "exec"), layers.__dict__)
    sys.modules["_mdlab_sandbox_layers"] = layers
    main = sys.modules["__main__"]
    main.__file__ = path
    with open(path, encoding="utf-8") as fh:
        exec(compile(fh.read(), path, "exec"), main.__dict__)
"""


class SandboxError(RuntimeError):
    """The sandbox itself could not start (not a program's fault), or lacks a layer its mode needs."""


class SandboxWarning(UserWarning):
    """The sandbox runs with fewer layers than the strict default (degraded or portable mode)."""


class _WorkerDied(Exception):
    pass


class _Description(dict):
    """What ``describe()`` returns: the worker's report, a dict; ``str()`` is a short summary for
    notebooks (the mode, the active layers, then one line per missing layer and what it costs)."""

    def __str__(self):
        lines = [f"mdlab.sandbox: {self.get('mode')} mode; layers: {', '.join(self.get('layers', []))}"]
        lines += [f"  without {k}: {v}" for k, v in self.get("missing", {}).items()]
        return "\n".join(lines)


class _Worker:
    """Host handle on one zygote process."""

    def __init__(self, options):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, _LAYERS_PY, _WORKER_PY, "--zygote",
             json.dumps(dict(options, path=[p for p in sys.path if p and os.path.isdir(p)]))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=_ENV, cwd="/",
            start_new_session=True)
        self.info = None

    def ready(self, wait=120.0):
        if self.info is None:
            try:
                hello = _read_frame(self.proc.stdout.fileno(), time.monotonic() + wait)
                hello = json.loads(hello) if hello else None
            except (TimeoutError, OSError, ValueError):
                hello = None
            if not hello:
                self.kill()
                raise SandboxError(f"sandbox worker did not start (exit code {self.proc.poll()})")
            if "ready" not in hello:
                self.kill()
                raise SandboxError(f"sandbox worker failed to start:\n{hello.get('error')}")
            self.info = hello["ready"]
        return self.info

    def send(self, frame: bytes):
        try:
            fd = self.proc.stdin.fileno()
            while frame:
                frame = frame[os.write(fd, frame):]
        except (OSError, ValueError) as exc:
            raise _WorkerDied(repr(exc)) from None

    def receive(self, wait):
        try:
            reply = _read_frame(self.proc.stdout.fileno(), time.monotonic() + wait)
        except (OSError, ValueError, TimeoutError) as exc:
            raise _WorkerDied(repr(exc)) from None
        if reply is None:
            raise _WorkerDied("EOF")
        return reply

    def alive(self):
        return self.proc.poll() is None

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.close(wait=5.0)

    def close(self, wait=5.0):
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass
        try:
            self.proc.wait(wait)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                pass
            self.proc.wait()
        base = (self.info or {}).get("workdir_base")
        if base:  # without namespaces, the working directories live on the host
            try:
                _remove_tree(base)
            except OSError:
                pass


def _request(program: str, timeout: float, memory_mb: int) -> bytes:
    data = _REQ_HEAD.pack(timeout, memory_mb) + program.encode("utf-8")
    return len(data).to_bytes(4, "big") + data


def _text(s) -> str | None:
    """Safe to encode anywhere: lone surrogates (from a program's exception text) become U+FFFD."""
    if s is None:
        return None
    s = str(s)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def _reject_constant(name):
    raise ValueError(f"{name} is not a JSON number")


def _decide(reply: bytes, timeout: float) -> tuple[ExecResult, bool]:
    """Host side: the program's ExecResult from the zygote's raw reply, and whether the worker retires.
    The program's process may have written anything to its result pipe: nothing in it can turn a
    refusal (exit code _FORBIDDEN_EXIT), a timeout or a crash into an answer."""
    import math
    import re

    (retire, normal, code, timed_out, seconds, cpu, nout, *lens) = _REPLY_HEAD.unpack_from(reply)
    parts, off = [], _REPLY_HEAD.size
    for n in lens:
        parts.append(reply[off:off + n])
        off += n
    head, tail, err, res = parts
    after = nout - len(head)  # bytes beyond the kept head; the tail holds the last of them
    if after <= len(tail):
        raw_out = head + tail[len(tail) - after:]
    else:
        raw_out = head + f"\n... [{after - len(tail)} bytes cut] ...\n".encode() + tail
    stdout = raw_out.decode("utf-8", "replace")
    last_4k = (head + tail[len(tail) - after:] if after <= len(tail) else tail)[-_TAIL_CAP:]
    violations, result, setup_error = [], None, None
    for line in res.splitlines():
        try:
            msg = json.loads(line, parse_constant=_reject_constant)
        except ValueError:
            continue
        if not isinstance(msg, dict):
            continue
        if "violation" in msg:
            violations.append(str(msg["violation"]))
        elif "result" in msg and isinstance(msg["result"], dict):
            result = msg["result"]  # the last one: ours comes after anything the program wrote
        elif "setup_error" in msg:
            setup_error = str(msg["setup_error"])

    def out(status, answer=None, error=None):
        return ExecResult(status, answer, stdout, _text(error), seconds), bool(retire)

    if timed_out:
        return out("timeout", error=f"wall-clock timeout after {timeout:g} s")
    if normal and code == _FORBIDDEN_EXIT:
        return out("forbidden", error=f"forbidden: {violations[0] if violations else 'a refused action'}")
    if normal and code == _SETUP_EXIT and setup_error is not None:
        return out("error", error=f"sandbox setup failed: {setup_error}")
    if not normal:
        sig = code
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= _cpu_limit(timeout) - 0.5):
            return out("timeout", error=f"CPU time limit exceeded ({cpu:.1f} s)")
        if sig == signal.SIGKILL:
            return out("memory", error="killed by SIGKILL (out of memory?)")
        if sig == signal.SIGSYS:
            return out("forbidden", error="forbidden: killed by SIGSYS (a system call of another architecture)")
        hint = " (C stack overflow, e.g. deep recursion after sys.setrecursionlimit)" if sig == signal.SIGSEGV else ""
        return out("error", error=f"crashed: killed by {name}{hint}")
    if code != 0 or result is None:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        return out("error", error=f"exited with code {code} before reporting a result"
                   + (f": {last[0][:200]}" if last[0] else ""))
    status, answer, error = result.get("status"), result.get("answer"), result.get("error")
    if status not in STATUSES:
        return out("error", error="malformed result from the program's process")
    if status == "no_answer" and result.get("source") is None:
        numbers = re.findall(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", last_4k.decode("utf-8", "replace"))
        if not numbers:
            return out("no_answer", error="no `ans`, no solution()/solver(), and no number printed")
        status, answer, error = "ok", float(numbers[-1]), None
        if not math.isfinite(answer):
            return out("no_answer", error=f"the last number printed is not finite ({numbers[-1][:40]})")
    if status == "ok":
        if type(answer) not in (int, float):
            return out("error", error="malformed result from the program's process")
        if not math.isfinite(float(answer)):
            return out("no_answer", error=f"the answer is not finite ({answer})")
        return out("ok", answer=float(answer))
    return out(status, error=None if error is None else str(error)[:1000])


def _prepare(program):
    """The program as text, or an ExecResult explaining why it cannot run."""
    if isinstance(program, (bytes, bytearray, memoryview)):
        try:
            program = bytes(program).decode("utf-8")
        except UnicodeDecodeError as exc:
            return ExecResult("error", None, "", f"program is not valid UTF-8 ({exc.reason} at byte {exc.start})", 0.0)
    if not isinstance(program, str):
        return ExecResult("error", None, "", f"program must be str or bytes, not {type(program).__name__}", 0.0)
    try:
        size = len(program.encode("utf-8"))
    except UnicodeEncodeError as exc:
        return ExecResult("error", None, "", f"program is not valid UTF-8 text ({exc.reason})", 0.0)
    if size > _PROGRAM_CAP:
        return ExecResult("error", None, "", f"program too large ({size} bytes > {_PROGRAM_CAP})", 0.0)
    return program


def _default_mode() -> str:
    mode = os.environ.get("MDLAB_SANDBOX", "").strip().lower()
    if mode:
        if mode not in MODES:
            raise ValueError(f"MDLAB_SANDBOX={mode!r}: expected one of {', '.join(MODES)}")
        return mode
    return "strict" if sys.platform.startswith("linux") else "portable"


class Pool:
    """Warm workers that run programs; ``run``/``run_many`` use one shared, lazily started Pool.

    ``mode``: "strict" (Linux default), "degraded" or "portable" (default off Linux); see the
    module docstring. Workers are reused across calls and stopped at interpreter exit (or by
    ``close()``). A worker slot holds up to three zygotes, started on first need: stdlib only,
    + numpy, + numpy and sympy; a program goes to the smallest one whose preloads cover the heavy
    packages its text mentions (others still import lazily, just slower)."""

    def __init__(self, mode: str | None = None, *, _options: dict | None = None):
        self.mode = mode or _default_mode()
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        # test knobs: no_namespaces, no_landlock, no_audit_hook, no_seccomp, no_keyring (each
        # needs mode="degraded"); test_unremovable (clean-up fails after a program that wrote a
        # file of that name: the worker must retire)
        self._options = dict(_options or {}, mode=self.mode)
        if self.mode != "portable":
            bpf, why = _seccomp_program()
            if bpf is not None:
                self._options["seccomp_bpf"] = {name: prog.hex() for name, prog in bpf.items()}
            else:
                self._options["seccomp_error"] = why
        self._idle: list[dict[str, _Worker]] = []
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._pid = os.getpid()
        self._warned = False
        if self.mode == "portable":
            why = "" if sys.platform.startswith("linux") else f" ({sys.platform} is not Linux)"
            self._warn(f"mdlab.sandbox runs in portable mode{why}: each program runs in a fresh interpreter with "
                       "rlimits, the audit hook, a scrubbed environment and a temporary directory, but without "
                       "namespaces, Landlock, seccomp or a separate uid; only the audit hook stands between a "
                       "program and your files and network. sandbox.describe() lists the layers.")

    def _warn(self, text):
        if not self._warned:
            self._warned = True
            warnings.warn(text, SandboxWarning, stacklevel=4)

    def _vet(self, info):
        """Strict mode refuses a worker that lacks a layer; degraded mode warns what is lost."""
        if self.mode == "portable":
            return
        missing = {k: v for k, v in info.get("missing", {}).items() if k != "landlock" or not info["namespaces"]}
        lacking = [k for k in _STRICT if k in missing] + [k for k in missing if k not in _STRICT]
        why = "; ".join(f"{k}: {missing[k]}" for k in lacking)
        details = "; ".join(f"{k}: {info[k]}" for k in ("namespace_error", "seccomp_error", "keyring_error")
                            if info.get(k))
        if self.mode == "strict" and any(k in missing for k in _STRICT + ("separate_uid",)):
            raise SandboxError(
                "mdlab.sandbox cannot set up its strict isolation on this machine: missing " + why
                + (f" ({details})" if details else "") + ". Fix that, or run with fewer layers, knowingly: "
                "MDLAB_SANDBOX=degraded or sandbox.configure('degraded').")
        if lacking:
            self._warn(f"mdlab.sandbox runs in degraded mode without: {why}" + (f" ({details})" if details else ""))

    def _take(self, n):
        if os.getpid() != self._pid:  # a forked copy of the host: the workers belong to the parent
            self._idle, self._workers, self._lock, self._pid = [], set(), threading.Lock(), os.getpid()
        with self._lock:
            taken, self._idle = self._idle[:n], self._idle[n:]
        taken = [{f: w for f, w in slot.items() if w.alive() or self._forget(w)} for slot in taken]
        return taken + [{} for _ in range(n - len(taken))]

    def _worker(self, slot, flavour):
        w = slot.get(flavour)
        if w is None:
            w = slot[flavour] = _Worker(dict(self._options, flavour=flavour))
            with self._lock:
                self._workers.add(w)
        if w.info is None:
            try:
                self._vet(w.ready())
            except SandboxError:
                slot.pop(flavour, None)
                self._forget(w)
                raise
        return w

    def _forget(self, w):
        with self._lock:
            self._workers.discard(w)
        w.kill()
        return False

    def _replace(self, slot, flavour, line, attempts, results, exc, lock, queue, blame=True):
        """A worker died, hung or retired: the program it was running gets one retry (on a new
        worker), a second death marks it; programs queued behind it go back to the queue untouched."""
        self._forget(slot.pop(flavour))
        if not line:
            return False
        (i, _, program), rest = line[0], line[1:]
        attempts[i] = attempts.get(i, 0) + blame
        with lock:
            for j, _, p in reversed(rest):
                queue.append((j, p))
            if attempts[i] >= 2:
                results[i] = ExecResult("error", None, "", f"sandbox worker died twice running this program ({exc})",
                                        0.0)
            else:
                queue.append((i, program))
        line.clear()
        return True

    def _give_back(self, slots):
        with self._lock:
            self._idle.extend({f: w for f, w in slot.items() if w in self._workers} for slot in slots)

    def describe(self) -> dict:
        """The mode, the isolation layers the workers have on this machine ("layers"), and what each
        missing one costs ("missing")."""
        (slot,) = self._take(1)
        try:
            return _Description(self._worker(slot, "numpy").ready())
        finally:
            self._give_back([slot])

    def run(self, program, *, timeout: float = 3.0, memory_mb: int = 512) -> ExecResult:
        return self.run_many([program], timeout=timeout, memory_mb=memory_mb, workers=1)[0]

    def run_many(self, programs, *, timeout: float = 3.0, memory_mb: int = 512, workers: int | None = None,
                 progress: bool | None = None) -> list[ExecResult]:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        memory_mb = int(memory_mb)
        programs = list(programs)
        results: list[ExecResult | None] = [None] * len(programs)
        todo = []
        for i, program in enumerate(programs):
            prepared = _prepare(program)
            if isinstance(prepared, ExecResult):
                results[i] = prepared
            else:
                todo.append((i, prepared))
        if not todo:
            return results
        n = max(1, min(workers or os.cpu_count() or 1, len(todo)))
        bar = None
        if progress if progress is not None else len(programs) > 200:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(programs), initial=len(programs) - len(todo), desc="sandbox", unit="prog")
            except ImportError:
                pass
        lock = threading.Lock()
        queue = list(reversed(todo))  # a stack: pop() from the end; retried jobs are pushed back
        attempts: dict[int, int] = {}
        team = self._take(n)
        failure: list[BaseException] = []
        wait = timeout + 30.0

        def next_job():
            with lock:
                return queue.pop() if queue else None

        def serve(slot):
            # Each slot keeps up to _PIPELINE small requests queued at its worker, so that the worker
            # starts the next program without waiting for this thread to wake up.
            inflight: dict[str, list] = {}  # flavour -> [(index, frame, program), ...] in the order sent
            held = None
            while not failure:
                if held is None:
                    held = next_job()
                if held is not None:
                    i, program = held
                    flavour = _flavour(program)
                    frame = _request(program, timeout, memory_mb)
                    line = inflight.setdefault(flavour, [])
                    if not line or (len(line) < _PIPELINE and len(frame) <= _PIPELINE_BYTES
                                    and len(line[-1][1]) <= _PIPELINE_BYTES):
                        try:
                            worker = self._worker(slot, flavour)
                            worker.send(frame)
                            line.append((i, frame, program))
                            held = None
                            continue
                        except _WorkerDied as exc:
                            line.append((i, frame, program))
                            held = None
                            if not self._replace(slot, flavour, line, attempts, results, exc, lock, queue):
                                continue
                        except BaseException as exc:  # the sandbox cannot start here: not a program's fault
                            failure.append(exc)
                            return
                        continue
                else:
                    flavour = next((f for f, line in inflight.items() if line), None)
                    if flavour is None:
                        return
                line = inflight[flavour]
                try:
                    reply = slot[flavour].receive(wait)
                    result, retire = _decide(reply, timeout)
                except _WorkerDied as exc:
                    self._replace(slot, flavour, line, attempts, results, exc, lock, queue)
                    continue
                except Exception as exc:  # a reply this host cannot read: replace the worker, retry
                    self._replace(slot, flavour, line, attempts, results, exc, lock, queue)
                    continue
                i = line.pop(0)[0]
                results[i] = result
                if retire:  # it could not clean up after this program: no later program runs there
                    self._replace(slot, flavour, line, attempts, results, "retired", lock, queue, blame=False)
                if bar is not None:
                    with lock:
                        bar.update(1)

        threads = [threading.Thread(target=serve, args=(slot,), daemon=True) for slot in team]
        try:
            for t in threads:
                t.start()
            for t in threads:
                while t.is_alive():
                    t.join(0.5)
        except BaseException:  # Ctrl-C: stop the workers, which also stops their running programs
            failure.append(KeyboardInterrupt())
            for slot in team:
                for w in slot.values():
                    self._forget(w)
            raise
        finally:
            if bar is not None:
                bar.close()
        self._give_back(team)
        if failure:
            raise failure[0]
        return results

    def close(self):
        if os.getpid() != self._pid:
            return
        with self._lock:
            workers, self._workers, self._idle = list(self._workers), set(), []
        for w in workers:
            w.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


_pool: Pool | None = None


def _default_pool() -> Pool:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = Pool()
            atexit.register(_pool.close)
        return _pool


def configure(mode: str | None = None) -> None:
    """Choose the mode of the shared pool behind ``run``/``run_many``/``describe`` ("strict",
    "degraded", "portable"; None: ``$MDLAB_SANDBOX``, else the platform's default). Stops its
    current workers."""
    global _pool
    new = Pool(mode)
    with _pool_lock:
        old, _pool = _pool, new
        atexit.register(new.close)
    if old is not None:
        old.close()


def run(program, *, timeout: float = 3.0, memory_mb: int = 512) -> ExecResult:
    """Run one program in the sandbox (see the module docstring)."""
    return _default_pool().run(program, timeout=timeout, memory_mb=memory_mb)


def run_many(programs, *, timeout: float = 3.0, memory_mb: int = 512, workers: int | None = None) -> list[ExecResult]:
    """Run programs on ``workers`` warm workers (default: one per CPU); results in input order."""
    return _default_pool().run_many(programs, timeout=timeout, memory_mb=memory_mb, workers=workers)


def describe() -> dict:
    """The mode and the isolation layers in force on this machine ("layers"), and what each missing
    layer costs ("missing"), as a dict; ``print(sandbox.describe())`` shows a short summary, as
    the notebooks that run programs do."""
    return _default_pool().describe()


_pool_lock = threading.Lock()
