"""Batch store speed and memory: ingest of a large batch file (upload + validation, lines per
second, peak RSS) and the runner's calls with that many lines queued (next_lines, record,
backlog, an idle tick, a restart and its first dispatch, expiry of the whole batch). Prints
tables and writes them into docs/benchmarks.md between the batch_ingest markers.

    python benchmarks/batch_ingest.py                 # 1,000,000 lines (about 3 GB of disk in a temp dir)
    python benchmarks/batch_ingest.py --lines 20000 --no-write

The file: chat lines whose prompt lengths are drawn from the bundled ShareGPT sample (mean
about 377 tokens, so about 1.5 KB a line), a system message on one line in four, custom ids
"req-N". The upload goes through Upload.write in 1 MiB chunks, as the API does. Each phase runs
in a fresh child process, so its peak RSS (ru_maxrss) is its own: the ingest child uploads and
validates; the queue child opens the store on the 1M queued lines and measures the runner's calls.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DOC = ROOT / "docs" / "benchmarks.md"
BEGIN, END = "<!-- batch_ingest:start -->", "<!-- batch_ingest:end -->"
MODEL = "llama-8b"
CHUNK = 2**20


def _limits() -> object:
    from chirond.batch.store import BatchLimits

    return BatchLimits(max_file_bytes=8 * 2**30, max_file_lines=10_000_000)


def generate(path: Path, n: int, seed: int = 1) -> None:
    with gzip.open(ROOT / "chirond" / "data" / "sharegpt_lengths.csv.gz", "rt") as f:
        lengths = [int(r.split(",")[0]) for r in f.read().splitlines()[1:]]
    rng = random.Random(seed)
    words = "the quick brown fox jumps over lazy dogs while data flows through every node of the cluster "
    base = words * (4 * max(lengths) // len(words) + 2)
    with open(path, "w") as out:
        for i in range(n):
            chars = 4 * rng.choice(lengths)
            off = rng.randrange(len(words))
            msgs = [{"role": "user", "content": base[off : off + chars]}]
            if i % 4 == 0:
                msgs.insert(0, {"role": "system", "content": "You are a concise assistant."})
            body = {"model": MODEL, "messages": msgs, "max_tokens": 256, "temperature": 0.7}
            out.write(
                json.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
                + "\n"
            )


def child_ingest(d: Path, src: Path) -> dict:
    from chirond.batch.store import BatchStore

    store = BatchStore(d / "chirond.db", d / "files", _limits(), [MODEL])  # type: ignore[arg-type]
    store.open()
    t0 = time.perf_counter()
    up = store.new_upload()
    with open(src, "rb") as f:
        while chunk := f.read(CHUNK):
            up.write(chunk)
    fid = up.commit("alice", "big.jsonl", "batch")["id"]
    t1 = time.perf_counter()
    bid = store.create_batch("alice", fid, "/v1/chat/completions", "24h", None)["id"]
    b = store.validate(bid)
    t2 = time.perf_counter()
    # a second user with a small batch, for the fair-share path
    small = d / "small.jsonl"
    generate(small, 1000, seed=2)
    up = store.new_upload()
    up.write(small.read_bytes().replace(b'"req-', b'"bob-'))
    fid2 = up.commit("bob", "small.jsonl", "batch")["id"]
    store.validate(store.create_batch("bob", fid2, "/v1/chat/completions", "24h", None)["id"])
    store.close()
    assert b["status"] == "in_progress" and b["request_counts"]["failed"] == 0, b
    return {
        "lines": b["request_counts"]["total"],
        "bytes": src.stat().st_size,
        "upload_s": t1 - t0,
        "validate_s": t2 - t1,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "db_mb": (d / "chirond.db").stat().st_size / 2**20,
    }


def _ms(xs: list[float]) -> tuple[float, float]:
    xs = sorted(xs)
    return 1000 * statistics.fmean(xs), 1000 * xs[min(len(xs) - 1, int(0.99 * len(xs)))]


def child_queue(d: Path, calls: int) -> dict:
    from chirond.batch.store import BatchStore, LineResult

    t0 = time.perf_counter()
    store = BatchStore(d / "chirond.db", d / "files", _limits(), [MODEL])  # type: ignore[arg-type]
    store.open()
    t1 = time.perf_counter()
    first = store.next_lines(MODEL, 1)
    t2 = time.perf_counter()
    queued = sum(n for _d, n, _t in store.backlog(MODEL))
    nxt, rec, blg, tck = [], [], [], []
    body = {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok " * 60}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 300, "completion_tokens": 60},
    }
    held = list(first)
    for _ in range(calls):
        a = time.perf_counter()
        lines = store.next_lines(MODEL, 64)
        b = time.perf_counter()
        store.record(LineResult(x.batch_id, x.idx, 200, body) for x in held + lines[:32])
        c = time.perf_counter()
        store.backlog(MODEL)
        e = time.perf_counter()
        store.tick()
        g = time.perf_counter()
        held = lines[32:]
        store.release(held[16:])
        held = held[:16]
        nxt.append(b - a)
        rec.append(c - b)
        blg.append(e - c)
        tck.append(g - e)
    # expiry of everything left: the remaining lines marked in chunks, then the two files written;
    # meanwhile another thread asks the store (as the API does) and times its longest wait
    now = time.time()
    store.clock = lambda: now + 2 * 86400
    waits: list[float] = []
    done = threading.Event()

    def probe() -> None:
        while not done.is_set():
            t = time.perf_counter()
            store.batch_status(first[0].batch_id)
            waits.append(time.perf_counter() - t)
            time.sleep(0.001)

    prober = threading.Thread(target=probe)
    prober.start()
    a = time.perf_counter()
    changed = store.tick()
    expire_s = time.perf_counter() - a
    done.set()
    prober.join()
    store.close()
    return {
        "queued": queued,
        "open_s": t1 - t0,
        "first_ms": 1000 * (t2 - t1),
        "next": _ms(nxt),
        "record": _ms(rec),
        "backlog_us": 1000 * _ms(blg)[0],
        "tick": _ms(tck),
        "expire_s": expire_s,
        "expire_wait_ms": 1000 * max(waits, default=0.0),
        "expired": len(changed),
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def tables(ing: dict, q: dict) -> str:
    lines, gb = ing["lines"], ing["bytes"] / 1e9
    total_s = ing["upload_s"] + ing["validate_s"]
    return "\n".join(
        [
            f"**Ingest** ({lines:,} chat lines, {gb:.2f} GB, ShareGPT prompt lengths; one process):",
            "",
            "| lines | file GB | upload s | validate s | validate lines/s | upload+validate lines/s "
            "| peak RSS MB | DB GB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {lines:,} | {gb:.2f} | {ing['upload_s']:.1f} | {ing['validate_s']:.1f} | "
            f"{lines / ing['validate_s']:,.0f} | {lines / total_s:,.0f} | {ing['rss_mb']:.0f} "
            f"| {ing['db_mb'] / 1024:.2f} |",
            "",
            f"**The runner's calls with {q['queued']:,} lines queued** (milliseconds unless named; each call "
            "leases 64 lines, records 48, releases 16):",
            "",
            "| queued | open s | first next_lines | next_lines(64) mean / p99 | record(48) mean / p99 | backlog µs | "
            "idle tick mean / p99 | expire all s | longest wait meanwhile ms | peak RSS MB |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            f"| {q['queued']:,} | {q['open_s']:.2f} | {q['first_ms']:.1f} | {q['next'][0]:.2f} / {q['next'][1]:.2f} | "
            f"{q['record'][0]:.2f} / {q['record'][1]:.2f} | {q['backlog_us']:.0f} | {q['tick'][0]:.3f} / "
            f"{q['tick'][1]:.3f} | {q['expire_s']:.1f} | {q['expire_wait_ms']:.0f} | {q['rss_mb']:.0f} |",
        ]
    )


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        head, rest = doc.split(BEGIN, 1)
        doc = head + block + rest.split(END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Batch store\n\n" + block + "\n"
    DOC.write_text(doc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=500, help="runner iterations measured with the queue full")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    ap.add_argument("--child", nargs=2, metavar=("PHASE", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        phase, d = args.child
        res = child_ingest(Path(d), Path(d) / "big.jsonl") if phase == "ingest" else child_queue(Path(d), args.calls)
        print(json.dumps(res))
        return
    with tempfile.TemporaryDirectory(prefix="batch-ingest-") as tmp:
        d = Path(tmp)
        t = time.perf_counter()
        generate(d / "big.jsonl", args.lines)
        print(f"generated {args.lines:,} lines in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        ing = run_child("--child", "ingest", str(d))
        (d / "big.jsonl").unlink()
        q = run_child("--calls", str(args.calls), "--child", "queue", str(d))
    env = f"Python {platform.python_version()}, SQLite (WAL, synchronous=NORMAL), {platform.machine()}"
    text = tables(ing, q) + f"\n\n_{env}; `python benchmarks/batch_ingest.py --lines {args.lines}`._"
    print(text)
    if not args.no_write:
        write_doc(text)


if __name__ == "__main__":
    main()
