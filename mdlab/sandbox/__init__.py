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

- ``strict``, the default on Linux: the PID, network, mount and IPC namespaces, a fresh session
  keyring, seccomp and a separate uid (for root) are required, Landlock is used where the kernel
  has it; if a required layer cannot be set up (no namespaces in a container, no libseccomp),
  ``run`` raises ``SandboxError`` instead of running with less.
- ``degraded``: whatever this machine allows, with a ``SandboxWarning`` saying what is lost.
  Opt in with ``MDLAB_SANDBOX=degraded`` or ``sandbox.configure("degraded")``.
- ``portable``, automatic off Linux (macOS), with a warning: a fresh interpreter per program
  (``python -I -S``, spawned, not forked) with rlimits, the audit hook, a scrubbed environment
  and a temporary working directory. No kernel isolation; slower (an interpreter start, and
  the imports, per program).

Layers (Linux), kernel first:

1. Namespaces. The zygote is PID 1 of its own PID namespace (when it dies the kernel kills every
   program; programs cannot see or signal host processes), and has its own network namespace
   (no interface up: no network), IPC namespace (no host SysV IPC) and mount namespace, whose
   root is a fresh tmpfs holding read-only bind mounts of only what Python needs (/usr, /lib*,
   the interpreter's trees and site-packages, at both their real and their symlinked paths,
   /dev/null|zero|urandom, ld.so.cache). Home directories, the repository, /proc and the rest
   of /etc are not there, and /tmp is read-only. The working directory is the worker's own
   tmpfs (64 MiB, 4096 inodes). After each program the zygote compares its counters (free
   blocks and inodes, mode, owner, link count, mtime, extended attributes) with those it had
   before any program; if they differ, a throwaway child empties it by file descriptor (any
   depth, any name), so that no name a program chose enters the zygote's memory. Without
   namespaces: a fresh directory in a private temporary one, removed the same way. A worker
   whose clean-up fails retires and the host starts another: no program sees what an earlier
   one left. An ordinary user gets all this inside a user namespace.
2. A fresh session keyring for the zygote (the host's session keyring is not reachable).
3. The zygote, once set up, confines itself, and every child inherits it at no cost:
   PR_SET_NO_NEW_PRIVS; a Landlock domain (Linux >= 5.13): writes only beneath the working
   directory, no execve, no TCP (>= 6.7), no abstract unix sockets or signals leaving the domain
   (>= 6.12); a seccomp filter that refuses (EPERM) exec, new namespaces, keyrings, SysV IPC and
   POSIX queues, every socket family but AF_UNIX, ptrace and cross-process memory access, bpf,
   perf, userfaultfd, io_uring, mount, module, clock and xattr calls, and the uid calls but
   setresuid/setresgid (a child needs them once, then lacks the privilege). libseccomp compiles it
   on the host, through ``pyseccomp`` (not hand-assembled BPF); loading costs ~0.2 ms (the
   kernel JIT-compiles it), hence once per worker, not per program.
4. Each child: a new session; its own uid when the zygote is root (0x50000000 + zygote pid);
   rlimits CPU, AS (``memory_mb``), FSIZE (16 MiB), NOFILE (64), NPROC (16 with a separate uid:
   threads work), CORE (0). New processes: in a PID namespace with a separate uid, NPROC bounds
   them and the zygote (PID 1 there) kills any that outlive the program; elsewhere each child
   loads a second filter refusing fork, setsid and uid changes (threads still allowed). Then the
   child lets go of the worker's ctypes handles: nothing the program can reach leads to libc.
5. An audit hook (``sys.addaudithook``; installed in the zygote, armed in its children) refuses
   sockets other than AF_UNIX, subprocess / os.system / exec / fork, ctypes, tracing, killing
   other processes, links, and writing, removing, renaming or chmod-ing paths outside the working
   directory; each refusal stops the program with status ``forbidden``. It is a second layer,
   for clear statuses: pure Python can get past it (frames, already-resolved ctypes functions,
   numpy writing raw memory). Its path checks are lexical (relative paths against the current
   directory, ``..`` and ``//`` resolved); calls relative to a directory descriptor and calls on
   descriptors (``fchmod``) are left to the kernel layers.
6. Environment: the zygote clears ``os.environ``; API keys never reach a program.
7. Memory: the zygote never holds a program's text or output in Python objects. Requests and
   output go through fixed buffers (``os.readv``), are forwarded as bytes, and are zeroed once the
   child is gone, so a child forked later inherits nothing of an earlier program.
8. Output: stdout capped at 64 KiB (the head, plus the last 4 KiB). The host decides statuses
   from the child's exit status first (refused: 86, set-up failure: 70, signals, the wall clock)
   and only then reads its result message, which the program could have written itself.

What this does NOT protect against. Measured here (Linux 6.18, root, Landlock ABI 7) with the
audit hook switched off, as if a program had got past it, attacking from each mode:

- strict (every layer): reading, writing or listing host files outside the bound trees,
  /proc, TCP to a host listener, killing a host process, exec, new namespaces, keyrings, SysV
  IPC, netlink sockets, writing outside the program's own tmpfs: all refused. Still open:
  reading world-readable files inside the bound trees (system libraries, the Python
  installation, site-packages); up to 15 threads or processes of its own, killed when it ends;
  AF_UNIX socket pairs; the ctime of the working directory (when the last program changed it).
- degraded without namespaces (Landlock and seccomp on): the same refusals, except that the
  program sees the host's directory tree (reads limited by Landlock to the Python trees);
  where Python lives under a 0700 home, children run as uid 0 without capabilities.
- degraded without namespaces, seccomp and Landlock: a program read /etc/shadow and /proc,
  connected to a host listener, killed a host process, forked a process that outlived it and
  wrote to the host's /tmp. Only rlimits, the environment and a fresh keyring were left.
- portable, with the audit hook: sockets, fork, kill, /proc and writes outside the working
  directory were refused, but reads are not checked (it read /etc/shadow as root). Without
  the hook it read, connected, forked and wrote freely: the hook is the only wall there.

In every mode: kernel exploits and bugs in the namespace, Landlock, seccomp or rlimit code;
CPU side channels and timing; using the host's CPU up to the limits (``workers`` programs at
once, each up to ``timeout``) and memory up to ``workers x memory_mb`` (+64 MiB tmpfs each); a
program lying about its own answer (it can write a result message of its own and exit 0). The
seccomp filter is a deny list (default allow): a harmful system call it does not name is
stopped only by the other layers. The audit hook's path checks are lexical; calls relative to
directory descriptors and calls on descriptors (``fchmod``) are left to the kernel layers,
which stop them in strict mode and, where Landlock is on, without namespaces (both tested);
in portable mode nothing does.

``memory_mb`` limits the child's whole address space, including what the warm interpreter has
mapped already (about 18 MB, 100 MB with numpy, 140 MB with sympy). ``random`` is imported
(and seeded) afresh by each program that uses it; numpy's legacy global RNG starts in the same
state in every program of a worker.
"""

from __future__ import annotations

from .pool import (
           MODES,
           STATUSES,
           ExecResult,
           Pool,
           SandboxError,
           SandboxWarning,
           _default_pool,  # noqa: F401  (the tests reach the shared pool's workers through it)
           configure,
           describe,
           run,
           run_many,
)

__all__ = ["MODES", "STATUSES", "ExecResult", "Pool", "SandboxError", "SandboxWarning", "configure", "describe", "run",
           "run_many"]
