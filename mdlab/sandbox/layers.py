"""Isolation layers of ``mdlab.sandbox``: the Linux calls the stdlib lacks (namespaces, mounts,
keyrings, Landlock, seccomp) through ctypes, the seccomp filter (compiled once on the host by
libseccomp), the audit hook, and the removal of what a program left behind.

Loaded two ways: as ``mdlab.sandbox.layers`` on the host, and by path as ``_mdlab_sandbox_layers``
in the zygote and the portable runner, which must not import the package (it would pull in the
host side: threading, subprocess). So: the stdlib only, and nothing heavy at import.
"""

from __future__ import annotations

import os
import select
import struct
import sys

_FORBIDDEN_EXIT = 86  # exit code of a child stopped by the audit hook
_UID_BASE = 0x50000000  # children of a root zygote run as _UID_BASE + zygote pid
# The layers a Linux worker may lack, and what a program gains where one is missing (for warnings).
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
# What strict mode will not run without.
_STRICT = ("pid_namespace", "network_namespace", "mount_namespace", "ipc_namespace", "session_keyring", "seccomp")

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
        """libseccomp's compiled filter (struct sock_filter[]) as a struct sock_fprog's address."""
        ctypes = self.ctypes
        if not bpf or len(bpf) % 8:
            raise ValueError("empty or malformed seccomp program")

        class SockFprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        buf = ctypes.create_string_buffer(bpf, len(bpf))
        prog = SockFprog(len(bpf) // 8, ctypes.addressof(buf))
        self._keep = getattr(self, "_keep", []) + [buf, prog]
        return ctypes.addressof(prog)

    def seccomp_load(self, fprog_addr):
        self.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, fprog_addr)


def _high_fd(fd):
    # Children dup2 their pipes onto fds 0-3; keep long-lived fds out of that range.
    import fcntl

    high = fcntl.fcntl(fd, getattr(fcntl, "F_DUPFD_CLOEXEC", fcntl.F_DUPFD), 10)
    os.set_inheritable(high, False)
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


def _empty_in_child(directory):
    """Remove everything inside ``directory`` in a throwaway child process, so that the names a
    program chose never enter the zygote's memory (which later children inherit). True if the
    directory is empty afterwards."""
    pid = os.fork()
    if pid == 0:
        try:
            with os.scandir(directory) as entries:
                names = [e.name for e in entries]
            for name in names:
                _remove_tree(os.path.join(directory, name))
            os._exit(0 if not os.listdir(directory) else 1)
        except BaseException:
            os._exit(1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


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


def _make_audit_hook(workdir, res_fd, zygote_pid=None):
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
             _mine=protected, _code=_FORBIDDEN_EXIT, _zygote=zygote_pid):
        if _getpid() == _zygote:
            return  # the zygote itself: the hook arms in its children (a pid they cannot change)
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


_SECCOMP_CACHE: list = []  # host side: compiled once per process


def _seccomp_program():
    """The seccomp filters, compiled to BPF by libseccomp (through pyseccomp) once per host process:
    ({"worker": bpf, "fork": bpf}, None) or (None, why). Compiled here rather than in the zygote,
    which must not import ctypes.util (it starts subprocess and threading: slower forks) nor run
    ldconfig inside its namespace.

    "worker" is loaded by the zygote once set up, so that every child inherits it for free (loading
    a filter costs ~0.2 ms: the kernel JIT-compiles it); it leaves the zygote what it needs to fork
    and set up a child. "fork" is loaded by each child where nothing else stops fork (no PID
    namespace to clean up after it, or no separate uid for RLIMIT_NPROC): no new processes (threads
    stay), sessions or ids."""
    if _SECCOMP_CACHE:
        return _SECCOMP_CACHE[0]
    try:
        import errno

        import pyseccomp as sc
    except Exception as exc:  # not installed, or libseccomp.so.2 missing
        result = (None, f"pyseccomp/libseccomp not available ({exc!r}); pip install pyseccomp, apt-get install libseccomp2")
        _SECCOMP_CACHE.append(result)
        return result

    def compile_(rules):
        f = sc.SyscallFilter(sc.ALLOW)
        for name, args, action in rules:
            try:
                f.add_rule(action, name, *args)
            except (OSError, ValueError, RuntimeError):
                pass  # a system call this architecture (or this libseccomp) does not know
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
        return bpf

    try:
        eperm = sc.ERRNO(errno.EPERM)
        worker = [("clone", (sc.Arg(0, sc.MASKED_EQ, flag, flag),), eperm)  # new namespaces
                  for flag in (_CLONE_NEWNS, 0x02000000, 0x04000000, _CLONE_NEWIPC, _CLONE_NEWUSER, _CLONE_NEWPID,
                               _CLONE_NEWNET)]  # ..., NEWCGROUP, NEWUTS, ...
        worker.append(("clone3", (), sc.ERRNO(errno.ENOSYS)))  # flags live in memory; glibc falls back to clone
        worker += [(name, (), eperm) for name in (
            "vfork", "execve", "execveat", "unshare", "setns", "setuid", "setgid", "setreuid", "setregid",
            "setgroups", "setfsuid", "setfsgid", "personality", "chroot", "pivot_root", "mount", "umount2",
            "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount", "fspick", "mount_setattr",
            # keyrings, SysV IPC, POSIX message queues
            "add_key", "request_key", "keyctl", "shmget", "shmat", "shmctl", "shmdt", "msgget", "msgsnd", "msgrcv",
            "msgctl", "semget", "semop", "semtimedop", "semctl", "mq_open", "mq_unlink", "mq_timedsend",
            "mq_timedreceive", "mq_notify", "mq_getsetattr",
            # other processes' memory, kernel attack surface, the machine itself
            "ptrace", "process_vm_readv", "process_vm_writev", "process_madvise", "pidfd_getfd", "kcmp", "bpf",
            "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register", "kexec_load",
            "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff", "acct",
            "quotactl", "syslog", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "sethostname",
            "setdomainname", "iopl", "ioperm", "name_to_handle_at", "open_by_handle_at", "fanotify_init",
            "lookup_dcookie", "vhangup", "mknod", "mknodat",
            # extended attributes: they would outlive a program on its working directory
            "setxattr", "lsetxattr", "fsetxattr", "removexattr", "lremovexattr", "fremovexattr", "setxattrat",
            "removexattrat")]
        worker += [("socket", (sc.Arg(0, sc.NE, 1),), eperm),  # AF_UNIX only: no netlink, packet, inet sockets
                   ("socketpair", (sc.Arg(0, sc.NE, 1),), eperm),
                   ("ioctl", (sc.Arg(1, sc.EQ, 0x5412),), eperm)]  # TIOCSTI: typing into a terminal
        fork = [("clone", (sc.Arg(0, sc.MASKED_EQ, 0x00010000, 0),), eperm)]  # without CLONE_THREAD: a process
        fork += [(name, (), eperm) for name in ("fork", "vfork", "setsid", "setpgid", "setresuid", "setresgid",
                                                "capset")]
        result = ({"worker": compile_(worker), "fork": compile_(fork)}, None)
    except Exception as exc:
        result = (None, f"could not compile the seccomp filters ({exc!r})")
    _SECCOMP_CACHE.append(result)
    return result


__all__ = [n for n in list(globals()) if not n.startswith("__") and n not in ("annotations", "os", "select", "struct",
                                                                             "sys")]
