"""The worker side of ``mdlab.sandbox``: the zygote (a warm Python process that forks one child
per program), the child's set-up and program run, and the portable runner (a fresh interpreter
per program, off Linux).

The host starts the zygote as ``python -I -S -c BOOTSTRAP layers.py worker.py --zygote OPTIONS``:
both files are compiled from source into the zygote (see ``pool._BOOTSTRAP``), without the
package, so that the zygote imports as little as possible. The host also imports this module,
for the wire format and limits it shares with the zygote.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import sys
import time

try:
    from .layers import *  # noqa: F401,F403  (host side and tests: inside the package)
except ImportError:  # the zygote and the portable runner load layers.py by path, without the package
    from _mdlab_sandbox_layers import *  # noqa: F401,F403

# Every page the warm worker has written makes each fork slower (and is copied again by each
# child that touches it), so the worker imports as little as possible. Notably, with threading
# imported, threading's at-fork handler alone costs every child ~100 page copies.
_IN_ZYGOTE = __name__ == "__main__" and sys.argv[1:2] == ["--zygote"]

_OUTPUT_CAP = 64 * 1024  # stdout bytes kept (head)
_TAIL_CAP = 4 * 1024  # stdout tail kept for the "last number printed" rule
_STDERR_CAP = 8 * 1024  # stderr tail kept, only used to explain crashes
_RESULT_CAP = 1 << 20  # child -> zygote result messages
_PROGRAM_CAP = 4 << 20  # programs larger than this are refused before they reach a worker
_SCRATCH = 64 * 1024
_FSIZE = 16 << 20  # largest file a program may write
_NOFILE = 64
_THREADS = 16  # RLIMIT_NPROC of root children with their own uid, where seccomp is on (see _setup_linux)
_WORK_TMPFS = "size=64m,nr_inodes=4096,mode=0700"
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


def _flavour(program: str) -> str:
    return "sympy" if "sympy" in program else "numpy" if "numpy" in program else "base"


class _Stream:
    """One of a child's pipes, read with os.readv into fixed regions of the zygote's arena: the first
    ``head`` bytes, then the last ``tail`` bytes (two alternating regions). No byte of it ever
    becomes a Python object in the zygote, and ``zero()`` wipes what was read."""

    def __init__(self, owner, arena, offset, head, tail, scratch):
        self.owner = owner  # the zygote: it zeroes the shared scratch region only once it was used
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
            self.owner.scratch_used = True
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
        self.seccomp = False
        self.fork_filter = None  # where children load the "fork" seccomp filter themselves
        self.reap_leftovers = False
        self.base = None  # the directory holding the working directory
        self.workdir = None  # every child's working directory: same path, made afresh for each child
        self.work_mount = False  # a fresh tmpfs per program (inside our mount namespace)
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
        self.out = _Stream(self, mv, off, _OUTPUT_CAP, _TAIL_CAP, self.scratch)
        off += sizes[2]
        self.err = _Stream(self, mv, off, 0, _STDERR_CAP, self.scratch)
        off += sizes[3]
        self.res = _Stream(self, mv, off, _RESULT_CAP, 0, self.scratch)
        self.req_len = 0
        self.scratch_used = False
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
            # One more reference, where no Python code can reach it (the interpreter's atexit list):
            # a child that lets go of z.kernel then frees nothing, and so copies no pages for it.
            import atexit

            atexit.register(id, self.kernel)
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
            # Read-only from now on: programs write only in the tmpfs mounted over /tmp/work below.
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
        info["child_uid"] = uid = self.child_uid if self.child_uid is not None else os.geteuid()
        if self.work_mount:
            # The working directory: a tmpfs of its own, owned by the children's uid. After each
            # program the zygote compares its counters with these (no names read, see _clean).
            k.mount("tmpfs", self.workdir, "tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC | _MS_NOATIME,
                    f"{_WORK_TMPFS},uid={uid},gid={uid}")
            st = os.stat(self.workdir)
            self.pristine, self.pristine_times = self._work_state(), (st.st_atime_ns, st.st_mtime_ns)
        if k is not None and not opts.get("no_landlock"):
            abi = k.landlock_abi()
            if abi >= 1:
                read_roots = ["/"] if info["namespaces"] else sorted(set(trees.values())) + [
                    p for p in ("/usr", "/lib", "/lib64", "/dev/null", "/dev/urandom") if os.path.exists(p)]
                # Writes beneath the working directory (its tmpfs), or beneath the base directory
                # where the working directory is made afresh for each program.
                self.ruleset = k.landlock_ruleset(abi, self.workdir if self.work_mount else self.base, read_roots)
                self.layers.append("landlock")
                info["landlock_abi"] = abi
        info.setdefault("landlock_abi", 0)
        worker_filter = None
        if k is not None and opts.get("seccomp_bpf") and not opts.get("no_seccomp"):
            try:
                worker_filter = k.seccomp_prepare(bytes.fromhex(opts["seccomp_bpf"]["worker"]))
                fork_filter = k.seccomp_prepare(bytes.fromhex(opts["seccomp_bpf"]["fork"]))
                self.seccomp = True
                self.layers.append("seccomp")
            except (OSError, ValueError, KeyError) as exc:
                info["seccomp_error"] = str(exc)
        elif opts.get("seccomp_error"):
            info["seccomp_error"] = opts["seccomp_error"]
        # Who stops a program's own processes. In a PID namespace with a separate uid, RLIMIT_NPROC
        # bounds them (16: threads are fine) and the zygote, PID 1 there, kills any that outlive the
        # program. Elsewhere each child loads the "fork" filter (threads still allowed), and without
        # seccomp, NPROC=1 stops fork and threads alike (root is exempt: hence the separate uid).
        # (A non-root user's processes all count against their NPROC: no use setting it there.)
        self.reap_leftovers = self.seccomp and info["pid_namespace"] and self.child_uid is not None
        self.fork_filter = fork_filter if self.seccomp and not self.reap_leftovers else None
        self.nproc = 1 if not self.seccomp else _THREADS if root else None
        info["nproc_limit_enforced"] = self.child_uid is not None or not root
        self.layers += ["rlimits"] + (["no_new_privs"] if k is not None else [])
        if k is not None:
            if self.child_uid is not None:
                os.setgroups([])
            k.prctl(_PR_SET_NO_NEW_PRIVS, 1)  # children inherit it; Landlock and seccomp need it
            if self.ruleset is not None:  # the zygote confines itself: children inherit it for free
                k.landlock_restrict(self.ruleset)
                os.close(self.ruleset)
                self.ruleset = None
            if worker_filter is not None:  # the same: loading a filter costs each child ~0.2 ms
                k.seccomp_load(worker_filter)
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
            # Installed here, inert in the zygote (it checks the pid): children get it for free.
            # (In portable mode the runner installs its own, after exec.)
            if not self.portable:
                sys.addaudithook(_make_audit_hook(self.workdir, 3, os.getpid()))
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
        if not self.work_mount:
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
        try:
            meta = self._collect(pid, start, timeout, [r for r, _ in pipes])
        finally:
            for r, _ in pipes:
                os.close(r)
        if self.reap_leftovers:  # processes the program started (past the audit hook) die with it
            _kill_the_rest()
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
        if self.scratch_used:
            self.scratch[:] = bytes(len(self.scratch))
            self.scratch_used = False
        self.req[:self.req_len] = bytes(self.req_len)
        return not retire

    def _clean(self):
        if self.options.get("test_unremovable") and os.path.lexists(self.workdir + "/unremovable"):
            raise OSError("test knob: a leftover that cannot be removed")
        if self.work_mount:
            # Free blocks and inodes, mode, owner, link count, mtime and extended attributes of
            # the tmpfs as it was before any program: equal means the program left nothing behind,
            # and no name it chose was read here. Otherwise empty it in a throwaway child. (Its
            # ctime cannot be restored: when the last program changed it stays visible.)
            if self._work_state() == self.pristine:
                return
            _empty_in_child(self.workdir)
            os.chmod(self.workdir, 0o700)
            os.utime(self.workdir, ns=self.pristine_times)
            if self._work_state() != self.pristine:
                raise OSError("working directory not restored")
            return
        try:
            os.rmdir(self.workdir)  # the usual case: the program wrote nothing
            clean = True
        except FileNotFoundError:
            clean = True
        except OSError:
            clean = False
        # A child with the zygote's uid could also have created files beside its workdir.
        if (not clean or self.child_uid is None) and not _empty_in_child(self.base):
            raise OSError("working directory not removed")

    def _work_state(self):
        fs, st = os.statvfs(self.workdir), os.stat(self.workdir)
        return (fs.f_bfree, fs.f_ffree, st.st_mode, st.st_uid, st.st_gid, st.st_nlink, st.st_mtime_ns,
                os.listxattr(self.workdir))

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


def _kill_the_rest():
    """PID 1 of a namespace: kill every other process in it, and reap them."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:  # none
        return
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


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
        os.closerange(4, 1 << 16)  # the zygote's channel to the host, the other pipes
        if z.fork_filter is not None:
            k.seccomp_load(z.fork_filter)
        # Let go of the worker's ctypes handles: nothing the program can reach leads to libc.
        z.kernel = k = None
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
# loads layers.py and this file as modules (from __pycache__) and runs one program.
_RUNNER_BOOT = """if 1:
    import sys, importlib.util
    for name, path in (("_mdlab_sandbox_layers", sys.argv[1]), ("_mdlab_sandbox_runner", sys.argv[2])):
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    mod._runner_main(sys.argv[3])
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
        here = os.path.dirname(os.path.abspath(__file__))
        os.execve(sys.executable, [sys.executable, "-I", "-S", "-c", _RUNNER_BOOT, os.path.join(here, "layers.py"),
                                   os.path.join(here, "worker.py"), opts], env)
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


if _IN_ZYGOTE:
    _zygote_main(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})
