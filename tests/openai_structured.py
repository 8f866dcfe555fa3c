"""Structured output and tool calls through the official `openai` client against a running
`tachyon serve` on Qwen2.5-Coder-0.5B (started by tests/structured_server.rs):
`response_format` with a pydantic model through the parse helper on 20 prompts, each a
whole object on one line; tools with
tool_choice="required" whose arguments validate against each schema; "auto" on a prompt
that needs no tool returns text; a three-turn tool loop; streamed delta.tool_calls equal
to the non-streamed calls; hostile schemas and grammars are 400s and the server lives on.
Usage: openai_structured.py BASE_URL
"""

import json
import sys
import time
import urllib.request

import openai
from pydantic import BaseModel


def check(cond, what):
    if not cond:
        raise AssertionError(what)


class City(BaseModel):
    name: str
    country: str
    population_millions: float
    landmarks: list[str]


class Add(BaseModel):
    a: int
    b: int


class Weather(BaseModel):
    city: str


TOOLS = [
    {"type": "function", "function": {"name": "add", "description": "Add two integers",
     "parameters": Add.model_json_schema()}},
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city",
     "parameters": Weather.model_json_schema()}},
]
SCHEMAS = {"add": Add, "get_weather": Weather}

CITIES = ["Paris", "Tokyo", "Lagos", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Quito", "Seoul",
          "Hanoi", "Dakar", "Sofia", "Perth", "Boston", "Madrid", "Nairobi", "Kyiv", "Bogota", "Manila"]


def main():
    base = sys.argv[1]
    client = openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id

    # 20 varied prompts through the parse helper, greedy and sampled: every answer ends
    # (finish "stop") within 64 tokens as a valid City. The longest measured take about 50
    # tokens on one line; a constraint that never lets the object close, or that lets the
    # model spend its tokens on layout, fails here.
    for i, city in enumerate(CITIES):
        kw = dict(model=model, response_format=City, temperature=0 if i % 2 == 0 else 0.7, seed=i,
                  max_completion_tokens=64,
                  messages=[{"role": "user", "content": f"Describe {city} as JSON: name, country, population in millions, two landmarks."}])
        parse = client.beta.chat.completions.parse if hasattr(client, "beta") and hasattr(client.beta, "chat") \
            else client.chat.completions.parse
        try:
            r = parse(**kw)
        except openai.LengthFinishReasonError as e:
            raise AssertionError(f"{city}: cut at 64 tokens: {e.completion.choices[0].message.content!r}")
        choice = r.choices[0]
        check(choice.finish_reason == "stop", f"{city}: finish {choice.finish_reason}")
        check(isinstance(choice.message.parsed, City), f"{city}: {choice.message.content!r}")
        check("\n" not in choice.message.content, f"{city}: not on one line: {choice.message.content!r}")
        print(f"  {city}: {r.usage.completion_tokens} tokens: {choice.message.content}")
    print("response_format parse: 20 prompts ok")

    # tool_choice="required": calls of declared functions with valid arguments.
    msgs = [{"role": "user", "content": "What is 17 plus 25?"}]
    r = client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, tool_choice="required",
                                       temperature=0, max_completion_tokens=64, parallel_tool_calls=False)
    c = r.choices[0]
    check(c.finish_reason == "tool_calls", f"finish {c.finish_reason}")
    calls = c.message.tool_calls
    check(len(calls) == 1, f"calls {calls}")
    for call in calls:
        SCHEMAS[call.function.name].model_validate_json(call.function.arguments)
    # The weather tool named explicitly.
    r = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Is it raining in Oslo?"}], tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}}, temperature=0, max_completion_tokens=48)
    wc = r.choices[0].message.tool_calls
    check(len(wc) == 1 and wc[0].function.name == "get_weather", f"named {wc}")
    Weather.model_validate_json(wc[0].function.arguments)
    print("tools required/named ok")

    # Streamed delta.tool_calls assemble to the non-streamed calls.
    assembled = {}
    finish = None
    for chunk in client.chat.completions.create(model=model, messages=msgs, tools=TOOLS, tool_choice="required",
                                                temperature=0, max_completion_tokens=64, parallel_tool_calls=False,
                                                stream=True):
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        finish = chunk.choices[0].finish_reason or finish
        for tc in d.tool_calls or []:
            e = assembled.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                e["id"] = tc.id
            if tc.function and tc.function.name:
                e["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                e["arguments"] += tc.function.arguments
    check(finish == "tool_calls", f"stream finish {finish}")
    got = [(e["name"], e["arguments"]) for _, e in sorted(assembled.items())]
    want = [(x.function.name, x.function.arguments) for x in calls]
    check(got == want, f"streamed {got} != {want}")
    print("streamed tool calls ok")

    # Three-turn loop: call, tool result, final answer in text.
    call = calls[0]
    args = json.loads(call.function.arguments)
    loop = msgs + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": str(args.get("a", 0) + args.get("b", 0))},
    ]
    r = client.chat.completions.create(model=model, messages=loop, tools=TOOLS, tool_choice="auto",
                                       temperature=0, max_completion_tokens=48)
    c = r.choices[0]
    check(c.message.tool_calls is None and c.message.content, f"final turn {c.message}")
    print("three-turn tool loop ok:", c.message.content[:60].replace("\n", " "))

    # "auto" on a prompt that needs no tool: text.
    r = client.chat.completions.create(model=model, tools=TOOLS, tool_choice="auto", temperature=0,
                                       max_completion_tokens=24,
                                       messages=[{"role": "user", "content": "Say hello in French, one word."}])
    c = r.choices[0]
    check(c.message.content and not c.message.tool_calls, f"auto text {c.message}")
    print("auto without a tool ok")

    # Hostile input: 400s, quickly, and the server lives on.
    hostile = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": {"enum": [f"v{i:09}" for i in range(30_000)]}}}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "bad", "schema": {"type": "nonsense"}}}},
        {"tools": [{"type": "function", "function": {"parameters": {}}}]},
        {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "deep", "schema": json.loads('{"items":' * 100 + '{}' + '}' * 100)}}},
    ]
    for extra in hostile:
        t0 = time.time()
        try:
            client.chat.completions.create(model=model, messages=msgs, max_completion_tokens=4, **extra)
            raise AssertionError(f"accepted {str(extra)[:80]}")
        except openai.BadRequestError as e:
            check(time.time() - t0 < 20, f"slow refusal {time.time() - t0:.1f}s")
            print("refused:", str(e)[:100])
    for body in [{"prompt": "x", "grammar": {"type": "regex", "pattern": "("}},
                 {"prompt": "x", "grammar": "start: start start | \"a\"\nstart: ("}]:
        req = urllib.request.Request(base + "/v1/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=30)
            raise AssertionError(f"accepted {body}")
        except urllib.error.HTTPError as e:
            check(e.code == 400, f"status {e.code}")
    with urllib.request.urlopen(base + "/health", timeout=10) as h:
        check(h.status == 200, "server died")
    print("all structured output checks passed")


if __name__ == "__main__":
    main()
