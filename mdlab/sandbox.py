"""Isolated, fast execution of model-written PoT programs.

``run(program)`` / ``run_many(programs)`` execute untrusted Python and return ``ExecResult``s.
Every program runs in its own short-lived process, forked from a warm worker (a "zygote": a
Python process started once that has already imported math, fractions, decimal, ... and, in the
workers for programs that mention them, numpy or numpy + sympy), so neither interpreter start-up
nor imports are paid per program. ``run_many`` keeps one worker per core busy and returns
results in input order; a worker that dies, hangs or cannot clean up after a program is
replaced. Workers are reused across calls and stopped at exit.

The answer is the variable ``ans``; else the return value of ``solution()`` (PAL) or
``solver()``; else the last number printed. ints, floats, bools, numpy scalars and size-1
arrays, sympy numbers, Fraction, Decimal, complex with zero imaginary part and numeric strings
become floats. A program that ends without error but whose answer is missing, not a number, or
not finite (nan/inf, also as the last number printed) gets status ``no_answer`` (``error`` says
why). The answer is reported as computed: no abs(), no rounding.

Statuses: ``ok``; ``error`` (an exception: ``error`` is its last traceback line, e.g.
"ZeroDivisionError: division by zero"; also syntax errors, programs that are not UTF-8 text,
crashes, ``os._exit``); ``timeout`` (wall clock, or the CPU limit); ``memory`` (MemoryError under
the address-space limit, or killed by the kernel's OOM killer); ``forbidden`` (the audit hook
refused something: a socket, a subprocess, a write outside the working directory, ctypes ...;
the program is stopped on the spot, so it cannot catch the refusal and report an answer);
``no_answer``. ``sys.exit()`` / ``sys.exit(0)`` end a program normally; other codes are errors.
Every text in a result is valid UTF-8 (lone surrogates are replaced).

Modes (``describe()`` names the mode, the active layers and what each missing one costs):

- ``strict``, the default on Linux: every layer below; if one cannot be set up (no namespaces in
  a container, no libseccomp), ``run`` raises ``SandboxError`` instead of running with less.
- ``degraded``: whatever this machine allows, with a ``SandboxWarning`` saying what is lost.
  Opt in with ``MDLAB_SANDBOX=degraded`` or ``sandbox.configure("degraded")``.
- ``portable``, automatic off Linux (macOS), with a warning: a fresh interpreter per program
  (``python -I -S``, spawned, not forked) with rlimits, the audit hook, a scrubbed environment
  and a temporary working directory. No kernel isolation; a few times slower.

Layers (Linux), kernel first:

1. Namespaces. The zygote is PID 1 of its own PID namespace (when it dies the kernel kills every
   program; programs cannot see or signal host processes), and has its own network namespace
   (no interface up: no network), IPC namespace (no host SysV IPC) and mount namespace, whose
   root is a fresh tmpfs holding read-only bind mounts of only what Python needs (/usr, /lib*,
   the interpreter's trees and site-packages, at both their real and their symlinked paths,
   /dev/null|zero|urandom, ld.so.cache). Home directories, the repository, /proc and the rest
   of /etc are not there. Each program gets a fresh tmpfs (64 MiB, 4096 inodes) as its working
   directory, unmounted afterwards: the kernel discards whatever it left. An ordinary user gets
   the same inside a user namespace.
2. A fresh session keyring for the zygote (the host's session keyring is not reachable).
3. Each child: a new session; its own uid when the zygote is root (0x50000000 + zygote pid);
   rlimits CPU, AS (``memory_mb``), FSIZE (16 MiB), NOFILE (64), NPROC, CORE (0);
   PR_SET_NO_NEW_PRIVS; a Landlock domain (Linux >= 5.13): writes only beneath the working
   directory, no execve, no TCP (>= 6.7), no abstract unix sockets or signals leaving the
   domain (>= 6.12); then a seccomp filter compiled by libseccomp (through ``pyseccomp``) that
   refuses (EPERM) fork/exec, new namespaces, keyrings, SysV IPC and POSIX queues, every socket
   family but AF_UNIX, ptrace and cross-process memory access, bpf, perf, userfaultfd, io_uring,
   mount, module and clock calls, setsid/setuid; threads stay allowed (up to 15).
   After that the child drops its handle on libc: nothing of the worker's is left reachable.
4. An audit hook (``sys.addaudithook``, installed in the child just before the program) refuses
   sockets other than AF_UNIX, subprocess / os.system / exec / fork, ctypes, tracing, killing
   other processes, links, and writing, removing, renaming or chmod-ing paths outside the working
   directory; each refusal stops the program with status ``forbidden``. It is a second layer,
   for clear statuses: pure Python can get past it (frames, already-resolved ctypes functions,
   numpy writing raw memory). Its path checks are lexical (relative paths against the current
   directory, ``..`` and ``//`` resolved); calls relative to a directory descriptor and calls on
   descriptors (``fchmod``) are left to the kernel layers.
5. Environment: the zygote clears ``os.environ``; API keys never reach a program.
6. Memory: the zygote never holds a program's text or output in Python objects. Requests and
   output go through fixed buffers (``os.readv``), are forwarded as bytes, and are zeroed once the
   child is gone, so a child forked later inherits nothing of an earlier program.
7. Output: stdout capped at 64 KiB (the head, plus the last 4 KiB); results parsed by the host.

What this does NOT protect against (measured on Linux 6.18, root, all layers on, and in the
``no_*`` fallbacks that ``tests/test_sandbox.py`` forces): kernel exploits and bugs in the
namespace, Landlock, seccomp or rlimit code; CPU side channels and timing; using the host's CPU
up to the limits (``workers`` programs at once, each up to ``timeout``) and memory up to
``workers x memory_mb`` (+64 MiB tmpfs each); reading world-readable files inside the bound
trees (system libraries, the Python installation, site-packages); a program lying about its own
answer (it can write a result message of its own and exit). The seccomp filter is a deny list
(default allow), so a harmful system call it does not name is stopped only by the other layers.
In ``degraded`` mode, check ``describe()["missing"]``: without namespaces, programs see the
host's file system (reads limited to the Python trees by Landlock, where it exists), and
without a separate uid (root whose Python lives under a 0700 home) they run as uid 0 without
capabilities, exempt from the process limit; without seccomp, a program past the audit hook
reaches whatever the remaining layers leave open (keyrings, SysV IPC, netlink). In ``portable``
mode only the audit hook stands between a program and the user's files and network.

``memory_mb`` limits the child's whole address space, including what the warm interpreter has
mapped already (about 18 MB, 100 MB with numpy, 140 MB with sympy). ``random`` is imported
(and seeded) afresh by each program that uses it; numpy's legacy global RNG starts in the same
state in every program of a worker.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time

# Every page the warm worker has written makes each fork slower (and is copied again by each
# child that touches it), so the worker imports as little as possible: it starts with -I -S and
# skips the host-only imports below. Notably, with threading imported, threading's at-fork handler
# alone costs every child ~100 page copies. The portable runner (a fresh interpreter per program)
# loads this file as a module and skips them too.
_IN_ZYGOTE = __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]
_IN_RUNNER = __name__ == "_mdlab_sandbox_runner"
if not (_IN_ZYGOTE or _IN_RUNNER):
    import atexit
    import dataclasses
    import subprocess
    import threading
    import warnings

STATUSES = ("ok", "error", "timeout", "memory", "forbidden", "no_answer")
MODES = ("strict", "degraded", "portable")

_OUTPUT_CAP = 64 * 1024  # stdout bytes kept (head)
_TAIL_CAP = 4 * 1024  # stdout tail kept for the "last number printed" rule
_STDERR_CAP = 8 * 1024  # stderr tail kept, only used to explain crashes
_RESULT_CAP = 1 << 20  # child -> zygote result messages
_PROGRAM_CAP = 4 << 20  # programs larger than this are refused before they reach a worker
_SCRATCH = 64 * 1024
_PIPELINE = 2  # requests queued at a worker at once (only small ones: pipes hold 64 KiB)
_PIPELINE_BYTES = 16 * 1024
_FSIZE = 16 << 20  # largest file a program may write
_NOFILE = 64
_THREADS = 16  # RLIMIT_NPROC where seccomp stops fork and the child has its own uid
_WORK_TMPFS = "size=64m,nr_inodes=4096,mode=0700"
_UID_BASE = 0x50000000  # children of a root zygote run as _UID_BASE + zygote pid
_FORBIDDEN_EXIT = 86  # exit code of a child stopped by the audit hook
_SETUP_EXIT = 70  # exit code of a child whose sandbox set-up failed
_REQ_HEAD = struct.Struct(">dI")  # timeout, memory_mb; then the program's UTF-8 bytes
# Reply: retire, exited normally, code or signal, timed out, seconds, cpu seconds, stdout bytes in
# total, then the lengths of the four sections that follow (stdout head, stdout tail, stderr, result).
_REPLY_HEAD = struct.Struct(">BBiBddQIIII")
# Heavy packages are preloaded only in workers for programs that mention them: a bigger zygote
# makes every fork and exit slower (numpy doubles the cost, sympy triples it again). Not random
# (nor statistics, which imports it): its at-fork reseed would cost every child ~40 page copies;
# programs that use it import it themselves, and get a fresh seed that way.
_PRELOAD = {"base": ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "datetime",
                     "re", "string", "operator")}
_PRELOAD["numpy"] = _PRELOAD["base"] + ("numpy",)
_PRELOAD["sympy"] = _PRELOAD["numpy"] + ("sympy",)
# The layers each mode may lack, and what a program gains where one is missing (for warnings).
_LOSSES = {
    "pid_namespace": "programs can see host processes and leave processes behind",
    "network_namespace": "programs share the host's network (only the audit hook and Landlock stop TCP)",
    "mount_namespace": "programs see the host's file system (reads limited by Landlock, where it exists)",
    "ipc_namespace": "programs can reach the host's SysV IPC unless seccomp stops it",
    "session_keyring": "programs can reach the host's session keyring unless seccomp stops it",
    "seccomp": "no system call filter: a program past the audit hook can use keyrings, SysV IPC, netlink "
               "sockets, new namespaces, ptrace and, as root without its own uid, fork",
    "separate_uid": "programs run as uid 0 without capabilities: exempt from the process limit, able to "
                    "signal other root processes outside a PID namespace",
    "landlock": "no Landlock: without namespaces, root-only files and host listeners are reachable",
}
_STRICT = ("pid_namespace", "network_namespace", "mount_namespace", "ipc_namespace", "session_keyring", "seccomp")


@(dataclasses.dataclass if not (_IN_ZYGOTE or _IN_RUNNER) else lambda cls: cls)
class ExecResult:
    status: str  # one of STATUSES
    answer: float | None  # the program's answer, converted to float (None unless status == "ok")
    stdout: str  # captured stdout, capped (truncation is marked in the text)
    error: str | None  # last line of the exception, or why there is no answer
    seconds: float  # wall time of the program's process (0.0 if it never ran)


# ──────────────────────────────────────────────────────────────────────────────────────────
# Zygote side: everything below up to "Host side" runs in the warm worker and its children.
# ──────────────────────────────────────────────────────────────────────────────────────────

_CLONE_NEWNS, _CLONE_NEWIPC, _CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
_CLONE_NEWPID, _CLONE_NEWNET = 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS = 1, 22, 38
_SECCOMP_MODE_FILTER = 2
_SYS = {"x86_64": {"pivot_root": 155, "keyctl": 250}, "aarch64": {"pivot_root": 41, "keyctl": 219}}
_KEYCTL_JOIN_SESSION_KEYRING = 1
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (same number on all arches)
# Landlock access rights (linux/landlock.h); which exist depends on the ABI version.
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_REMOVE_DIR, _LL_REMOVE_FILE, _LL_MAKE_CHAR, _LL_MAKE_DIR = 16, 32, 64, 128
_LL_MAKE_REG, _LL_MAKE_SOCK, _LL_MAKE_FIFO, _LL_MAKE_BLOCK, _LL_MAKE_SYM = 256, 512, 1024, 2048, 4096
_LL_REFER, _LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15


class _Kernel:
    """The few Linux calls the stdlib lacks (unshare, mount, prctl, keyctl, Landlock, seccomp),
    via ctypes. Children use it before the audit hook exists, then drop it."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        for name in ("unshare", "mount", "umount2", "prctl", "capset", "malloc_trim"):
            try:
                getattr(self.libc, name)  # resolve now, while dlsym is cheap and nothing watches
            except AttributeError:
                pass
        self.nr = _SYS.get(os.uname().machine, {})
        self.fprog = None

    def _check(self, ret, what):
        if ret < 0:
            err = self.ctypes.get_errno()
            raise OSError(err, f"{what}: {os.strerror(err)}")
        return ret

    def unshare(self, flags):
        self._check(self.libc.unshare(flags), "unshare")

    def mount(self, src, dst, fstype, flags, data=None):
        def enc(s):
            return None if s is None else os.fsencode(s)

        self._check(self.libc.mount(enc(src), enc(dst), enc(fstype), self.ctypes.c_ulong(flags), enc(data)),
                    f"mount {dst}")

    def umount2(self, target, flags):
        self._check(self.libc.umount2(os.fsencode(target), flags), f"umount {target}")

    def syscall(self, nr, *args):
        c_long = self.ctypes.c_long
        return self._check(self.libc.syscall(c_long(nr), *[c_long(a) for a in args]), f"syscall {nr}")

    def named(self, name, *args):
        if name not in self.nr:
            raise OSError(38, f"{name}: unknown architecture {os.uname().machine}")
        return self.syscall(self.nr[name], *args)

    def pivot_root(self, new, old):
        new, old = self.ctypes.c_char_p(os.fsencode(new)), self.ctypes.c_char_p(os.fsencode(old))
        self.named("pivot_root", self.ctypes.cast(new, self.ctypes.c_void_p).value,
                   self.ctypes.cast(old, self.ctypes.c_void_p).value)

    def prctl(self, option, arg, arg3=0):
        c_ulong = self.ctypes.c_ulong
        return self._check(self.libc.prctl(option, c_ulong(arg), c_ulong(arg3), c_ulong(0), c_ulong(0)), "prctl")

    def drop_capabilities(self):
        # capset(v3 header, two zeroed data structs): empties effective, permitted, inheritable.
        c_uint32 = self.ctypes.c_uint32
        header = (c_uint32 * 2)(0x20080522, 0)
        data = (c_uint32 * 6)()
        self._check(self.libc.capset(header, data), "capset")

    def landlock_abi(self):
        try:
            return self.libc.syscall(self.ctypes.c_long(_SYS_LANDLOCK[0]), None, self.ctypes.c_long(0),
                                     self.ctypes.c_long(1))  # LANDLOCK_CREATE_RULESET_VERSION
        except Exception:
            return -1

    def landlock_ruleset(self, abi, write_dir, read_roots):
        """A Landlock ruleset fd: read the given trees, write only beneath write_dir, nothing else."""
        fs_write = (_LL_WRITE_FILE | _LL_REMOVE_DIR | _LL_REMOVE_FILE | _LL_MAKE_DIR | _LL_MAKE_REG
                    | (_LL_REFER if abi >= 2 else 0) | (_LL_TRUNCATE if abi >= 3 else 0))
        fs_read = _LL_READ_FILE | _LL_READ_DIR
        handled = (fs_write | fs_read | _LL_EXECUTE | _LL_MAKE_CHAR | _LL_MAKE_SOCK | _LL_MAKE_FIFO
                   | _LL_MAKE_BLOCK | _LL_MAKE_SYM | (_LL_IOCTL_DEV if abi >= 5 else 0))
        net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, and no rule grants them
        scoped = 3 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL
        attr = struct.pack("=QQQ", handled, net, scoped)[: 24 if abi >= 6 else 16 if abi >= 4 else 8]
        buf = self.ctypes.create_string_buffer(attr, len(attr))
        ruleset = _high_fd(self.syscall(_SYS_LANDLOCK[0], self.ctypes.addressof(buf), len(attr), 0))
        rules = [(write_dir, fs_write | fs_read), ("/dev/null", _LL_WRITE_FILE | _LL_READ_FILE)]
        for path, access in rules + [(p, fs_read) for p in read_roots if os.path.exists(p)]:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            try:
                if not os.path.isdir(path):
                    access &= _LL_READ_FILE | _LL_WRITE_FILE | _LL_TRUNCATE
                rule = self.ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
                self.syscall(_SYS_LANDLOCK[1], ruleset, 1, self.ctypes.addressof(rule), 0)  # PATH_BENEATH
            finally:
                os.close(fd)
        return ruleset

    def landlock_restrict(self, ruleset):
        self.syscall(_SYS_LANDLOCK[2], ruleset, 0)

    def seccomp_prepare(self, bpf: bytes):
        """Keep libseccomp's compiled filter (struct sock_filter[]) ready for children to load."""
        ctypes = self.ctypes
        if not bpf or len(bpf) % 8:
            raise ValueError("empty or malformed seccomp program")

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self.bpf = ctypes.create_string_buffer(bpf, len(bpf))
        self.fprog = SockFprog(len(bpf) // 8, ctypes.addressof(self.bpf))
        self.fprog_addr = ctypes.addressof(self.fprog)

    def seccomp_load(self):
        self.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, self.fprog_addr)


def _high_fd(fd):
    # Children dup2 their pipes onto fds 0-3; keep long-lived fds out of that range.
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return high


def _statvfs_flags(path):
    # A bind remount inside a user namespace must keep the source's locked flags.
    f = os.statvfs(path).f_flag
    flags = 0
    for st, ms in ((1, _MS_RDONLY), (2, _MS_NOSUID), (4, _MS_NODEV), (8, _MS_NOEXEC), (1024, _MS_NOATIME),
                   (2048, _MS_NODIRATIME), (4096, _MS_RELATIME)):
        if f & st:
            flags |= ms
    return flags


def _python_trees(modules):
    """Directories a child needs to read for lazy imports, as {path as Python spells it: real path}:
    prefixes, stdlib, site-packages and preloaded packages (not other sys.path entries, such as a
    repository with secrets in it). Both spellings are bound: a virtual environment reached
    through a symlink imports lazily by the symlinked path."""
    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.__file__),
             os.path.dirname(getattr(select, "__file__", os.__file__))}
    paths.update(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))
    for name in modules:
        mod = sys.modules.get(name)
        if getattr(mod, "__file__", None):
            paths.add(os.path.dirname(os.path.dirname(mod.__file__)) if mod.__file__.endswith("__init__.py")
                      else os.path.dirname(mod.__file__))
    trees = {}
    for p in paths:
        if p and os.path.isdir(p):
            real = os.path.realpath(p)
            trees[real] = real
            trees[os.path.abspath(p)] = real
    # Drop entries whose spelling lies beneath another entry bound from the same real tree.
    keep = {}
    for p in sorted(trees):
        parent = next((q for q in keep if p.startswith(q.rstrip("/") + "/")), None)
        if parent is None or os.path.realpath(p) != os.path.join(keep[parent], os.path.relpath(p, parent)):
            keep[p] = trees[p]
    return keep


class _Stream:
    """One of a child's pipes, read with os.readv into fixed regions of the zygote's arena: the first
    ``head`` bytes, then the last ``tail`` bytes (two alternating regions). No byte of it ever
    becomes a Python object in the zygote, and ``zero()`` wipes what was read."""

    def __init__(self, arena, offset, head, tail, scratch):
        self.head = arena[offset:offset + head]
        self.tails = (arena[offset + head:offset + head + tail], arena[offset + head + tail:offset + head + 2 * tail])
        self.scratch = scratch
        self.n = self.h = self.t = self.cur = 0

    def read(self, fd):
        if self.h < len(self.head):
            k = os.readv(fd, [self.head[self.h:]])
            self.h += k
        else:
            k = os.readv(fd, [self.scratch])
            if k:
                self._keep_tail(k)
        self.n += k
        return k

    def _keep_tail(self, k):
        size = len(self.tails[0])
        old, new = self.tails[self.cur], self.tails[1 - self.cur]
        if k >= size:
            new[:size] = self.scratch[k - size:k]
            self.t = size
        else:
            keep = min(self.t, size - k)
            new[:keep] = old[self.t - keep:self.t]
            new[keep:keep + k] = self.scratch[:k]
            self.t = keep + k
        self.cur = 1 - self.cur

    def tail(self):
        return self.tails[self.cur][:self.t]

    def zero(self):
        if self.h:
            self.head[:self.h] = bytes(self.h)
        if self.n > self.h:
            for t in self.tails:
                t[:] = bytes(len(t))
        self.n = self.h = self.t = self.cur = 0


class _Zygote:
    """State of the warm worker: which layers are active and what each child needs."""

    def __init__(self, options):
        self.options = options
        self.portable = options.get("mode") == "portable"
        self.kernel = None
        self.info = {"pid": os.getpid(), "euid": os.geteuid() if hasattr(os, "geteuid") else None,
                     "python": sys.version.split()[0], "platform": sys.platform, "mode": options.get("mode"),
                     "pid_namespace": False, "namespaces": False, "network_namespace": False}
        self.child_uid = None
        self.drop_caps = False
        self.ruleset = None
        self.landlock = None  # (ABI, read roots) where Landlock is on
        self.seccomp = False
        self.base = None  # the directory holding the working directory
        self.workdir = None  # every child's working directory: same path, made afresh for each child
        self.work_mount = False  # a fresh tmpfs per program (inside our mount namespace)
        self.hook = None
        self.layers = []

    def setup(self):
        info = self.info
        info["preloaded"] = []
        info["flavour"] = self.options.get("flavour", "numpy")
        for name in () if self.portable else _PRELOAD[info["flavour"]]:
            try:
                __import__(name)
                info["preloaded"].append(name)
            except Exception:  # an optional package missing or broken: programs just import it themselves
                pass
        # Used by children; not tempfile or shutil: they pull in bz2 and lzma, and every mapped
        # library makes each fork slower.
        import io  # noqa: F401
        import mmap
        import resource  # noqa: F401
        import types  # noqa: F401
        if "sympy" in info["preloaded"]:
            import sympy

            sympy.sympify("x + 1/2")  # loads the parser, so children do not each import it
        if "numpy" in info["preloaded"]:
            import numpy

            float(numpy.float64(1) / 3)
        # One private arena for requests and output (see _Stream); untouched pages cost nothing.
        sizes = (_PROGRAM_CAP + 64, _SCRATCH, _OUTPUT_CAP + 2 * _TAIL_CAP, 2 * _STDERR_CAP, _RESULT_CAP)
        self.arena = mmap.mmap(-1, sum(sizes), flags=mmap.MAP_PRIVATE)  # fd -1: anonymous
        mv = memoryview(self.arena)
        self.req = mv[:sizes[0]]
        off = sizes[0]
        self.scratch = mv[off:off + _SCRATCH]
        off += _SCRATCH
        self.out = _Stream(mv, off, _OUTPUT_CAP, _TAIL_CAP, self.scratch)
        off += sizes[2]
        self.err = _Stream(mv, off, 0, _STDERR_CAP, self.scratch)
        off += sizes[3]
        self.res = _Stream(mv, off, _RESULT_CAP, 0, self.scratch)
        self.req_len = 0
        if self.portable:
            self._setup_portable()
        else:
            self._setup_linux()
        info["layers"] = self.layers
        missing = [k for k in _LOSSES if k not in self.layers]
        info["missing"] = {k: _LOSSES[k] for k in missing}
        self.zygote_pid = os.getpid()
        self._prepare_children()
        import gc

        gc.collect()
        gc.freeze()  # keep the collector from touching (and so copying) the zygote's pages in children
        if self.kernel is not None:
            try:
                self.kernel.libc.malloc_trim(0)  # fewer resident pages: cheaper forks (measured)
            except AttributeError:
                pass

    def _setup_linux(self):
        info, opts = self.info, self.options
        info["threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
        try:
            self.kernel = _Kernel()
        except Exception as exc:  # no ctypes / no libc: only rlimits, uid and the audit hook remain
            info["kernel_error"] = repr(exc)
        k = self.kernel
        root = os.geteuid() == 0
        trees = _python_trees(info["preloaded"])
        if k is not None and not opts.get("no_keyring"):
            try:  # a new anonymous session keyring: the host's is out of reach from here on
                k.named("keyctl", _KEYCTL_JOIN_SESSION_KEYRING, 0)
                self.layers.append("session_keyring")
            except OSError as exc:
                info["keyring_error"] = str(exc)
        if k is not None and not opts.get("no_namespaces"):
            try:
                self._unshare(root)
                self.layers += ["pid_namespace", "network_namespace", "ipc_namespace"] + ([] if root else
                                                                                          ["user_namespace"])
                info["network_namespace"] = True
                self._build_root(trees)
                info["namespaces"] = True
                self.layers.append("mount_namespace")
            except OSError as exc:
                info["namespace_error"] = str(exc)
        if info["namespaces"]:
            self.base = "/tmp"
            self.work_mount = True
        else:
            self.base = _mkdtemp("mdlab-sandbox-")
            os.chmod(self.base, 0o711)
            info["workdir_base"] = self.base
        self.workdir = self.base + "/work"
        if self.work_mount:
            os.mkdir(self.workdir, 0o755)
            # Read-only from now on: a program can write only in its own tmpfs, mounted over /tmp/work
            # (mounting needs no write access to the directory below).
            k.mount(None, "/tmp", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
        # A root child runs as its own uid only where it can still read Python (always inside our
        # mount namespace: the bind mounts hang off world-traversable tmpfs directories).
        if root and (info["namespaces"] or self._uid_can_read(sorted(set(trees.values())))):
            self.child_uid = _UID_BASE + self.info["pid"]  # the host-side pid: unique among live zygotes
            self.layers.append("separate_uid")
        else:
            self.drop_caps = k is not None
        if not root:
            self.layers.append("separate_uid")  # not root: nothing to separate from
        info["child_uid"] = self.child_uid if self.child_uid is not None else os.geteuid()
        if k is not None and not opts.get("no_landlock"):
            abi = k.landlock_abi()
            if abi >= 1:
                read_roots = ["/"] if info["namespaces"] else sorted(set(trees.values())) + [
                    p for p in ("/usr", "/lib", "/lib64", "/dev/null", "/dev/urandom") if os.path.exists(p)]
                # With a fresh tmpfs per program, its root must be in the rule (Landlock does not
                # apply a rule on the mount point to what is mounted over it, measured): one ruleset
                # per program, made in run(). Otherwise one rule on the base directory serves all.
                self.landlock = (abi, read_roots)
                if not self.work_mount:
                    self.ruleset = k.landlock_ruleset(abi, self.base, read_roots)
                self.layers.append("landlock")
                info["landlock_abi"] = abi
        info.setdefault("landlock_abi", 0)
        if k is not None and opts.get("seccomp_bpf") and not opts.get("no_seccomp"):
            try:
                k.seccomp_prepare(bytes.fromhex(opts["seccomp_bpf"]))
                self.seccomp = True
                self.layers.append("seccomp")
            except (OSError, ValueError) as exc:
                info["seccomp_error"] = str(exc)
        elif opts.get("seccomp_error"):
            info["seccomp_error"] = opts["seccomp_error"]
        # Threads are fine once seccomp stops fork; otherwise NPROC=1 is what stops fork (root is
        # exempt from it, hence the separate uid).
        # (A non-root user's processes all count against their NPROC: there, seccomp alone stops fork.)
        self.nproc = 1 if not self.seccomp else _THREADS if root else None
        info["nproc_limit_enforced"] = self.child_uid is not None or not root
        self.layers += ["rlimits"] + (["no_new_privs"] if k is not None else [])
        if k is not None:
            if self.child_uid is not None:
                os.setgroups([])
            k.prctl(_PR_SET_NO_NEW_PRIVS, 1)  # children inherit it; Landlock and seccomp need it
        info["audit_hook"] = not opts.get("no_audit_hook")
        info["seccomp"] = self.seccomp

    def _setup_portable(self):
        self.base = _mkdtemp("mdlab-sandbox-")
        os.chmod(self.base, 0o700)
        self.workdir = os.path.realpath(self.base) + "/work"
        self.info["workdir_base"] = self.base
        self.info["audit_hook"] = not self.options.get("no_audit_hook")
        self.info["landlock_abi"] = 0
        self.info["child_uid"] = self.info["euid"]
        self.info["nproc_limit_enforced"] = None
        self.layers += ["fresh_interpreter", "rlimits", "temp_workdir", "scrubbed_env"]

    def _prepare_children(self):
        """Do once here what every child would otherwise redo (each write in a child copies a page)."""
        import io

        if self.info["audit_hook"]:
            self.hook = _make_audit_hook(self.workdir, 3)
            self.layers.append("audit_hook")
        self.layers += ["scrubbed_env"] if not self.portable else []
        os.environ.clear()
        os.environ.update(HOME=self.workdir, TMPDIR=self.workdir, PATH="", LANG="C.UTF-8")
        # fds 0-2 are /dev/null here and become the child's pipes after dup2; the zygote never writes to them.
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False), encoding="utf-8")
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        for name in [m for m in sys.modules if m == "_ctypes" or m == "ctypes" or m.startswith("ctypes.")]:
            del sys.modules[name]  # so that `import ctypes` in a program goes through the audit hook
        sys.argv = ["<program>"]

    def _uid_can_read(self, trees):
        # Probe in a throwaway child: can an unprivileged uid list every Python tree?
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(_UID_BASE, _UID_BASE, _UID_BASE)
                os.setresuid(_UID_BASE, _UID_BASE, _UID_BASE)
                for t in trees:
                    os.listdir(t)
                os._exit(0)
            except BaseException:
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0

    def _unshare(self, root):
        k = self.kernel
        flags = _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID | _CLONE_NEWIPC
        if root:
            k.unshare(flags)
        else:
            uid, gid = os.geteuid(), os.getegid()
            k.unshare(_CLONE_NEWUSER | flags)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        # Become PID 1 of the new PID namespace at once (else the first program would be, and the
        # namespace would die with it): when PID 1 dies the kernel kills every program in it, so
        # children need no PR_SET_PDEATHSIG of their own, and programs cannot see host pids. The
        # process the host started stays behind, waiting, and PID 1 dies with it.
        pid = os.fork()
        if pid:
            os.closerange(3, 1 << 16)
            _, status = os.waitpid(pid, 0)
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
        k.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        self.info["pid_namespace"] = True

    def _build_root(self, trees):
        k = self.kernel
        k.mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        binds = {p: p for p in ("/usr", "/lib", "/lib64", "/lib32", "/libx32") if os.path.lexists(p)}
        for target, real in trees.items():
            if not any(target == b or target.startswith(b + "/") for b in binds):
                binds[target] = real
        files = [p for p in ("/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/zero", "/dev/urandom",
                             "/dev/random") if os.path.exists(p)]
        # Hold every source by an fd, then build the new root on a tmpfs over /tmp (in this namespace
        # only, so nothing appears on the host's file system) and bind from /proc/self/fd/N.
        sources = {}
        for target, src in list(binds.items()) + [(f, f) for f in files]:
            if not (os.path.islink(src) and target.count("/") == 1):
                sources[target] = (os.open(src, os.O_PATH | os.O_CLOEXEC), _statvfs_flags(src))
        k.mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0700")
        new = "/tmp/root"
        os.mkdir(new, 0o755)
        k.mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        # The programs' /tmp comes first: a tree that lives under the host's /tmp (a checkout and
        # its .venv cloned there, as CI may do) is then bound inside it instead of hidden by it.
        # It only holds the mount point of each program's own tmpfs.
        os.makedirs(new + "/tmp")
        k.mount("tmpfs", new + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "size=1m,nr_inodes=1024,mode=0711")
        for path in sorted(binds) + files:
            target = new + path
            if path not in sources:  # merged-/usr symlinks such as /lib -> usr/lib
                os.symlink(os.readlink(path), target)
                continue
            fd, flags = sources[path]
            os.makedirs(os.path.dirname(target), exist_ok=True)
            if path in files:
                open(target, "w").close()
                k.mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND)
                flags |= _MS_RDONLY * path.startswith("/etc")
            else:
                os.makedirs(target, exist_ok=True)
                k.mount(f"/proc/self/fd/{fd}", target, None, _MS_BIND | _MS_REC)
                flags |= _MS_RDONLY | _MS_NODEV
            k.mount(None, target, None, _MS_REMOUNT | _MS_BIND | _MS_NOSUID | flags)
            os.close(fd)
        k.mount(None, new, None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
        os.chdir(new)
        try:  # pivot_root detaches the host file system entirely; chroot is the fallback
            k.pivot_root(".", ".")
            k.umount2(".", _MNT_DETACH)
            self.info["root"] = "pivot_root"
        except OSError:
            os.chroot(".")
            self.info["root"] = "chroot"
        os.chdir("/")

    # ── one program ───────────────────────────────────────────────────────────────────────
    def read_request(self, fd):
        """Read one request into the arena; (timeout, memory_mb, program length) or None at EOF."""
        size = bytearray(4)
        if not _readv_exact(fd, memoryview(size)):
            return None
        n = int.from_bytes(size, "big")
        if not _REQ_HEAD.size <= n <= len(self.req):
            raise ValueError("malformed request")
        if not _readv_exact(fd, self.req[:n]):
            return None
        self.req_len = n
        timeout, memory_mb = _REQ_HEAD.unpack_from(self.req)
        return timeout, memory_mb, n - _REQ_HEAD.size

    def run(self, timeout, memory_mb, plen, fd_out):
        """Run the program in the arena; write the reply. Returns False when this worker must retire."""
        retire = False
        uid = self.child_uid if self.child_uid is not None else os.geteuid()
        if self.work_mount:
            self.kernel.mount("tmpfs", self.workdir, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC,
                              f"{_WORK_TMPFS},uid={uid},gid={uid}")
            if self.landlock is not None:
                self.ruleset = self.kernel.landlock_ruleset(self.landlock[0], self.workdir, self.landlock[1])
        else:
            os.mkdir(self.workdir, 0o700)
            if self.child_uid is not None:
                os.chown(self.workdir, uid, uid)
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            if self.portable:
                _spawn_runner(self, timeout, memory_mb, plen, *(w for _, w in pipes))
            _child_main(self, timeout, memory_mb, plen, *(w for _, w in pipes))
        for _, w in pipes:
            os.close(w)
        if self.work_mount and self.ruleset is not None:
            os.close(self.ruleset)
            self.ruleset = None
        try:
            meta = self._collect(pid, start, timeout, [r for r, _ in pipes])
        finally:
            for r, _ in pipes:
                os.close(r)
        try:
            self._clean()
        except Exception:
            retire = True  # what a program left cannot be removed: no later program may see it
        sections = (self.out.head[:self.out.h], self.out.tail(), self.err.tail(), self.res.head[:self.res.h])
        head = _REPLY_HEAD.pack(retire, *meta, self.out.n, *(len(s) for s in sections))
        _writev_all(fd_out, [(len(head) + sum(len(s) for s in sections)).to_bytes(4, "big"), head, *sections])
        # Wipe what this program sent or wrote before the next child is forked from this memory.
        for stream in (self.out, self.err, self.res):
            stream.zero()
        self.scratch[:] = bytes(len(self.scratch))
        self.req[:self.req_len] = bytes(self.req_len)
        return not retire

    def _clean(self):
        if self.options.get("test_unremovable") and os.path.lexists(self.workdir + "/unremovable"):
            raise OSError("test knob: a leftover that cannot be removed")
        if self.work_mount:
            self.kernel.umount2(self.workdir, _MNT_DETACH)  # the kernel drops the whole tmpfs
            return
        try:
            os.rmdir(self.workdir)  # the usual case: the program wrote nothing
        except FileNotFoundError:
            pass
        except OSError:
            _remove_in_child(self.workdir)
        if self.child_uid is None:  # a same-uid child could create files beside its workdir
            for name in os.listdir(self.base):
                _remove_in_child(os.path.join(self.base, name))
        if os.path.lexists(self.workdir) or os.listdir(self.base):
            raise OSError("working directory not removed")

    def _collect(self, pid, start, timeout, fds):
        """Read the child's pipes until it exits (or the wall clock runs out): (exited, code or
        signal, timed out, seconds, cpu seconds)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        streams = dict(zip(fds, (self.out, self.err, self.res)))
        poller = select.poll()
        for fd in fds:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        open_fds, exited, timed_out, status, usage = set(fds), False, False, None, None
        deadline = start + timeout
        try:
            while not exited:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                wait = remaining if pidfd is not None else min(remaining, 0.02)
                for fd, _ in poller.poll(wait * 1000):
                    if fd == pidfd:
                        exited = True
                    elif fd in open_fds and not self._drain(fd, streams[fd]):
                        poller.unregister(fd)
                        open_fds.discard(fd)
                if pidfd is None:
                    got, st, ru = os.wait4(pid, os.WNOHANG)
                    if got == pid:
                        exited, status, usage = True, st, ru
        finally:
            if pidfd is not None:
                os.close(pidfd)
        if not exited:
            _kill(pid)
        if status is None:
            _, status, usage = os.wait4(pid, 0)
        if timed_out:
            _kill(pid)  # its process group, in case it is still around
        for fd in list(open_fds):  # all it wrote is in the pipes now; a leftover holder gets no wait
            self._drain(fd, streams[fd])
        seconds = time.monotonic() - start
        normal = os.WIFEXITED(status)
        code = os.WEXITSTATUS(status) if normal else os.WTERMSIG(status) if os.WIFSIGNALED(status) else -1
        return normal, code, timed_out, seconds, usage.ru_utime + usage.ru_stime

    @staticmethod
    def _drain(fd, stream):
        """Read what is there; False at end of file."""
        while True:
            try:
                if not stream.read(fd):
                    return False
            except BlockingIOError:
                return True


def _readv_exact(fd, view):
    got = 0
    while got < len(view):
        k = os.readv(fd, [view[got:]])
        if not k:
            return False
        got += k
    return True


def _writev_all(fd, parts):
    parts = [memoryview(p).cast("B") for p in parts if len(p)]
    while parts:
        k = os.writev(fd, parts)
        while parts and k >= len(parts[0]):
            k -= len(parts[0])
            parts.pop(0)
        if parts and k:
            parts[0] = parts[0][k:]


def _kill(pid):
    for kill in (os.killpg, os.kill):  # killpg reaches anything it started, kill covers a failed setsid
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _cpu_limit(timeout):
    return int(timeout) + 2  # soft CPU limit: above the wall clock, which normally acts first


def _mkdtemp(prefix):
    base = os.environ.get("TMPDIR") or "/tmp"
    while True:
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            pass


def _remove_tree(path):
    """Remove a tree by file descriptor: any depth, any name length, chmod 000 directories, no
    recursion in Python and no path longer than one name; raises OSError if something stays."""
    import stat

    parent, name = os.path.split(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    top = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        # Walk down one directory at a time; go back up through "..". Each level is emptied of
        # files, then its first subdirectory is entered; an empty directory is removed from its parent.
        os.chmod(name, 0o700, dir_fd=top, follow_symlinks=True)
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
        depth = 1
        while depth:
            sub = None
            with os.scandir(fd) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=False):
                        sub = sub or e.name
                    else:
                        os.unlink(e.name, dir_fd=fd)
            if sub is not None:
                os.chmod(sub, 0o700, dir_fd=fd)
                child = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                os.close(fd)
                fd, depth = child, depth + 1
                continue
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd, depth = up, depth - 1
            # The directory just left is empty now: remove every empty subdirectory here.
            with os.scandir(fd) as entries:
                names = [e.name for e in entries if e.is_dir(follow_symlinks=False)] if depth else []
            for n in names:
                try:
                    os.rmdir(n, dir_fd=fd)
                except OSError:
                    pass
        os.close(fd)
        os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)


def _remove_in_child(path):
    """Remove what a program left in a throwaway child process, so that the names it chose never
    enter the zygote's memory (which later children inherit)."""
    pid = os.fork()
    if pid == 0:
        try:
            _remove_tree(path)
            os._exit(0)
        except BaseException:
            os._exit(1)
    os.waitpid(pid, 0)


# Events refused by the audit hook (names: https://docs.python.org/3/library/audit_events.html).
_DENY_EVENTS = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                          "os.startfile", "subprocess.Popen", "pty.spawn", "os.symlink", "os.link", "os.killpg",
                          "sys.remote_exec", "gc.get_referrers", "gc.get_referents", "gc.get_objects",
                          "_posixsubprocess.fork_exec", "os.chroot", "sys.settrace", "sys.setprofile",
                          "sys._current_exceptions"})
_DENY_PREFIXES = ("socket.", "ctypes.", "urllib.", "http.client.", "ftplib.", "smtplib.", "imaplib.", "poplib.",
                  "nntplib.", "telnetlib.", "webbrowser.", "_winapi.", "winreg.", "msvcrt.")
_DENY_IMPORTS = frozenset({"ctypes", "_ctypes", "cffi", "_cffi_backend"})
# Events whose path arguments must all lie inside the working directory.
_PATH_EVENTS = frozenset({"os.remove", "os.rmdir", "os.rename", "os.mkdir", "os.chmod", "os.lchmod", "os.chown",
                          "os.truncate", "os.utime", "os.chflags", "os.lchflags", "os.setxattr", "os.removexattr",
                          "os.mkfifo", "os.mknod", "shutil.rmtree", "shutil.move", "shutil.copyfile",
                          "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.chown",
                          "shutil.make_archive", "shutil.unpack_archive"})
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_NONE_TYPE = type(None)


def _make_audit_hook(workdir, res_fd):
    # Everything the hook uses is bound as a default argument or a closure: a program can rebind
    # module globals and builtins, but not these. The hook's own functions are protected against
    # __code__/__defaults__ changes; other functions are not (namedtuple sets __defaults__).
    protected = []

    def norm(path, _getcwd=os.getcwd, _fspath=os.fspath, _isinstance=isinstance, _str=str, _bytes=bytes, _type=type):
        """The absolute, lexically normalised path ('..', '.', '//' resolved), or None."""
        if _type(path) not in (_str, _bytes):
            try:
                path = _fspath(path)
            except BaseException:
                return None
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not _isinstance(path, _str):
            return None
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        parts = []
        for seg in path.split("/"):
            if seg == "..":
                if parts:
                    parts.pop()
            elif seg and seg != ".":
                parts.append(seg)
        return "/" + "/".join(parts)

    def inside(path, _norm=norm, _wd=workdir, _wds=workdir + "/"):
        p = _norm(path)
        return p is not None and (p == _wd or p.startswith(_wds) or p == "/dev/null")

    def hook(event, args, _inside=inside, _norm=norm, _deny=_DENY_EVENTS, _prefixes=_DENY_PREFIXES,
             _imports=_DENY_IMPORTS, _paths=_PATH_EVENTS, _wflags=_WRITE_FLAGS, _fd=res_fd, _write=os.write,
             _exit=os._exit, _getpid=os.getpid, _isinstance=isinstance, _str=str, _int=int, _bytes=bytes,
             _len=len, _enc=str.encode, _repr=repr, _plain=(int, _NONE_TYPE, tuple, list, dict), _type=type,
             _mine=protected, _code=_FORBIDDEN_EXIT):
        refuse = False
        if event in _deny:
            refuse = True
        elif event.startswith(_prefixes):
            # AF_UNIX socket objects only (asyncio's self-pipe); no connect, bind or name lookups
            refuse = not (event == "socket.__new__" and _len(args) > 1 and args[1] == 1)
        elif event == "open":
            path, mode, flags = (args + (None, None, None))[:3]
            writing = ((_isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode))
                       or (_isinstance(flags, _int) and flags & _wflags))
            if _isinstance(path, _int):
                refuse = False  # an fd the program already holds
            elif writing:
                refuse = not _inside(path)
            else:
                p = _norm(path)
                refuse = p is not None and p.startswith("/proc/") and not p.startswith(
                    ("/proc/self/", "/proc/thread-self/"))
        elif event == "import":
            refuse = _isinstance(args[0], _str) and args[0].split(".")[0] in _imports
        elif event in _paths:
            for a in args:  # every path argument (ints are fds, modes, flags)
                if not _isinstance(a, _plain) and not _inside(a):
                    refuse = True
        elif event == "os.kill" or event == "signal.pthread_kill":
            refuse = event == "os.kill" and args[0] != _getpid()
        elif event == "object.__setattr__" or event == "object.__delattr__":
            refuse = _len(args) > 1 and args[1] in ("__code__", "__defaults__", "__kwdefaults__", "__closure__") \
                and any(args[0] is f for f in _mine)
        if refuse:
            what = event
            if args and _type(args[0]) in (_str, _bytes):
                what = event + " " + _repr(args[0])[:160]
            # JSON by hand: only ASCII without quotes or backslashes gets through.
            what = _enc(what, "ascii", "backslashreplace").decode().replace("\\", "/").replace('"', "'")
            try:
                _write(_fd, _enc('\n{"violation": "' + what + '"}\n'))
            finally:
                _exit(_code)  # stopped on the spot: the program cannot catch this and carry on

    protected += [hook, inside, norm]
    return hook


def _child_main(z, timeout, memory_mb, plen, out_w, err_w, res_w):
    """Runs in the forked child; never returns. Kept short: every page it writes gets copied."""
    exit_ = os._exit
    try:
        import resource

        os.setsid()
        k = z.kernel
        if not z.info["pid_namespace"] and k is not None:
            k.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.getppid() != z.zygote_pid:  # the zygote died between fork and prctl
                exit_(1)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, 3)
        os.chdir(z.workdir)
        if z.child_uid is not None:
            u = z.child_uid
            os.setresgid(u, u, u)  # supplementary groups were dropped in the zygote
            os.setresuid(u, u, u)  # leaving uid 0 also empties the capability sets
        elif z.drop_caps:
            k.drop_capabilities()
        program = bytes(z.req[_REQ_HEAD.size:_REQ_HEAD.size + plen]).decode("utf-8")
        cpu = _cpu_limit(timeout)
        setrlimit = resource.setrlimit
        setrlimit(resource.RLIMIT_CORE, (0, 0))
        setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        setrlimit(resource.RLIMIT_FSIZE, (_FSIZE, _FSIZE))
        if z.nproc is not None:
            setrlimit(resource.RLIMIT_NPROC, (z.nproc, z.nproc))
        if z.ruleset is not None:
            k.landlock_restrict(z.ruleset)
        os.closerange(4, 1 << 16)  # the zygote's channel to the host, the other pipes, the ruleset
        if z.seccomp:
            k.seccomp_load()
        # Drop the worker's ctypes handles: nothing reachable from the program resolves libc.
        z.kernel = k = None
        if z.hook is not None:
            sys.addaudithook(z.hook)
        z.hook = None
        setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, _NOFILE))
        main = type(sys)("__main__")
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    except BaseException as exc:  # a broken layer must not run the program half-protected
        msg = json.dumps({"setup_error": repr(exc)[:500]}).encode() + b"\n"
        for fd in (res_w, 3):
            try:
                os.write(fd, msg)
                break
            except BaseException:
                pass
        exit_(_SETUP_EXIT)
    _finish_child(_execute(program, main.__dict__))


def _finish_child(result):
    payload = _encode_result(result)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    try:
        os.write(3, payload)
    finally:
        os._exit(0)


# Portable mode: the supervisor (the zygote) forks and at once execs a fresh interpreter that
# loads this file as a module (from __pycache__) and runs one program.
_RUNNER_BOOT = """if 1:
    import sys, importlib.util
    spec = importlib.util.spec_from_file_location("_mdlab_sandbox_runner", sys.argv[1])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._runner_main(sys.argv[2])
"""


def _spawn_runner(z, timeout, memory_mb, plen, out_w, err_w, res_w):
    """Portable mode, in the forked child: exec a fresh interpreter for the program (never returns)."""
    try:
        os.setsid()
        prog_r, prog_w = os.pipe()
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        os.dup2(res_w, 3)
        os.dup2(prog_r, 0)
        # The program goes through a pipe the runner reads first. A small one fits in the pipe
        # (16 KiB on macOS) and is written before the exec; a large one by a short-lived helper.
        if plen <= 8192:
            _writev_all(prog_w, [z.req[_REQ_HEAD.size:_REQ_HEAD.size + plen]])
        elif os.fork() == 0:
            _writev_all(prog_w, [z.req[_REQ_HEAD.size:_REQ_HEAD.size + plen]])
            os._exit(0)
        os.close(prog_w)
        os.closerange(4, 1 << 16)
        os.chdir(z.workdir)
        opts = json.dumps({"timeout": timeout, "memory_mb": memory_mb, "workdir": z.workdir,
                           "path": z.options.get("path", []), "hook": z.info["audit_hook"]})
        env = {"HOME": z.workdir, "TMPDIR": z.workdir, "PATH": "", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
               "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", _RUNNER_BOOT, os.path.abspath(__file__), opts],
                  env)
    except BaseException as exc:
        try:
            os.write(res_w, json.dumps({"setup_error": repr(exc)[:500]}).encode() + b"\n")
        finally:
            os._exit(_SETUP_EXIT)


def _runner_main(opts_json):
    """Portable mode: one program in this fresh interpreter, under rlimits and the audit hook."""
    opts = json.loads(opts_json)
    exit_ = os._exit
    try:
        import io
        import resource

        sys.path[:] = opts["path"]
        chunks = []
        while True:
            chunk = os.read(0, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
        program = b"".join(chunks).decode("utf-8")
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        cpu = _cpu_limit(opts["timeout"])
        limits = [(resource.RLIMIT_CORE, 0), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_FSIZE, _FSIZE),
                  (resource.RLIMIT_NOFILE, _NOFILE), (resource.RLIMIT_NPROC, 1),
                  (resource.RLIMIT_AS, opts["memory_mb"] << 20)]
        for what, value in limits:
            try:  # macOS does not take every limit (RLIMIT_AS); each one that holds, holds
                setrlimit_hard = value + 1 if what == resource.RLIMIT_CPU else value
                resource.setrlimit(what, (value, setrlimit_hard))
            except (ValueError, OSError):
                pass
        os.closerange(4, 1 << 16)
        for name in _PRELOAD[_flavour(program)]:  # before the hook: numpy imports ctypes
            try:
                __import__(name)
            except Exception:
                pass
        for name in [m for m in sys.modules if m == "_ctypes" or m == "ctypes" or m.startswith("ctypes.")]:
            del sys.modules[name]  # so that `import ctypes` in a program goes through the audit hook
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), encoding="utf-8", errors="backslashreplace")
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), encoding="utf-8",
                                      errors="backslashreplace", line_buffering=True)
        sys.argv = ["<program>"]
        main = type(sys)("__main__")
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        if opts["hook"]:
            sys.addaudithook(_make_audit_hook(os.path.realpath(opts["workdir"]), 3))
    except BaseException as exc:
        os.write(3, json.dumps({"setup_error": repr(exc)[:500]}).encode() + b"\n")
        exit_(_SETUP_EXIT)
    _finish_child(_execute(program, main.__dict__))


def _encode_result(result):
    try:
        return ("\n" + json.dumps({"result": result}) + "\n").encode()
    except BaseException:
        return b'\n{"result": {"status": "error", "error": "could not encode the result"}}\n'


def _last_line(exc):
    """What traceback.format_exception_only's last line says, without importing traceback."""
    try:
        cls = type(exc)
        name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
        text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else str(exc)
        return (f"{name}: {text}" if text else name)[:1000]
    except BaseException:
        return type(exc).__name__


def _execute(program, ns):
    """Child side: run the program and find its answer. Returns a JSON-able dict."""
    try:
        try:
            code = compile(program, "<program>", "exec")
            exec(code, ns)
        except SystemExit as exc:
            if exc.code not in (None, 0):
                return {"status": "error", "error": f"SystemExit: {exc.code}"[:1000]}
        for source in ("ans", "solution", "solver"):
            value = ns.get(source)
            if value is None:
                continue
            if source != "ans":
                if not callable(value):
                    continue
                value = value()
                if value is None:
                    continue
            answer, why = _to_float(value)
            if answer is None:
                return {"status": "no_answer", "source": source, "error": f"`{source}` {why}"}
            return {"status": "ok", "answer": answer, "source": source}
        return {"status": "no_answer", "source": None}
    except MemoryError as exc:
        return {"status": "memory", "error": _last_line(exc)}
    except SystemExit as exc:  # sys.exit() inside solution()
        if exc.code in (None, 0):
            return {"status": "no_answer", "source": None}
        return {"status": "error", "error": f"SystemExit: {exc.code}"[:1000]}
    except BaseException as exc:
        return {"status": "error", "error": _last_line(exc)}


def _to_float(value):
    """(float, None) for numeric values of the usual kinds, else (None, why)."""
    import math

    try:
        if isinstance(value, str):
            text = value.strip().replace(",", "")
            try:
                x = float(text)
            except ValueError:
                return None, f"is a non-numeric string {value[:40]!r}"
        elif isinstance(value, complex):
            if value.imag != 0:
                return None, f"is complex ({value!r})"
            x = value.real
        elif isinstance(value, (list, tuple, dict, set, frozenset, bytes, bytearray)):
            return None, f"is a {type(value).__name__}, not a number"
        else:
            if getattr(value, "size", 1) == 1 and getattr(value, "ndim", 0) > 0 and hasattr(value, "item"):
                value = value.item()  # a size-1 numpy array
            if isinstance(value, complex) or type(value).__name__ in ("complex64", "complex128"):
                if value.imag != 0:
                    return None, f"is complex ({value!r})"
                value = value.real
            x = float(value)
    except OverflowError:
        return None, "is too large for a float"
    except (TypeError, ValueError) as exc:
        return None, f"is not a number ({type(value).__name__}: {str(exc)[:80]})"
    if not math.isfinite(x):
        return None, f"is not finite ({x})"
    return x, None


def _read_frame(fd, deadline=None):
    header = _read_exact(fd, 4, deadline)
    if header is None:
        return None
    return _read_exact(fd, struct.unpack(">I", header)[0], deadline)


def _read_exact(fd, n, deadline=None):
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def _frame(obj) -> bytes:
    data = json.dumps(obj).encode()
    return struct.pack(">I", len(data)) + data


def _write_frame(fd, obj):
    _writev_all(fd, [_frame(obj)])


def _zygote_main(options):
    if options.get("path"):  # -S skipped site.py (2 MB of heap): take the host's path instead
        sys.path[:] = options["path"]
    # Keep the host channel off fds 0-3 (children's stdio and result pipe) and away from stray prints.
    fd_in, fd_out = _high_fd(os.dup(0)), _high_fd(os.dup(1))
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    z = _Zygote(options)
    try:
        z.setup()
    except BaseException:
        import traceback

        _write_frame(fd_out, {"error": traceback.format_exc()[-4000:]})
        return
    _write_frame(fd_out, {"ready": z.info})
    while True:
        try:
            request = z.read_request(fd_in)
            if request is None:  # host closed the channel (or died): leave, the kernel tears down the namespaces
                return
            if not z.run(*request, fd_out):
                return  # retire: the host replaces this worker
        except BaseException:  # a zygote bug or a broken pipe: end this worker; the host starts another
            return


# ──────────────────────────────────────────────────────────────────────────────────────────
# Host side
# ──────────────────────────────────────────────────────────────────────────────────────────

_ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


# Starts the zygote: this file, compiled from source by compile() and run as __main__. Measured
# here: children of a zygote started this way copy ~235 pages each, against ~390 when the zygote
# runs this file as a script or loads it from __pycache__, and run_many is about twice as fast.
# (The memory the compiler frees stays in the heap, so that children's new objects land on
# pages they copy anyway; a script keeps its parse tree alive while it runs, bytecode leaves
# no free memory at all.)
_BOOTSTRAP = """if 1:
    import sys
    path = sys.argv[1]
    sys.argv[:] = sys.argv[1:]
    main = sys.modules["__main__"]
    main.__file__ = path
    with open(path, encoding="utf-8") as fh:
        exec(compile(fh.read(), path, "exec"), main.__dict__)
"""


class SandboxError(RuntimeError):
    """The sandbox itself could not start (not a program's fault), or lacks a layer its mode needs."""


if not (_IN_ZYGOTE or _IN_RUNNER):
    class SandboxWarning(UserWarning):
        """The sandbox runs with fewer layers than the strict default (degraded or portable mode)."""


class _WorkerDied(Exception):
    pass


_SECCOMP_CACHE: list = []


def _seccomp_program():
    """The children's seccomp filter, compiled to BPF by libseccomp (through pyseccomp) once per host
    process: (bpf bytes, None) or (None, why). Compiled here rather than in the zygote, which must
    not import ctypes.util (it starts subprocess and threading: slower forks) nor run ldconfig
    inside its namespace; the zygote's children load it with one prctl each."""
    if _SECCOMP_CACHE:
        return _SECCOMP_CACHE[0]
    try:
        import errno

        import pyseccomp as sc
    except Exception as exc:  # not installed, or libseccomp.so.2 missing
        result = (None, f"pyseccomp/libseccomp not available ({exc!r}); pip install pyseccomp, apt-get install libseccomp2")
        _SECCOMP_CACHE.append(result)
        return result
    try:
        f = sc.SyscallFilter(sc.ALLOW)
        eperm = sc.ERRNO(errno.EPERM)

        def deny(name, *args, action=eperm):
            try:
                f.add_rule(action, name, *args)
            except (OSError, ValueError, RuntimeError):
                pass  # a system call this architecture does not have

        # New processes (threads stay allowed) and programs; namespaces and privileges.
        deny("clone", sc.Arg(0, sc.MASKED_EQ, 0x00010000, 0))  # without CLONE_THREAD: fork
        for flag in (_CLONE_NEWNS, 0x02000000, 0x04000000, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID,
                     _CLONE_NEWNET):  # NEWCGROUP, NEWUTS, ...
            deny("clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
        deny("clone3", action=sc.ERRNO(errno.ENOSYS))  # flags live in memory; glibc falls back to clone
        for name in ("fork", "vfork", "execve", "execveat", "unshare", "setns", "setsid", "setpgid", "setuid",
                     "setgid", "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "setfsuid",
                     "setfsgid", "capset", "personality", "chroot", "pivot_root", "mount", "umount2",
                     "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
                     # keyrings, SysV IPC, POSIX message queues
                     "add_key", "request_key", "keyctl", "shmget", "shmat", "shmctl", "shmdt", "msgget",
                     "msgsnd", "msgrcv", "msgctl", "semget", "semop", "semtimedop", "semctl", "mq_open",
                     "mq_unlink", "mq_timedsend", "mq_timedreceive", "mq_notify", "mq_getsetattr",
                     # other processes' memory, kernel attack surface, the machine itself
                     "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd",
                     "kcmp", "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
                     "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
                     "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog",
                     "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
                     "setdomainname", "iopl", "ioperm", "name_to_handle_at", "open_by_handle_at",
                     "fanotify_init", "lookup_dcookie", "vhangup", "mknod", "mknodat"):
            deny(name)
        deny("socket", sc.Arg(0, sc.NE, 1))  # AF_UNIX only: no netlink, packet, inet sockets
        deny("socketpair", sc.Arg(0, sc.NE, 1))
        deny("ioctl", sc.Arg(1, sc.EQ, 0x5412))  # TIOCSTI: typing into a terminal
        r, w = os.pipe()
        try:
            with os.fdopen(w, "wb", closefd=False) as fh:
                f.export_bpf(fh)
            os.close(w)
            w = None
            bpf = b""
            while True:
                chunk = os.read(r, 1 << 16)
                if not chunk:
                    break
                bpf += chunk
        finally:
            os.close(r)
            if w is not None:
                os.close(w)
        result = (bpf, None)
    except Exception as exc:
        result = (None, f"could not compile the seccomp filter ({exc!r})")
    _SECCOMP_CACHE.append(result)
    return result


class _Worker:
    """Host handle on one zygote process."""

    def __init__(self, options):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, os.path.abspath(__file__), "--zygote",
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


def _flavour(program: str) -> str:
    return "sympy" if "sympy" in program else "numpy" if "numpy" in program else "base"


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
        # test knobs: no_namespaces, no_landlock, no_audit_hook, no_seccomp, no_keyring
        self._options = dict(_options or {}, mode=self.mode)
        if self.mode != "portable":
            bpf, why = _seccomp_program()
            if bpf is not None:
                self._options["seccomp_bpf"] = bpf.hex()
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
            return dict(self._worker(slot, "numpy").ready())
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
    layer costs ("missing"); print it at the top of a notebook that runs programs."""
    return _default_pool().describe()


if _IN_ZYGOTE:
    _zygote_main(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
elif not _IN_RUNNER:
    _pool_lock = threading.Lock()
