"""Drives a running `flash-moe serve` with the official `openai` Python client: models, chat completions and
completions streamed and not (the same text both ways), sampling parameters and seeds, a forced tool call and its
round trip (also streamed), reasoning where the template marks it, a cancelled stream, and the client's error
classes for a bad request and a wrong key.

Run by crates/cli/tests/serve_clients.rs with FLASH_MOE_URL (http://HOST:PORT), FLASH_MOE_KEY, and
FLASH_MOE_REASONING=1 when the served template opens the model's reasoning.
"""
import json
import os
import time
import urllib.request

import openai

URL = os.environ["FLASH_MOE_URL"]
KEY = os.environ["FLASH_MOE_KEY"]
REASONING = os.environ.get("FLASH_MOE_REASONING") == "1"
client = openai.OpenAI(base_url=URL + "/v1", api_key=KEY, max_retries=0, timeout=120)

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 16},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
        },
    },
}
MESSAGES = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


def context_length():
    req = urllib.request.Request(URL + "/v1/models", headers={"Authorization": "Bearer " + KEY})
    return json.loads(urllib.request.urlopen(req).read())["data"][0]["context_length"]


def metric(name):
    req = urllib.request.Request(URL + "/metrics", headers={"Authorization": "Bearer " + KEY})
    text = urllib.request.urlopen(req).read().decode()
    for line in text.splitlines():
        if line.startswith("flashmoe_" + name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


def test_models():
    ids = [m.id for m in client.models.list().data]
    assert len(ids) == 1, ids
    return ids[0]


def test_chat_stream_equals_whole():
    whole = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=24, temperature=0)
    choice = whole.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length"), choice.finish_reason
    u = whole.usage
    assert u.prompt_tokens > 0 and 0 < u.completion_tokens <= 24 and u.total_tokens == u.prompt_tokens + u.completion_tokens
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == choice.message.content, (text, choice.message.content)
    assert finish == [choice.finish_reason], finish
    assert chunks[-1].usage.completion_tokens == u.completion_tokens
    whole_reasoning = (choice.message.model_extra or {}).get("reasoning_content") or ""
    assert reasoning == whole_reasoning
    if REASONING:
        assert whole_reasoning, "the template opens the reasoning: reasoning_content expected"


def test_sampling_and_seed():
    # top_k and min_p are not in OpenAI's API: extra fields, as llama.cpp's server takes them.
    args = dict(model="m", messages=MESSAGES, max_tokens=16, temperature=0.9, top_p=0.95, presence_penalty=0.5,
                frequency_penalty=0.3, stop=["\n\n\n"], extra_body={"top_k": 50, "min_p": 0.02})
    a = client.chat.completions.create(seed=11, **args).choices[0].message
    b = client.chat.completions.create(seed=11, **args).choices[0].message
    assert (a.content, a.model_extra) == (b.content, b.model_extra), "the same seed must give the same reply"


def test_completions_stream_equals_whole():
    whole = client.completions.create(model="m", prompt="def fibonacci(n):", max_tokens=20, temperature=0)
    assert whole.choices[0].finish_reason in ("stop", "length")
    text = "".join(c.choices[0].text for c in client.completions.create(
        model="m", prompt="def fibonacci(n):", max_tokens=20, temperature=0, stream=True) if c.choices)
    assert text == whole.choices[0].text, (text, whole.choices[0].text)


def test_tool_call_round_trip():
    asked = MESSAGES[:1] + [{"role": "user", "content": "What is the weather in Paris?"}]
    r = client.chat.completions.create(model="m", messages=asked, tools=[WEATHER], max_tokens=200, temperature=0.7,
                                       seed=3, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    call = choice.message.tool_calls[0]
    args = json.loads(call.function.arguments)
    assert call.function.name == "get_weather" and isinstance(args["city"], str), call
    assert args["unit"] in ("celsius", "fahrenheit"), args
    # Streamed: the same call.
    chunks = list(client.chat.completions.create(model="m", messages=asked, tools=[WEATHER], max_tokens=200,
                                                 temperature=0.7, seed=3, stream=True, tool_choice="required"))
    deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas and deltas[0].function.name == "get_weather", deltas
    assert json.loads(deltas[0].function.arguments) == args
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # The result goes back; the model answers.
    follow = asked + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "clear"})},
    ]
    final = client.chat.completions.create(model="m", messages=follow, tools=[WEATHER], max_tokens=16, temperature=0)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert final.usage.prompt_tokens > r.usage.prompt_tokens


def test_cancelled_stream():
    generated = metric("generated_tokens_total")
    stream = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=100000, temperature=1.0,
                                            seed=5, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    deadline = time.time() + 30
    while metric("requests_active") > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert metric("requests_active") == 0, "the cancelled sequence is still decoding"
    done = metric("generated_tokens_total") - generated
    prompt = client.chat.completions.create(model="m", messages=MESSAGES, max_tokens=1).usage.prompt_tokens
    # It stopped long before filling its context (the reply's length without the cancellation).
    room = context_length() - prompt
    # Half the room, as in anthropic_client.py's test_cancelled_stream (why there).
    assert done < room / 2, f"{done} tokens generated of {room} for a stream closed after 3 chunks"


def test_errors():
    try:
        client.chat.completions.create(model="m", messages=MESSAGES, temperature=5)
        raise AssertionError("temperature 5 was accepted")
    except openai.BadRequestError as e:
        assert "temperature" in str(e), e
    try:
        client.chat.completions.create(model="m", messages=[])
        raise AssertionError("no messages was accepted")
    except openai.BadRequestError as e:
        assert "messages" in str(e), e
    bad = openai.OpenAI(base_url=URL + "/v1", api_key="wrong", max_retries=0)
    try:
        bad.models.list()
        raise AssertionError("a wrong key was accepted")
    except openai.AuthenticationError:
        pass


if __name__ == "__main__":
    name = test_models()
    for t in [test_chat_stream_equals_whole, test_sampling_and_seed, test_completions_stream_equals_whole,
              test_tool_call_round_trip, test_cancelled_stream, test_errors]:
        t0 = time.time()
        t()
        print(f"ok  {t.__name__} ({time.time() - t0:.2f} s)", flush=True)
    print(f"openai {openai.__version__}: all passed against {name}")
