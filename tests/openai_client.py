"""The official `openai` Python client and a `websockets` client against a running
`tachyon serve` (started by tests/server.rs): completions and chat, streamed and not, with
the streamed text equal to the non-streamed text under greedy decoding; usage with cached
tokens; logprobs; errors raised as the client's own exception types; and the WebSocket
stream. Usage: openai_client.py BASE_URL API_KEY [N]: N tokens per completion (default
20; chats get 4/5 of that), fewer where tokens are slow (the emulated device).
"""

import json
import sys
import urllib.request

import openai
from websockets.sync.client import connect


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def main():
    base, key = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    n_chat = n * 4 // 5
    client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)

    models = client.models.list()
    model = models.data[0].id
    check(model.startswith("SmolLM2"), f"model id {model}")

    # Completions: non-streamed, then streamed with usage; same text byte for byte.
    prompt = "def fibonacci(n):"
    full = client.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0, seed=1)
    text = full.choices[0].text
    check(len(text) > 0, "empty completion")
    check(full.usage.completion_tokens == n, f"usage {full.usage}")
    parts, finish, usage = [], None, None
    for chunk in client.completions.create(
        model=model, prompt=prompt, max_tokens=n, temperature=0, seed=1, stream=True,
        stream_options={"include_usage": True},
    ):
        if chunk.choices:
            parts.append(chunk.choices[0].text)
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    check("".join(parts) == text, f"streamed {''.join(parts)!r} != {text!r}")
    check(finish == "length", f"finish {finish}")
    check(usage is not None and usage.completion_tokens == n, f"stream usage {usage}")
    cached = usage.prompt_tokens_details.cached_tokens
    check(cached == usage.prompt_tokens - 1, f"cached tokens {cached} of {usage.prompt_tokens}")

    # Token-id prompts work too.
    req = urllib.request.Request(
        base + "/tokenize", data=json.dumps({"prompt": prompt}).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        ids = json.loads(r.read())["tokens"]
    by_ids = client.completions.create(model=model, prompt=ids, max_tokens=n, temperature=0)
    check(by_ids.choices[0].text == text, "token-id prompt differs from the text prompt")

    # Chat: same check, plus the role on the first delta.
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Name a prime number."}]
    chat = client.chat.completions.create(model=model, messages=messages, max_tokens=n_chat, temperature=0)
    answer = chat.choices[0].message.content
    check(chat.choices[0].message.role == "assistant", "role")
    deltas, roles = [], []
    for chunk in client.chat.completions.create(model=model, messages=messages, max_tokens=n_chat, temperature=0, stream=True):
        if chunk.choices:
            d = chunk.choices[0].delta
            roles.append(d.role)
            deltas.append(d.content or "")
    check(roles[0] == "assistant", f"first delta role {roles[0]}")
    check("".join(deltas) == answer, f"chat streamed {''.join(deltas)!r} != {answer!r}")

    # Logprobs in both layouts.
    lp = client.completions.create(model=model, prompt=prompt, max_tokens=3, temperature=0, logprobs=2)
    check(len(lp.choices[0].logprobs.tokens) == 3, "completion logprobs")
    check(all(len(t) == 2 for t in lp.choices[0].logprobs.top_logprobs), "top_logprobs")
    lp = client.chat.completions.create(model=model, messages=messages, max_tokens=2, temperature=0, logprobs=True, top_logprobs=2)
    check(len(lp.choices[0].logprobs.content) == 2, "chat logprobs")

    # Errors come back as the client's exception types.
    try:
        client.completions.create(model=model, prompt="x", max_tokens=-1)
        check(False, "negative max_tokens accepted")
    except openai.BadRequestError as e:
        check(e.status_code == 400, "status")
    bad = openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        check(False, "wrong key accepted")
    except openai.AuthenticationError:
        pass

    # The WebSocket stream: one frame per token, same text as HTTP.
    ws_url = base.replace("http://", "ws://") + "/v1/stream"
    with connect(ws_url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        ws.send(json.dumps({"id": 1, "prompt": prompt, "max_tokens": n, "temperature": 0}))
        got, tokens = [], 0
        while True:
            frame = json.loads(ws.recv(timeout=60))
            check(frame["id"] == 1, f"frame id {frame}")
            if frame["type"] == "token":
                tokens += 1
                got.append(frame["text"])
            elif frame["type"] == "done":
                got.append(frame["text"])
                check(frame["finish_reason"] == "length", f"ws finish {frame}")
                break
            else:
                raise AssertionError(f"unexpected frame {frame}")
        check(tokens == n, f"{tokens} token frames")
        check("".join(got) == text, f"ws text {''.join(got)!r} != {text!r}")

    print("all openai client checks passed")


if __name__ == "__main__":
    main()
