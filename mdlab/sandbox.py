"""Isolated, fast execution of model-written PoT programs.

``run(program)`` / ``run_many(programs)`` execute untrusted Python and return ``ExecResult``s.
Every program runs in its own short-lived process, forked from a warm worker (a "zygote": a
Python process started once that has already imported math, fractions, decimal, statistics,
... and, in the workers for programs that mention them, numpy or numpy + sympy), so neither
interpreter start-up nor imports are paid per program, and nothing one program does is visible
to the next (the child exits after one program). ``run_many`` keeps one worker per core busy
and returns results in input order; a worker that dies or hangs is replaced, and costs at most
the program it was running a retry. Workers are reused across calls and stopped at exit.

The answer is the variable ``ans``; else the return value of ``solution()`` (PAL) or
``solver()``; else the last number printed. ints, floats, bools, numpy scalars and size-1
arrays, sympy numbers, Fraction, Decimal, complex with zero imaginary part and numeric
strings become floats. A program that ends without error but whose answer is missing, not a
number, or not finite (nan/inf) gets status ``no_answer`` (``error`` says why). The answer is
reported as computed: no abs(), no rounding.

Statuses: ``ok``; ``error`` (an exception: ``error`` is its last traceback line, e.g.
"ZeroDivisionError: division by zero"; also syntax errors, programs that are not UTF-8 text,
crashes, ``os._exit``); ``timeout`` (wall clock, or the CPU limit); ``memory`` (MemoryError
under the address-space limit, or killed by the kernel's OOM killer); ``forbidden`` (the audit
hook refused something: a socket, a subprocess, a write outside the working directory, ctypes
...; even if the program caught the exception); ``no_answer``. ``sys.exit()`` / ``sys.exit(0)``
end a program normally; other exit codes are errors.

Layers (``describe()`` reports which are active; those the platform lacks are skipped):

1. Namespaces. The zygote is PID 1 of its own PID namespace (when it dies the kernel kills
   every program; programs cannot see or signal host processes), has its own network
   namespace (only a loopback that is down: no network at all) and its own mount namespace,
   whose root is a fresh tmpfs holding read-only bind mounts of only what Python needs (/usr,
   /lib*, the interpreter's prefixes and site-packages, /dev/null|zero|urandom, ld.so.cache)
   and a 64 MiB, 4096-inode tmpfs /tmp for the working directory. Home directories, the
   repository, /proc and the rest of /etc are not there. Root uses CLONE_NEWNS|NEWNET|NEWPID;
   an ordinary user gets the same inside a user namespace.
2. Each child: a new session (the wall-clock kill hits its process group), its own uid when
   the zygote is root (0x50000000 + zygote pid: it cannot signal or trace the zygote or the
   host, and owns nothing outside its working directory), otherwise no capabilities at all;
   rlimits CPU, AS (``memory_mb``), FSIZE (16 MiB), NOFILE (64), NPROC (1: no fork, no
   threads; root is exempt from NPROC, which is why root children change uid), CORE (0);
   PR_SET_NO_NEW_PRIVS; a Landlock domain (Linux >= 5.13): writes only beneath the working
   directory, no execve, no TCP (>= 6.7), no abstract unix sockets or signals leaving the
   domain (>= 6.12); a fresh working directory, removed afterwards.
3. An audit hook (``sys.addaudithook``) refuses sockets, subprocess / os.system / exec / fork /
   posix_spawn, ctypes (import, dlopen, dlsym, raw memory), killing other processes, symlinks
   and hard links, and writing, removing, renaming or chmod-ing paths outside the working
   directory, and turns these into status ``forbidden``. It is a second layer only: ctypes
   function objects that already exist (numpy imports ctypes) can be called without any audit
   event, and interpreter bugs can defeat any in-process check. The kernel layers are the
   boundary.
4. Environment: the zygote starts with a minimal environment and clears ``os.environ``; API
   keys in the host's environment never reach a program.
5. Output: stdout is captured and capped at 64 KiB (the head, plus the last 4 KiB for the
   "last number printed" rule); results come back as size-capped JSON over pipes.

What this does NOT protect against: kernel exploits and bugs in the namespace, Landlock or
rlimit code; CPU side channels (Spectre-style) and timing; using the host's CPU up to the
limits (``workers`` programs at once, each up to ``timeout``) and memory up to ``workers x
memory_mb`` (+64 MiB tmpfs per worker); reading world-readable files inside the bind-mounted
trees (system libraries, the Python installation, site-packages); a program lying about its
own answer (it can write a forged result message). Without namespaces (some containers
forbid them) programs see the host's file system, read-limited to the Python trees by
Landlock where it exists; without Landlock either, writes are stopped only by the uid (root
host) or the audit hook, and a non-root program can reach the network through anything the
hook misses. Check ``describe()`` on a new machine. Linux only. Programs get one thread.

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
# alone costs every child ~100 page copies.
_IN_ZYGOTE = __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]
if not _IN_ZYGOTE:
    import atexit
    import dataclasses
    import subprocess
    import threading

STATUSES = ("ok", "error", "timeout", "memory", "forbidden", "no_answer")

_OUTPUT_CAP = 64 * 1024  # stdout bytes kept (head)
_TAIL_CAP = 4 * 1024  # stdout tail kept for the "last number printed" rule
_STDERR_CAP = 8 * 1024  # stderr tail kept, only used to explain crashes
_RESULT_CAP = 1 << 20  # child -> zygote result messages
_PROGRAM_CAP = 4 << 20  # programs larger than this are refused before they reach a worker
_PIPELINE = 2  # requests queued at a worker at once (only small ones: pipes hold 64 KiB)
_PIPELINE_BYTES = 16 * 1024
_FSIZE = 16 << 20  # largest file a program may write
_NOFILE = 64
_TMPFS = "size=64m,nr_inodes=4096,mode=0711"
_UID_BASE = 0x50000000  # children of a root zygote run as _UID_BASE + zygote pid
# Heavy packages are preloaded only in workers for programs that mention them: a bigger zygote
# makes every fork and exit slower (numpy doubles the cost, sympy triples it again). Not random
# (nor statistics, which imports it): its at-fork reseed would cost every child ~40 page copies;
# programs that use it import it themselves, and get a fresh seed that way.
_PRELOAD = {"base": ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "datetime",
                     "re", "string", "operator")}
_PRELOAD["numpy"] = _PRELOAD["base"] + ("numpy",)
_PRELOAD["sympy"] = _PRELOAD["numpy"] + ("sympy",)


@(dataclasses.dataclass if not _IN_ZYGOTE else lambda cls: cls)
class ExecResult:
    status: str  # one of STATUSES
    answer: float | None  # the program's answer, converted to float (None unless status == "ok")
    stdout: str  # captured stdout, capped (truncation is marked in the text)
    error: str | None  # last line of the exception, or why there is no answer
    seconds: float  # wall time of the program's process (0.0 if it never ran)


# ──────────────────────────────────────────────────────────────────────────────────────────
# Zygote side: everything below up to "Host side" runs in the warm worker and its children.
# ──────────────────────────────────────────────────────────────────────────────────────────

_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REMOUNT = 1, 2, 4, 8, 32
_MS_NOATIME, _MS_NODIRATIME, _MS_BIND, _MS_REC, _MS_PRIVATE, _MS_RELATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 21
_MNT_DETACH = 2
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS = 1, 38
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
_SYS_LANDLOCK = (444, 445, 446)  # create_ruleset, add_rule, restrict_self (same number on all arches)
# Landlock access rights (linux/landlock.h); which exist depends on the ABI version.
_LL_EXECUTE, _LL_WRITE_FILE, _LL_READ_FILE, _LL_READ_DIR = 1, 2, 4, 8
_LL_REMOVE_DIR, _LL_REMOVE_FILE, _LL_MAKE_CHAR, _LL_MAKE_DIR = 16, 32, 64, 128
_LL_MAKE_REG, _LL_MAKE_SOCK, _LL_MAKE_FIFO, _LL_MAKE_BLOCK, _LL_MAKE_SYM = 256, 512, 1024, 2048, 4096
_LL_REFER, _LL_TRUNCATE, _LL_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15


class _Kernel:
    """The few Linux calls the stdlib lacks (unshare, mount, prctl, Landlock), via ctypes.

    Used only before the audit hook is installed; the hook refuses ctypes afterwards."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        for name in ("unshare", "mount", "umount2", "prctl", "capset", "malloc_trim"):
            try:
                getattr(self.libc, name)  # resolve now: a child resolving a symbol would trip the audit hook
            except AttributeError:
                pass

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

    def pivot_root(self, new, old):
        nr = _SYS_PIVOT_ROOT.get(os.uname().machine)
        if nr is None:
            raise OSError(38, "pivot_root: unknown architecture")
        self._check(self.libc.syscall(nr, os.fsencode(new), os.fsencode(old)), "pivot_root")

    def prctl(self, option, arg):
        c_ulong = self.ctypes.c_ulong
        return self._check(self.libc.prctl(option, c_ulong(arg), c_ulong(0), c_ulong(0), c_ulong(0)), "prctl")

    def drop_capabilities(self):
        # capset(v3 header, two zeroed data structs): empties effective, permitted, inheritable.
        c_uint32 = self.ctypes.c_uint32
        header = (c_uint32 * 2)(0x20080522, 0)
        data = (c_uint32 * 6)()
        self._check(self.libc.capset(header, data), "capset")

    def syscall(self, nr, *args):
        c_long = self.ctypes.c_long
        return self._check(self.libc.syscall(c_long(nr), *[c_long(a) for a in args]), f"syscall {nr}")

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
        for path, access in [(write_dir, fs_write | fs_read)] + [(p, fs_read) for p in read_roots]:
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
    """Directories a child needs to read for lazy imports: prefixes, stdlib, site-packages and
    preloaded packages (not other sys.path entries, such as a repository with secrets in it)."""
    paths = {sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix, os.path.dirname(os.__file__),
             os.path.dirname(getattr(select, "__file__", os.__file__))}
    paths.update(p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages"))
    for name in modules:
        mod = sys.modules.get(name)
        if getattr(mod, "__file__", None):
            paths.add(os.path.dirname(os.path.dirname(mod.__file__)) if mod.__file__.endswith("__init__.py")
                      else os.path.dirname(mod.__file__))
    real = sorted({os.path.realpath(p) for p in paths if p and os.path.isdir(p)})
    return [p for p in real if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in real)]


class _Zygote:
    """State of the warm worker: which layers are active and what each child needs."""

    def __init__(self, options):
        self.options = options
        self.kernel = None
        self.info = {"pid": os.getpid(), "euid": os.geteuid(), "python": sys.version.split()[0],
                     "pid_namespace": False}
        self.child_uid = None
        self.drop_caps = False
        self.landlock_abi = 0
        self.ruleset = None
        self.base = None  # the directory holding the working directory (a private tmpfs if possible)
        self.workdir = None  # every child's working directory: same path, made afresh for each child
        self.hook = None

    def setup(self):
        info = self.info
        info["preloaded"] = []
        info["flavour"] = self.options.get("flavour", "numpy")
        for name in _PRELOAD[info["flavour"]]:
            try:
                __import__(name)
                info["preloaded"].append(name)
            except Exception:  # an optional package missing or broken: programs just import it themselves
                pass
        # Used by children; not tempfile or shutil: they pull in bz2 and lzma, and every mapped
        # library makes each fork slower.
        import io  # noqa: F401
        import resource  # noqa: F401
        import types  # noqa: F401
        if "sympy" in info["preloaded"]:
            import sympy

            sympy.sympify("x + 1/2")  # loads the parser, so children do not each import it
        if "numpy" in info["preloaded"]:
            import numpy

            float(numpy.float64(1) / 3)
        info["threads"] = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None
        try:
            self.kernel = _Kernel()
        except Exception as exc:  # no ctypes / no libc: only rlimits, uid and the audit hook remain
            info["kernel_error"] = repr(exc)
        root = os.geteuid() == 0
        trees = _python_trees(info["preloaded"])
        info["namespaces"] = info["network_namespace"] = False
        if self.kernel is not None and not self.options.get("no_namespaces"):
            try:
                self._unshare(root)
                info["network_namespace"] = True
                self._build_root(trees)
                info["namespaces"] = True
            except OSError as exc:
                info["namespace_error"] = str(exc)
        if not info["namespaces"]:
            self.base = _mkdtemp("mdlab-sandbox-")
            os.chmod(self.base, 0o711)
            info["workdir_base"] = self.base
        # A root child runs as its own uid only where it can still read Python (always inside our
        # mount namespace: the bind mounts hang off world-traversable tmpfs directories).
        if root and (info["namespaces"] or self._uid_can_read(trees)):
            self.child_uid = _UID_BASE + self.info["pid"]  # the host-side pid: unique among live zygotes
        else:
            self.drop_caps = self.kernel is not None
        info["child_uid"] = self.child_uid if self.child_uid is not None else os.geteuid()
        info["nproc_limit_enforced"] = self.child_uid is not None or not root
        if self.kernel is not None and not self.options.get("no_landlock"):
            abi = self.kernel.landlock_abi()
            if abi >= 1:
                read_roots = ["/"] if info["namespaces"] else trees + [p for p in ("/usr", "/lib", "/lib64",
                                                                                     "/dev/null", "/dev/urandom")
                                                                       if os.path.exists(p)]
                self.ruleset = self.kernel.landlock_ruleset(abi, self.base, read_roots)
                self.landlock_abi = abi
        info["landlock_abi"] = self.landlock_abi
        info["audit_hook"] = not self.options.get("no_audit_hook")
        self.zygote_pid = os.getpid()
        self._prepare_children()
        # From here on the zygote confines itself; children inherit all of it for free.
        if self.kernel is not None:
            if self.child_uid is not None:
                os.setgroups([])
            self.kernel.prctl(_PR_SET_NO_NEW_PRIVS, 1)
            if self.ruleset is not None:
                self.kernel.landlock_restrict(self.ruleset)
                os.close(self.ruleset)
            if self.drop_caps:  # children of this zygote keep its uid: give up every capability now
                self.kernel.drop_capabilities()
        if self.hook is not None:
            sys.addaudithook(self.hook)  # inert in the zygote itself (it checks the pid)
        import gc

        gc.collect()
        gc.freeze()  # keep the collector from touching (and so copying) the zygote's pages in children
        if self.kernel is not None:
            try:
                self.kernel.libc.malloc_trim(0)  # fewer resident pages: cheaper forks (measured)
            except AttributeError:
                pass

    def _prepare_children(self):
        """Do once here what every child would otherwise redo (each write in a child copies a page)."""
        import io

        self.workdir = self.base + "/work"
        if self.info["audit_hook"]:
            self.hook = _make_audit_hook(self.workdir, 3, os.getpid())  # 1 inside a PID namespace
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
        if root:
            k.unshare(_CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID)
        else:
            uid, gid = os.geteuid(), os.getegid()
            k.unshare(_CLONE_NEWUSER | _CLONE_NEWNS | _CLONE_NEWNET | _CLONE_NEWPID)
            for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as fh:
                    fh.write(text)
        # Become PID 1 of the new PID namespace at once (else the first program would be, and the
        # namespace would die with it): when PID 1 dies the kernel kills every program in it, so
        # children need no PR_SET_PDEATHSIG of their own, and programs cannot see host pids. The
        # process the host started stays behind, waiting, and PID 1 dies with it.
        # (If the host kills that process before the prctl below, PID 1 still leaves: its channel
        # to the host is closed.)
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
        binds = [p for p in ("/usr", "/lib", "/lib64", "/lib32", "/libx32") if os.path.lexists(p)]
        binds += [t for t in trees if not any(t == b or t.startswith(b + "/") for b in binds)]
        files = [p for p in ("/etc/ld.so.cache", "/etc/localtime", "/dev/null", "/dev/zero", "/dev/urandom",
                             "/dev/random") if os.path.exists(p)]
        # Hold every source by an fd, then build the new root on a tmpfs over /tmp (in this namespace
        # only, so nothing appears on the host's file system) and bind from /proc/self/fd/N.
        sources = {}
        for path in binds + files:
            if not (os.path.islink(path) and path.count("/") == 1):
                sources[path] = (os.open(path, os.O_PATH | os.O_CLOEXEC), _statvfs_flags(path))
        k.mount("tmpfs", "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0700")
        new = "/tmp/root"
        os.mkdir(new, 0o755)
        k.mount("tmpfs", new, "tmpfs", _MS_NOSUID | _MS_NODEV, "size=1m,mode=0755")
        # The programs' /tmp comes first: a tree that lives under the host's /tmp (a checkout and
        # its .venv cloned there, as CI may do) is then bound inside it instead of hidden by it.
        os.makedirs(new + "/tmp")
        k.mount("tmpfs", new + "/tmp", "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, _TMPFS)
        for path in binds + files:
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
        self.base = "/tmp"

    # ── one program ───────────────────────────────────────────────────────────────────────
    def run(self, program: str, timeout: float, memory_mb: int) -> dict:
        self.finish()
        workdir = self.workdir
        os.mkdir(workdir, 0o700)
        if self.child_uid is not None:
            os.chown(workdir, self.child_uid, self.child_uid)
        pipes = [os.pipe() for _ in range(3)]  # stdout, stderr, result
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child_main(self, program, timeout, memory_mb, *(w for _, w in pipes))
        for _, w in pipes:
            os.close(w)
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        self._pending = [pid, pidfd, start + timeout, False]  # the last item: reaped already
        try:
            return self._collect(pid, pidfd, start, timeout, [r for r, _ in pipes])
        finally:
            for r, _ in pipes:
                os.close(r)

    def finish(self):
        """Reap the last child and remove its working directory (after the reply went out, so
        that the child's exit, which unmaps its memory, overlaps with the host's work)."""
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None:
            return
        pid, pidfd, deadline, reaped = pending
        try:
            if reaped:
                pass
            elif pidfd is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([pidfd], [], [], remaining)[0]:
                    _kill(pid)
            else:
                _kill(pid)  # it reported its result; without a pidfd, do not wait for it to leave
            if not reaped:
                os.wait4(pid, 0)
        finally:
            if pidfd is not None:
                os.close(pidfd)
        _remove_tree(self.workdir)
        if self.child_uid is None:  # a same-uid child could create files beside its workdir
            for name in os.listdir(self.base):
                _remove_tree(os.path.join(self.base, name), force=True)

    def _collect(self, pid, pidfd, start, timeout, fds):
        out_r, err_r, _ = fds
        head, tail, nout = bytearray(), bytearray(), 0
        err, res = bytearray(), bytearray()
        poller = select.poll()
        for fd in fds:
            os.set_blocking(fd, False)
            poller.register(fd, select.POLLIN)
        if pidfd is not None:
            poller.register(pidfd, select.POLLIN)
        open_fds, exited, timed_out, status, reported = set(fds), False, False, None, False
        deadline = start + timeout
        while (open_fds or not exited) and not reported:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            wait = remaining if pidfd is not None else min(remaining, 0.02)
            for fd, _ in poller.poll(wait * 1000):
                if fd == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                while fd in open_fds:  # drain: after the result line, nothing else will wake us
                    try:
                        data = os.read(fd, 1 << 16)
                    except BlockingIOError:
                        break
                    if not data:
                        poller.unregister(fd)
                        open_fds.discard(fd)
                    elif fd == out_r:
                        nout += len(data)
                        if len(head) < _OUTPUT_CAP:
                            head += data[: _OUTPUT_CAP - len(head)]
                        tail = (tail + data)[-_TAIL_CAP:]
                    elif fd == err_r:
                        err = (err + data)[-_STDERR_CAP:]
                    else:
                        if len(res) < _RESULT_CAP:
                            res += data[: _RESULT_CAP - len(res)]
                        # The child writes its result last, after flushing stdout: once that line is
                        # here, the rest of its output is already in the pipes.
                        reported = b'{"result": ' in res and res.endswith(b"\n")
            if reported:
                for fd in (out_r, err_r):
                    while fd in open_fds:
                        try:
                            data = os.read(fd, 1 << 16)
                        except BlockingIOError:
                            break
                        if not data:
                            open_fds.discard(fd)
                        elif fd == out_r:
                            nout += len(data)
                            if len(head) < _OUTPUT_CAP:
                                head += data[: _OUTPUT_CAP - len(head)]
                            tail = (tail + data)[-_TAIL_CAP:]
            if pidfd is None and not exited:
                got, st, ru = os.wait4(pid, os.WNOHANG)
                if got == pid:
                    exited, status, usage = True, st, ru
                    self._pending[3] = True
        if not reported:
            if timed_out or not exited:
                _kill(pid)
            if status is None:
                _, status, usage = os.wait4(pid, 0)
                self._pending[3] = True
        else:
            status = usage = None
        seconds = time.monotonic() - start
        after = nout - len(head)  # bytes beyond the kept head; the tail holds the last of them
        if after <= len(tail):
            stdout = bytes(head) + bytes(tail[len(tail) - after:])
        else:
            stdout = bytes(head) + f"\n... [{after - len(tail)} bytes cut] ...\n".encode() + bytes(tail)
        reply = {"stdout": stdout.decode("utf-8", "replace"), "seconds": seconds, "answer": None, "error": None}
        violations, result, setup_error = [], None, None
        for line in bytes(res).splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if not isinstance(msg, dict):
                continue
            if "violation" in msg:
                violations.append(str(msg["violation"]))
            elif "result" in msg and isinstance(msg["result"], dict):
                result = msg["result"]
            elif "setup_error" in msg:
                setup_error = str(msg["setup_error"])
        if violations:
            reply.update(status="forbidden", error=f"forbidden: {violations[0]}")
        elif timed_out:
            reply.update(status="timeout", error=f"wall-clock timeout after {timeout:g} s")
        elif result is not None:
            reply.update(_finish(result, bytes(tail).decode("utf-8", "replace")))
        elif setup_error is not None:
            reply.update(status="error", error=f"sandbox setup failed: {setup_error}")
        elif os.WIFSIGNALED(status):
            sig = os.WTERMSIG(status)
            name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
            cpu = usage.ru_utime + usage.ru_stime
            if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= _cpu_limit(timeout) - 0.5):
                reply.update(status="timeout", error=f"CPU time limit exceeded ({cpu:.1f} s)")
            elif sig == signal.SIGKILL:
                reply.update(status="memory", error="killed by SIGKILL (out of memory?)")
            else:
                hint = " (C stack overflow, e.g. deep recursion after sys.setrecursionlimit)" if sig == signal.SIGSEGV else ""
                reply.update(status="error", error=f"crashed: killed by {name}{hint}")
        else:
            code = os.WEXITSTATUS(status)
            last = bytes(err).decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            reply.update(status="error", error=f"exited with code {code} before reporting a result"
                         + (f": {last[0][:200]}" if last[0] else ""))
        return reply


def _kill(pid):
    for kill in (os.killpg, os.kill):  # killpg reaches anything it started, kill covers a failed setsid
        try:
            kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _cpu_limit(timeout):
    return int(timeout) + 2  # soft CPU limit: above the wall clock, which normally acts first


def _finish(result, tail):
    """Zygote side: the child's verdict, plus the last-number-printed fallback."""
    status = result.get("status")
    if status not in STATUSES:
        return {"status": "error", "error": "malformed result from the program's process"}
    answer, error = result.get("answer"), result.get("error")
    if status == "no_answer" and result.get("source") is None:
        import re

        numbers = re.findall(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", tail)
        if numbers:
            return {"status": "ok", "answer": float(numbers[-1]), "error": None}
        error = "no `ans`, no solution()/solver(), and no number printed"
    if status == "ok" and not isinstance(answer, (int, float)):
        return {"status": "error", "error": "malformed result from the program's process"}
    return {"status": status, "answer": float(answer) if status == "ok" else None,
            "error": None if error is None else str(error)[:1000]}


def _mkdtemp(prefix):
    base = os.environ.get("TMPDIR") or "/tmp"
    while True:
        path = os.path.join(base, prefix + os.urandom(6).hex())
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            pass


def _remove_tree(path, force=False):
    """rmtree for what a program may leave behind (including chmod 000 directories)."""
    try:
        os.rmdir(path)  # the usual case: the program wrote nothing
        return
    except FileNotFoundError:
        return
    except OSError:
        pass
    try:
        if os.path.islink(path) or not os.path.isdir(path):
            if force:
                os.unlink(path)
            return
        os.chmod(path, 0o700)
        with os.scandir(path) as entries:
            names = [e.name for e in entries]
        for name in names:
            _remove_tree(os.path.join(path, name), force=True)
        os.rmdir(path)
    except OSError:
        pass


# Events refused by the audit hook (names: https://docs.python.org/3/library/audit_events.html).
_DENY_EVENTS = frozenset({"os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
                          "os.startfile", "subprocess.Popen", "pty.spawn", "os.symlink", "os.link", "os.killpg",
                          "sys.remote_exec", "gc.get_referrers", "gc.get_referents", "gc.get_objects",
                          "_posixsubprocess.fork_exec", "os.chroot"})
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


def _make_audit_hook(workdir, res_fd, zygote_pid):
    # Everything the hook uses is bound as a default argument: a program can rebind module globals
    # and builtins, but not these (changing __defaults__/__code__ is itself an audited event).
    def inside(path, _wd=workdir, _wds=workdir + "/", _getcwd=os.getcwd, _fspath=os.fspath, _isinstance=isinstance,
               _str=str, _bytes=bytes):
        if not _isinstance(path, (_str, _bytes)):
            try:
                path = _fspath(path)
            except BaseException:
                return False
        if _isinstance(path, _bytes):
            path = path.decode("utf-8", "surrogateescape")
        if not _isinstance(path, _str):
            return False
        if not path.startswith("/"):
            path = _getcwd() + "/" + path
        parts = []
        for seg in path.split("/"):
            if seg == "..":
                if parts:
                    parts.pop()
            elif seg and seg != ".":
                parts.append(seg)
        norm = "/" + "/".join(parts)
        return norm == _wd or norm.startswith(_wds)

    def hook(event, args, _inside=inside, _deny=_DENY_EVENTS, _prefixes=_DENY_PREFIXES, _imports=_DENY_IMPORTS,
             _paths=_PATH_EVENTS, _wflags=_WRITE_FLAGS, _fd=res_fd, _write=os.write, _getpid=os.getpid,
             _isinstance=isinstance, _str=str, _int=int, _bytes=bytes, _len=len, _exc=PermissionError,
             _enc=str.encode, _zygote=zygote_pid, _repr=repr, _plain=(int, _NONE_TYPE, tuple, list, dict)):
        if _getpid() == _zygote:
            return
        refuse = False
        if event in _deny or event.startswith(_prefixes):
            refuse = True
        elif event == "open":
            path, mode, flags = (args + (None, None, None))[:3]
            writing = ((_isinstance(mode, _str) and ("w" in mode or "a" in mode or "x" in mode or "+" in mode))
                       or (_isinstance(flags, _int) and flags & _wflags))
            if _isinstance(path, _int):
                refuse = False  # an fd the program already holds
            elif writing:
                refuse = not _inside(path)
            elif _isinstance(path, (_str, _bytes)):
                p = path if _isinstance(path, _str) else path.decode("utf-8", "surrogateescape")
                refuse = p.startswith("/proc/") and not p.startswith(("/proc/self", "/proc/thread-self"))
        elif event == "import":
            refuse = _isinstance(args[0], _str) and args[0].split(".")[0] in _imports
        elif event in _paths:
            for a in args:  # every path argument (ints are fds, modes, flags)
                if not _isinstance(a, _plain) and not _inside(a):
                    refuse = True
        elif event == "os.kill" or event == "signal.pthread_kill":
            refuse = event == "os.kill" and args[0] != _getpid()
        elif event == "object.__setattr__" or event == "object.__delattr__":
            refuse = _len(args) > 1 and args[1] in ("__code__", "__defaults__", "__kwdefaults__")
        if refuse:
            what = event
            if args and _isinstance(args[0], (_str, _bytes)):
                what = event + " " + _repr(args[0])[:160]
            # JSON by hand: only ASCII without quotes or backslashes gets through.
            what = _enc(what, "ascii", "backslashreplace").decode().replace("\\", "/").replace('"', "'")
            _write(_fd, _enc('{"violation": "' + what + '"}\n'))
            raise _exc(f"sandbox: {what} is not allowed")

    return hook


def _child_main(z, program, timeout, memory_mb, out_w, err_w, res_w):
    """Runs in the forked child; never returns. Kept short: every page it writes gets copied."""
    exit_ = os._exit
    try:
        import resource

        os.setsid()
        if not z.info["pid_namespace"] and z.kernel is not None:
            z.kernel.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
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
        cpu = _cpu_limit(timeout)
        setrlimit = resource.setrlimit
        setrlimit(resource.RLIMIT_CORE, (0, 0))
        setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        setrlimit(resource.RLIMIT_FSIZE, (_FSIZE, _FSIZE))
        setrlimit(resource.RLIMIT_NPROC, (1, 1))
        os.closerange(4, 1 << 16)  # the zygote's channel to the host, the other pipes
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
        exit_(70)
    result = _execute(program, main.__dict__)
    payload = _encode_result(result)
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    try:
        os.write(3, payload)
    finally:
        exit_(0)


def _encode_result(result):
    try:
        return (json.dumps({"result": result}) + "\n").encode()
    except BaseException:
        return b'{"result": {"status": "error", "error": "could not encode the result"}}\n'


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
    data = _read_exact(fd, struct.unpack(">I", header)[0], deadline)
    return None if data is None else json.loads(data)


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
    data = _frame(obj)
    while data:
        data = data[os.write(fd, data):]


def _zygote_main(options):
    if options.get("path"):  # -S skipped site.py (2 MB of heap): take the host's path instead
        sys.path[:] = options["path"]
    # Keep the host channel off fds 0-3 (children's stdio and result pipe) and away from stray prints.
    fd_in, fd_out = _high_fd(os.dup(0)), _high_fd(os.dup(1))
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
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
            req = _read_frame(fd_in)
        except (OSError, ValueError):
            return
        if req is None:  # host closed the channel (or died): leave, the kernel tears down the namespaces
            return
        try:
            reply = z.run(req["program"], float(req["timeout"]), int(req["memory_mb"]))
        except Exception as exc:  # a zygote bug must cost one program, not the worker
            reply = {"status": "error", "answer": None, "stdout": "", "seconds": 0.0,
                     "error": f"sandbox internal error: {exc!r}"[:1000]}
        del req
        try:
            _write_frame(fd_out, reply)
            z.finish()
        except OSError:
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
    """The sandbox itself could not start (not a program's fault)."""


class _WorkerDied(Exception):
    pass


class _Worker:
    """Host handle on one zygote process."""

    def __init__(self, options):
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", _BOOTSTRAP, os.path.abspath(__file__), "--zygote",
             json.dumps(dict(options, path=[p for p in sys.path if p and os.path.isdir(p)]))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=_ENV, cwd="/", start_new_session=True)
        self.info = None

    def ready(self, wait=120.0):
        if self.info is None:
            try:
                hello = _read_frame(self.proc.stdout.fileno(), time.monotonic() + wait)
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
        info = self.info or {}
        for key in ("workdir_base",):  # without namespaces, the working directory lives on the host
            if info.get(key):
                _remove_tree(info[key])


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


class Pool:
    """Warm workers that run programs; ``run``/``run_many`` use one shared, lazily started Pool.

    Workers are reused across calls and stopped at interpreter exit (or by ``close()``). A worker
    slot holds up to three zygotes, started on first need: stdlib only, + numpy, + numpy and sympy;
    a program goes to the smallest one whose preloads cover the heavy packages its text mentions
    (others still import lazily, just slower)."""

    def __init__(self, *, _options: dict | None = None):
        self._options = dict(_options or {})  # test knobs: no_namespaces, no_landlock, no_audit_hook
        self._idle: list[dict[str, _Worker]] = []
        self._lock = threading.Lock()
        self._workers: set[_Worker] = set()
        self._pid = os.getpid()

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
        return w

    def _forget(self, w):
        with self._lock:
            self._workers.discard(w)
        w.kill()
        return False

    def _replace(self, slot, flavour, line, attempts, results, exc, lock, queue):
        """A worker died or hung: the program it was running gets one retry (on a new worker),
        a second death marks it; programs queued behind it go back to the queue untouched."""
        self._forget(slot.pop(flavour))
        if not line:
            return False
        (i, _), rest = line[0], line[1:]
        attempts[i] = attempts.get(i, 0) + 1
        with lock:
            for j, frame in reversed(rest):
                queue.append((j, json.loads(frame[4:])["program"]))
            if attempts[i] >= 2:
                results[i] = ExecResult("error", None, "", f"sandbox worker died twice running this program ({exc})",
                                        0.0)
            else:
                queue.append((i, json.loads(line[0][1][4:])["program"]))
        line.clear()
        return True

    def _give_back(self, slots):
        with self._lock:
            self._idle.extend({f: w for f, w in slot.items() if w in self._workers} for slot in slots)

    def describe(self) -> dict:
        """Which isolation layers the workers actually have on this machine."""
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
            inflight: dict[str, list] = {}  # flavour -> [(index, frame), ...] in the order sent
            held = None
            while not failure:
                if held is None:
                    held = next_job()
                if held is not None:
                    i, program = held
                    flavour = _flavour(program)
                    frame = _frame({"program": program, "timeout": timeout, "memory_mb": memory_mb})
                    line = inflight.setdefault(flavour, [])
                    if not line or (len(line) < _PIPELINE and len(frame) <= _PIPELINE_BYTES
                                    and len(line[-1][1]) <= _PIPELINE_BYTES):
                        try:
                            worker = self._worker(slot, flavour)
                            worker.ready()
                            worker.send(frame)
                            line.append((i, frame))
                            held = None
                            continue
                        except _WorkerDied as exc:
                            line.append((i, frame))
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
                except _WorkerDied as exc:
                    self._replace(slot, flavour, line, attempts, results, exc, lock, queue)
                    continue
                i, _ = line.pop(0)
                results[i] = ExecResult(reply["status"], reply["answer"], reply["stdout"], reply["error"],
                                        reply["seconds"])
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


def run(program, *, timeout: float = 3.0, memory_mb: int = 512) -> ExecResult:
    """Run one program in the sandbox (see the module docstring)."""
    return _default_pool().run(program, timeout=timeout, memory_mb=memory_mb)


def run_many(programs, *, timeout: float = 3.0, memory_mb: int = 512, workers: int | None = None) -> list[ExecResult]:
    """Run programs on ``workers`` warm workers (default: one per CPU); results in input order."""
    return _default_pool().run_many(programs, timeout=timeout, memory_mb=memory_mb, workers=workers)


def describe() -> dict:
    """The isolation layers in force on this machine (namespaces, child uid, Landlock ABI, ...)."""
    return _default_pool().describe()


if _IN_ZYGOTE:
    _zygote_main(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
else:
    _pool_lock = threading.Lock()
