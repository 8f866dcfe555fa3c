"""Two tachyon replicas behind LiteLLM's Router (run by tests/router.rs).

usage: litellm_router.py ADDR_A ADDR_B PID_A

1. Spread: requests through the router reach both replicas (their /metrics say so).
2. Failover: replica A is killed (SIGKILL) while it runs a request; every request still
   gets one complete answer, equal to the greedy answer the replicas gave before.
3. The survivor's time to first token over streamed requests: p50 and p99 printed, p99
   bounded.
"""

import concurrent.futures as cf
import os
import signal
import sys
import time
import urllib.request

# No network at run time: the model price map ships inside the package.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")

import litellm  # noqa: E402
from litellm import Router  # noqa: E402

litellm.telemetry = False
litellm.suppress_debug_info = True

addr_a, addr_b, pid_a = sys.argv[1], sys.argv[2], int(sys.argv[3])


def deployment(addr):
    return {
        "model_name": "tachyon",
        "litellm_params": {
            "model": "openai/smollm2",
            "api_base": f"http://{addr}/v1",
            "api_key": "unused",
            "timeout": 120,
            # The router retries; the client under it should not.
            "max_retries": 0,
        },
    }


router = Router(
    model_list=[deployment(addr_a), deployment(addr_b)],
    routing_strategy="simple-shuffle",
    num_retries=3,
    retry_after=0,
    allowed_fails=0,
    cooldown_time=300,
)

PROMPTS = [f"Name a fruit that starts with the letter {c}." for c in "ABCDEFGH"]
PARAMS = dict(max_tokens=12, temperature=0)


def metric(addr, name):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} on {addr}")


def ask(prompt):
    r = router.completion(
        model="tachyon", messages=[{"role": "user", "content": prompt}], **PARAMS
    )
    choice = r.choices[0]
    return choice.message.content, choice.finish_reason


# 1. Spread, and the reference answers (greedy: the same on either replica).
reference = {}
with cf.ThreadPoolExecutor(4) as pool:
    for p, (text, finish) in zip(PROMPTS * 2, pool.map(ask, PROMPTS * 2)):
        assert finish in ("stop", "length"), finish
        assert text, "empty answer"
        if p in reference:
            assert reference[p] == text, (p, reference[p], text)
        reference[p] = text
served_a = metric(addr_a, "tachyon_requests_total")
served_b = metric(addr_b, "tachyon_requests_total")
print(f"spread: replica A ran {served_a:.0f}, replica B {served_b:.0f} of {2 * len(PROMPTS)}")
assert served_a > 0 and served_b > 0, "the router used one replica only"
assert served_a + served_b == 2 * len(PROMPTS)

# 2. Failover: kill A while it has a request running or waiting.
jobs = PROMPTS * 3
with cf.ThreadPoolExecutor(4) as pool:
    futures = [pool.submit(ask, p) for p in jobs]
    deadline = time.time() + 60
    while time.time() < deadline:
        busy = metric(addr_a, "vllm:num_requests_running") + metric(
            addr_a, "vllm:num_requests_waiting"
        )
        if busy >= 1:
            break
        time.sleep(0.005)
    else:
        raise AssertionError("replica A never had a request in flight")
    os.kill(pid_a, signal.SIGKILL)
    killed_at = time.time()
    answers = [f.result() for f in futures]
for p, (text, finish) in zip(jobs, answers):
    assert finish in ("stop", "length"), finish
    assert text == reference[p], f"after the kill {p!r} got {text!r}, not {reference[p]!r}"
print(f"failover: replica A killed with {busy:.0f} request(s) in flight; "
      f"all {len(jobs)} requests got their complete answer")

# 3. The survivor's time to first token, through the router.
ttfts = []
for i in range(20):
    t0 = time.perf_counter()
    first = None
    text = ""
    for chunk in router.completion(
        model="tachyon",
        messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
        stream=True,
        **PARAMS,
    ):
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            if first is None:
                first = time.perf_counter() - t0
            text += delta
    assert first is not None, "a stream without text"
    assert text == reference[PROMPTS[i % len(PROMPTS)]], text
    ttfts.append(first)
ttfts.sort()
p50 = ttfts[len(ttfts) // 2]
p99 = ttfts[min(len(ttfts) - 1, int(0.99 * len(ttfts)))]
print(f"survivor TTFT over {len(ttfts)} streamed requests: p50 {p50 * 1e3:.1f} ms, "
      f"p99 {p99 * 1e3:.1f} ms")
assert p99 < 10.0, f"p99 time to first token {p99:.2f} s on the survivor"
print("ok")
