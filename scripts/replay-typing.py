#!/usr/bin/env python3
"""Replay typing against a running `tachyon serve`: type source files one character at a
time (with an occasional backspace) and send one completion request per keystroke over the
WebSocket (`/v1/stream`), cancel-and-replace: a keystroke that comes while the previous
completion still runs replaces it.

Reports, over the run: requests, verify steps, proposed and kept tokens per verify step
(from the server's /metrics), time to first token and time to the last token (p50 / p99,
from the `done` frames of requests that finished), as text or --json.

  scripts/replay-typing.py --server 127.0.0.1:8080 FILE... [--chars 200]
      [--max-tokens 16] [--interval-ms 0] [--backspace-every 23] [--texts-out OUT.json]

--interval-ms 0 waits for each completion before the next keystroke (deterministic: every
request finishes, so two servers' texts can be compared with --texts-out); a positive
interval types at that pace and replaces whatever is still running.
Needs the `websockets` package (scripts/test.sh's venv has it).
"""

import argparse
import json
import sys
import time
import urllib.request

from websockets.sync.client import connect


def metrics(server):
    want = {
        "tachyon_speculative_verify_steps_total": "verify",
        "tachyon_speculative_proposed_tokens_total": "proposed",
        "tachyon_speculative_accepted_tokens_total": "kept",
        "tachyon_generation_tokens_total": "generated",
    }
    out = dict.fromkeys(want.values(), 0.0)
    with urllib.request.urlopen(f"http://{server}/metrics", timeout=30) as r:
        for line in r.read().decode().splitlines():
            name, _, value = line.partition(" ")
            if name in want:
                out[want[name]] = float(value)
    return out


def keystrokes(text, chars, backspace_every):
    """The prompts typed: one per keystroke, a backspace (and the character retyped) every
    `backspace_every` characters."""
    typed = ""
    for i, ch in enumerate(text[:chars]):
        typed += ch
        yield typed
        if backspace_every and i % backspace_every == backspace_every - 1 and len(typed) > 1:
            yield typed[:-1]
            yield typed


def quantile(xs, q):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+")
    ap.add_argument("--server", required=True, help="HOST:PORT of tachyon serve")
    ap.add_argument("--chars", type=int, default=200, help="characters typed per file")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--interval-ms", type=float, default=0.0)
    ap.add_argument("--backspace-every", type=int, default=23)
    ap.add_argument("--texts-out", help="write every finished request's text here (JSON)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()

    before = metrics(a.server)
    ttft, last, texts = [], [], []
    sent = finished = cancelled = 0
    t_run = time.perf_counter()
    with connect(f"ws://{a.server}/v1/stream", max_size=None) as ws:
        for path in a.files:
            with open(path, encoding="utf-8") as f:
                text = f.read()
            for prompt in keystrokes(text, a.chars, a.backspace_every):
                rid = sent
                ws.send(json.dumps({"id": rid, "prompt": prompt, "max_tokens": a.max_tokens,
                                    "temperature": 0}))
                sent += 1
                deadline = (time.perf_counter() + a.interval_ms / 1e3) if a.interval_ms > 0 else None
                out = ""
                while True:
                    timeout = None if deadline is None else max(0.0, deadline - time.perf_counter())
                    try:
                        frame = json.loads(ws.recv(timeout=timeout))
                    except TimeoutError:
                        break  # the next keystroke replaces this request
                    if frame.get("id") != rid:
                        if frame["type"] == "done" and frame["finish_reason"] == "cancelled":
                            cancelled += 1
                        continue  # a replaced request's last frames
                    if frame["type"] == "token":
                        out += frame["text"]
                    elif frame["type"] == "done":
                        out += frame["text"]
                        if frame["finish_reason"] == "cancelled":
                            cancelled += 1
                        else:
                            finished += 1
                            ttft.append(frame["timing"]["ttft_us"] / 1e3)
                            last.append(frame["timing"]["total_us"] / 1e3)
                            texts.append({"prompt": prompt, "text": out})
                        break
                    elif frame["type"] == "error":
                        sys.exit(f"request {rid}: {frame['error']}")
                if deadline is not None:
                    time.sleep(max(0.0, deadline - time.perf_counter()))
        # Let the last request end before reading the counters.
        ws.send(json.dumps({"type": "cancel"}))
    wall = time.perf_counter() - t_run
    after = metrics(a.server)
    d = {k: after[k] - before[k] for k in after}
    report = {
        "requests": sent,
        "finished": finished,
        "cancelled": cancelled,
        "generated_tokens": d["generated"],
        "verify_steps": d["verify"],
        "proposed_per_verify": d["proposed"] / d["verify"] if d["verify"] else 0.0,
        "kept_per_verify": d["kept"] / d["verify"] if d["verify"] else 0.0,
        "ttft_ms_p50": quantile(ttft, 0.5),
        "ttft_ms_p99": quantile(ttft, 0.99),
        "last_token_ms_p50": quantile(last, 0.5),
        "last_token_ms_p99": quantile(last, 0.99),
        "wall_s": wall,
    }
    if a.texts_out:
        with open(a.texts_out, "w", encoding="utf-8") as f:
            json.dump(texts, f)
    if a.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>22}: {v:.2f}" if isinstance(v, float) else f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
