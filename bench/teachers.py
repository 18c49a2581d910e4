"""Requests per second through ``teachers.OpenAICompatible`` at concurrency 1, 8 and 32.

A small loopback server (asyncio, no dependencies) answers OpenAI chat and completion requests
after a fixed latency (200 ms by default), like a remote API whose time is spent waiting, not
computing. It honours ``n``. The benchmark runs ``teachers.generate`` (the real path: prompts,
cache keys, CoT extraction, one JSONL append per chunk) against it at each concurrency, in one
run, and prints each rate and its ratio to the sequential one. Goal: concurrency 8 gives at least
6x the sequential rate.

    python bench/teachers.py [--latency 0.2] [--seconds 3]

``python bench/teachers.py --serve PORT`` runs only the server (the tests use it to check the
``n``-honouring path, which ``transformers serve`` cannot show).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ANSWER = {"cot": "There are 3 apples and 4 more. 3 + 4 = 7. The answer is 7.",
          "pot": "apples = 3\nmore_apples = 4\nans = apples + more_apples"}


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, latency: float) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
            body = await reader.readexactly(int(headers.get("content-length", 0) or 0))
            if method == "GET":
                payload, status = {"object": "list", "data": [{"id": "bench-model", "object": "model"}]}, 200
            else:
                request = json.loads(body or b"{}")
                await asyncio.sleep(latency)
                n = int(request.get("n") or 1)
                messages = request.get("messages")
                last = str(messages[-1].get("content", "")) if messages else str(request.get("prompt", ""))
                text = ANSWER["pot" if "# Question:" in last.rsplit("\n\n", 1)[-1] else "cot"]
                if path.endswith("/chat/completions"):
                    choices = [{"index": i, "finish_reason": "stop",
                                "message": {"role": "assistant", "content": text}} for i in range(n)]
                    kind = "chat.completion"
                else:
                    choices = [{"index": i, "finish_reason": "stop", "text": " " + text} for i in range(n)]
                    kind = "text_completion"
                payload = {"id": "bench", "object": kind, "created": int(time.time()), "model": request.get("model"),
                           "choices": choices,
                           "usage": {"prompt_tokens": 100, "completion_tokens": 20 * n, "total_tokens": 100 + 20 * n}}
                status = 200
            data = json.dumps(payload).encode()
            writer.write(f"HTTP/1.1 {status} OK\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n"
                         "connection: keep-alive\r\n\r\n".encode() + data)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        pass
    finally:
        writer.close()


async def serve(port: int, latency: float, host: str = "127.0.0.1") -> None:
    server = await asyncio.start_server(lambda r, w: _handle(r, w, latency), host, port, backlog=512)
    async with server:
        await server.serve_forever()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(latency: float = 0.2) -> tuple[subprocess.Popen, str]:
    """The fake server in a subprocess (so its event loop does not share our GIL); (process, base_url)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port), "--latency", str(latency)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url + "/models", timeout=1).read()
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"bench server exited: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("bench server did not start in 30 s")


def problems(count: int, offset: int = 0):
    from mdlab.data import Problem

    return [Problem(id=f"bench-{offset + i}", question=f"Tom has {i} apples and buys 4 more. How many now?",
                    answer=float(i + 4), equation=None, dataset="bench", split="test") for i in range(count)]


def measure(url: str, concurrency: int, count: int, offset: int) -> float:
    """Requests per second for ``count`` fresh CoT requests through generate at one concurrency."""
    from mdlab import teachers

    teacher = teachers.OpenAICompatible("bench-model", base_url=url, concurrency=concurrency)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        out = teachers.generate(teacher, problems(count, offset), "cot", run_dir=run_dir, progress=False)
        seconds = time.perf_counter() - start
    assert len(out) == count and teacher.requests_sent == count, (len(out), teacher.requests_sent)
    return count / seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", type=int, default=None, help="only run the fake server on this port")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request (default 0.2)")
    parser.add_argument("--seconds", type=float, default=3.0, help="ideal wall time per measurement")
    parser.add_argument("--levels", default="1,8,32", help="concurrency levels (default 1,8,32)")
    args = parser.parse_args(argv)
    if args.serve is not None:
        asyncio.run(serve(args.serve, args.latency))
        return 0
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    levels = [int(x) for x in args.levels.split(",")]
    proc, url = start_server(args.latency)
    try:
        measure(url, 4, 8, offset=10**6)  # warm-up: imports, client, first connections
        rates = {}
        offset = 0
        for c in levels:
            count = max(c, int(args.seconds / args.latency * c))
            rates[c] = measure(url, c, count, offset)
            offset += count
            print(f"concurrency {c:>3}: {count:>4} requests, {rates[c]:7.1f} requests/s", flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    base = rates[levels[0]]
    ideal = 1 / args.latency
    print(f"\nlatency {args.latency * 1000:.0f} ms per request (ideal sequential rate {ideal:.1f}/s), "
          f"{os.cpu_count()} CPUs")
    print("concurrency  requests/s  vs sequential  vs ideal")
    for c, rate in rates.items():
        print(f"{c:>11}  {rate:>10.1f}  {rate / base:>12.2f}x  {rate / (ideal * c):>7.0%}")
    if 8 in rates and levels[0] == 1:
        ok = rates[8] / base >= 6
        print(f"\ngoal: concurrency 8 >= 6x sequential: {'met' if ok else 'NOT met'} ({rates[8] / base:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.exit(main())
