"""The OpenAI-compatible server, through the official ``openai`` client on loopback: responses equal
the engine's greedy output, streaming equals non-streaming, bad input is a 4xx in OpenAI's error shape,
overload is a 429, and no slot outlives its client."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pytest
import torch
import uvicorn

from lmforge.cli import main
from lmforge.infer.generate import complete
from lmforge.models.gpt import GPT, GPTConfig
from lmforge.models.io import load_model, save_model
from lmforge.serve.app import create_app
from lmforge.serve.config import ServeConfig

TEMPLATE = "{% for m in messages %}{{ bos_token }}{{ m.role }}: {{ m.content }}\n{% endfor %}"
TEMPLATE += "{% if add_generation_prompt %}assistant:{% endif %}"
CONTEXT = 64
NAME = "tiny"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, bpe_tokenizer):
    """A tiny random GPT folder whose tokenizer config carries a chat template."""
    torch.manual_seed(0)
    cfg = GPTConfig(
        vocab_size=bpe_tokenizer.vocab_size,
        max_seq_len=CONTEXT,
        n_layer=2,
        n_head=2,
        d_model=32,
        init_std=0.3,
    )  # large weights: well-separated logits, so greedy has no near-ties between batch shapes
    path = save_model(GPT(cfg).eval(), bpe_tokenizer, tmp_path_factory.mktemp("serve") / NAME)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return path


def start(app, **config) -> tuple[uvicorn.Server, threading.Thread, str]:
    """The app on a free loopback port, in a thread: (server, thread, base URL)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    return server, thread, f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"


@contextmanager
def serving(app):
    server, thread, base = start(app)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def url(model_dir):
    with serving(create_app(model_dir, ServeConfig(max_batch=8, max_queue=256))) as base:
        yield base


def client(base: str, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base}/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    return float(re.search(rf"^lmforge_{name} (\S+)$", text, flags=re.M)[1])


def settle(base: str, name: str = "requests_running", timeout: float = 5.0) -> float:
    """The gauge once it reads 0 (or after ``timeout`` seconds)."""
    end = time.time() + timeout
    while (value := metric(base, name)) and time.time() < end:
        time.sleep(0.02)
    return value


def slow(app, seconds: float) -> None:
    """Make each engine step take ``seconds`` longer, so requests stay running while the test acts."""
    engine = app.state.server.runner.engine
    step = engine.step
    engine.step = lambda: (time.sleep(seconds), step())[1]


def test_completion_matches_the_engine_and_counts_usage(url, model_dir):
    model, tokenizer = load_model(model_dir)
    expected = complete(model, tokenizer, ["The data model"], max_new_tokens=10, temperature=0)[0]
    r = client(url).completions.create(model=NAME, prompt="The data model", max_tokens=10, temperature=0)
    assert r.object == "text_completion" and r.model == NAME and len(r.choices) == 1
    assert r.choices[0].text == expected.text
    assert r.choices[0].finish_reason == expected.finish_reason
    prompt = len(tokenizer.encode("The data model"))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (prompt, len(expected.token_ids))
    assert r.usage.total_tokens == prompt + len(expected.token_ids)
    ids = client(url).completions.create(
        model=NAME, prompt=tokenizer.encode("The data model"), max_tokens=10, temperature=0
    )
    assert ids.choices[0].text == expected.text  # a prompt of token ids


def test_streaming_equals_the_whole_response(url):
    c = client(url)
    kw = dict(model=NAME, prompt="Objects are", max_tokens=12, temperature=0)
    whole = c.completions.create(**kw)
    chunks = list(c.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == whole.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a class?"}]
    chat = c.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0)
    parts = list(
        c.chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0, stream=True)
    )
    assert parts[0].choices[0].delta.role == "assistant"
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    assert parts[-1].choices[0].finish_reason == chat.choices[0].finish_reason


def test_the_raw_stream_is_openais_event_format(url):
    body = {"prompt": "Hi", "max_tokens": 3, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = "".join(r.iter_text())
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])


def test_chat_renders_the_template(url, bpe_tokenizer):
    c = client(url)
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Tell me"}, {"type": "text", "text": " more"}]}
    ]
    chat = c.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    prompt = f"{bpe_tokenizer.special_tokens['bos_token']}user: Tell me more\nassistant:"
    same = c.completions.create(model=NAME, prompt=bpe_tokenizer.encode(prompt), max_tokens=8, temperature=0)
    assert chat.object == "chat.completion" and chat.choices[0].message.role == "assistant"
    assert chat.choices[0].message.content == same.choices[0].text
    assert chat.usage.prompt_tokens == len(bpe_tokenizer.encode(prompt))


def test_chat_endpoint_answers_what_lmforge_chat_prints(url, model_dir, capsys):
    """The same greedy request through /v1/chat/completions and through ``lmforge chat --message``: the
    same rendering of the same conversation, the same text."""
    system, question = "You are terse.", "Tell me a story"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    chat = client(url).chat.completions.create(model=NAME, messages=messages, max_tokens=12, temperature=0)
    argv = ["chat", str(model_dir), "--system", system, "--message", question, "--temperature", "0"]
    assert main([*argv, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == chat.choices[0].message.content + "\n"


def test_n_choices_and_a_list_of_prompts(url):
    c = client(url)
    sampled = c.completions.create(model=NAME, prompt="A", max_tokens=8, temperature=1.0, n=3, seed=5)
    assert [ch.index for ch in sampled.choices] == [0, 1, 2]
    assert len({ch.text for ch in sampled.choices}) > 1  # each choice its own seed
    again = c.completions.create(model=NAME, prompt="A", max_tokens=8, temperature=1.0, n=3, seed=5)
    assert [ch.text for ch in again.choices] == [ch.text for ch in sampled.choices]
    alone = [
        c.completions.create(model=NAME, prompt=p, max_tokens=6, temperature=0).choices[0].text for p in "XY"
    ]
    both = c.completions.create(model=NAME, prompt=["X", "Y"], max_tokens=6, temperature=0, n=2)
    assert [ch.text for ch in both.choices] == [alone[0], alone[0], alone[1], alone[1]]
    streamed = ["", "", "", ""]
    for chunk in c.completions.create(
        model=NAME, prompt=["X", "Y"], max_tokens=6, temperature=0, n=2, stream=True
    ):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == [ch.text for ch in both.choices]


def test_stop_strings_end_the_text(url):
    c = client(url)
    full = c.completions.create(model=NAME, prompt="The", max_tokens=20, temperature=0, stop=[]).choices[0]
    stop = full.text[4:6]
    assert stop.strip() and full.finish_reason == "length"
    cut = c.completions.create(model=NAME, prompt="The", max_tokens=20, temperature=0, stop=[stop]).choices[0]
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


def test_logprobs_and_echo(url):
    c = client(url)
    r = c.completions.create(model=NAME, prompt="On", max_tokens=5, temperature=0, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == r.usage.completion_tokens
    assert "".join(lp.tokens) == r.choices[0].text and all(len(t) <= 2 for t in lp.top_logprobs)
    assert all(v <= 0 for v in lp.token_logprobs) and lp.text_offset[0] == 0
    chat = c.chat.completions.create(
        model=NAME,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    assert [len(t.top_logprobs) for t in chat.choices[0].logprobs.content] == [
        3
    ] * chat.usage.completion_tokens
    echoed = c.completions.create(model=NAME, prompt="On", max_tokens=5, temperature=0, echo=True)
    assert echoed.choices[0].text == "On" + r.choices[0].text


BAD = [  # (path, body, status, param)
    ("completions", b"{not json", 400, None),
    ("completions", b"[1, 2]", 400, None),
    ("completions", {"max_tokens": 4}, 400, "prompt"),
    ("completions", {"prompt": "a", "max_tokens": "8"}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": 0}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": -3}, 400, "max_tokens"),
    ("completions", {"prompt": "a", "max_tokens": 10_000}, 400, "max_tokens"),
    ("completions", {"prompt": "word " * 200, "max_tokens": 4}, 400, "prompt"),
    ("completions", {"prompt": "a", "temperature": 2.5}, 400, "temperature"),
    ("completions", {"prompt": "a", "temperature": "hot"}, 400, "temperature"),
    ("completions", {"prompt": "a", "top_p": 0}, 400, "top_p"),
    ("completions", {"prompt": "a", "presence_penalty": 3}, 400, "presence_penalty"),
    ("completions", {"prompt": "a", "n": 0}, 400, "n"),
    ("completions", {"prompt": "a", "n": 1000}, 400, "n"),
    ("completions", {"prompt": "a", "stop": [""]}, 400, None),
    ("completions", {"prompt": "a", "stop": 7}, 400, "stop"),
    ("completions", {"prompt": {"text": "a"}}, 400, "prompt"),
    ("completions", {"prompt": "a", "stream": "yes"}, 400, "stream"),
    ("completions", {"prompt": "a", "logprobs": 50}, 400, "logprobs"),
    ("completions", {"prompt": "a", "logprobs": 1, "echo": True}, 400, "echo"),
    ("completions", {"prompt": [10**9], "max_tokens": 2}, 400, "prompt"),
    ("completions", {"prompt": "", "max_tokens": 2, "model": "gpt-4"}, 404, "model"),
    ("chat/completions", {"messages": []}, 400, "messages"),
    ("chat/completions", {"messages": [{"role": "robot", "content": "hi"}]}, 400, "messages.0.role"),
    ("chat/completions", {"messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 0},
        400,
        None,
    ),
    (
        "chat/completions",
        {"messages": [{"role": "user", "content": "a"}], "top_logprobs": 2},
        400,
        "top_logprobs",
    ),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD)
def test_bad_input_is_a_4xx_in_openais_shape(url, path, body, status, param):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = httpx.post(f"{url}/v1/{path}", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    if param is not None:
        assert error["param"] == param, error


def test_the_client_sees_openais_exceptions(url):
    c = client(url)
    with pytest.raises(openai.BadRequestError, match="context"):
        c.completions.create(model=NAME, prompt="a", max_tokens=1000)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="nope", prompt="a")
    r = httpx.post(f"{url}/v1/completions", json={"prompt": "a", "max_tokens": 2, "best_of_luck": 1})
    assert r.status_code == 200  # unknown fields are ignored (and logged)
    assert httpx.get(f"{url}/v1/nowhere").json()["error"]["message"]
    assert httpx.get(f"{url}/v1/completions").status_code == 405


def test_models_health_metrics(url):
    models = client(url).models.list()
    assert [m.id for m in models.data] == [NAME]
    assert httpx.get(f"{url}/health").status_code == 200
    text = httpx.get(f"{url}/metrics").text
    for name in ("requests_total", "prompt_tokens_total", "generation_tokens_total", "requests_running"):
        assert f"# TYPE lmforge_{name} " in text
    assert 'lmforge_requests_total{status="200"}' in text
    assert (
        "lmforge_time_to_first_token_seconds_bucket" in text
        and "lmforge_inter_token_latency_seconds_count" in text
    )


def test_chat_without_a_template_is_a_clear_400(model_dir):
    model, tokenizer = load_model(model_dir)
    tokenizer.chat_template = None  # a tokenizer without one (the folder's has one)
    app = create_app((model, tokenizer), ServeConfig(max_batch=2))
    with serving(app) as base, pytest.raises(openai.BadRequestError, match="no chat template"):
        client(base).chat.completions.create(model="lmforge", messages=[{"role": "user", "content": "hi"}])


def test_the_api_key(model_dir):
    with serving(create_app(model_dir, ServeConfig(max_batch=2, api_key="sesame"))) as base:
        with pytest.raises(openai.AuthenticationError):
            client(base, api_key="wrong").completions.create(model=NAME, prompt="a", max_tokens=2)
        assert httpx.post(f"{base}/v1/completions", json={"prompt": "a"}).status_code == 401
        assert httpx.get(f"{base}/v1/models").status_code == 401
        r = client(base, api_key="sesame").completions.create(model=NAME, prompt="a", max_tokens=2)
        assert r.usage.completion_tokens >= 1
        assert httpx.get(f"{base}/health").status_code == 200


def test_a_full_queue_answers_429_and_leaving_clients_free_their_slots(model_dir):
    app = create_app(model_dir, ServeConfig(max_batch=1, max_queue=1))
    slow(app, 0.05)  # 40 tokens: 2 s
    body = {"prompt": "a", "max_tokens": 40, "temperature": 0, "stream": True, "ignore_eos": True}

    async def scenario(base: str) -> None:
        async with httpx.AsyncClient(base_url=base, timeout=10) as http:

            async def hold() -> None:  # a streaming client that reads nothing more
                async with http.stream("POST", "/v1/completions", json=body) as r:
                    await r.aread()

            clients = [asyncio.create_task(hold()) for _ in range(2)]  # one running, one waiting
            while metric(base, "requests_waiting") < 1:
                await asyncio.sleep(0.02)
            async with openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0) as ac:
                with pytest.raises(openai.RateLimitError) as e:
                    await ac.completions.create(model=NAME, prompt="a", max_tokens=2)
            assert e.value.response.headers["retry-after"] == "1"
            assert e.value.body["code"] == "queue_full"
            assert metric(base, "requests_running") == 1
            for task in clients:  # both leave long before their 40 tokens
                task.cancel()
            await asyncio.gather(*clients, return_exceptions=True)

    with serving(app) as base:
        asyncio.run(scenario(base))
        assert settle(base) == 0 and settle(base, "requests_waiting") == 0
        with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
            httpx.post(f"{base}/v1/completions", json={**body, "stream": False}, timeout=0.5)
        assert settle(base) == 0
        t0 = time.time()
        r = client(base).completions.create(model=NAME, prompt="a", max_tokens=2)
        assert r.choices[0].finish_reason and time.time() - t0 < 1.0


def test_a_request_past_the_timeout_is_aborted(model_dir):
    app = create_app(model_dir, ServeConfig(max_batch=1, timeout=0.3))
    slow(app, 0.05)
    with serving(app) as base:
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "a", "max_tokens": 40, "ignore_eos": True})
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        assert settle(base) == 0


def test_200_concurrent_requests_equal_each_served_alone(url):
    prompts = [f"Request number {i} says" for i in range(20)]
    c = client(url)
    alone = {
        p: c.completions.create(model=NAME, prompt=p, max_tokens=8, temperature=0).choices[0].text
        for p in prompts
    }

    async def load() -> list:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0) as ac:
            calls = [
                ac.completions.create(model=NAME, prompt=prompts[i % 20], max_tokens=8, temperature=0)
                for i in range(200)
            ]
            return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(load())
    errors = [r for r in results if isinstance(r, Exception)]
    assert errors == []
    assert [r.choices[0].text for r in results] == [alone[prompts[i % 20]] for i in range(200)]
    assert settle(url) == 0 and metric(url, "requests_waiting") == 0
    batches = re.findall(
        r'^lmforge_batch_size_bucket\{le="(\S+)"\} (\d+)$', httpx.get(f"{url}/metrics").text, re.M
    )
    assert int(batches[0][1]) < int(batches[-1][1])  # steps ran more than one request at once


def test_shutdown_lets_running_requests_finish(model_dir):
    app = create_app(model_dir, ServeConfig(max_batch=2))
    slow(app, 0.02)
    server, thread, base = start(app, timeout_graceful_shutdown=10)
    done = {}
    kw = dict(model=NAME, prompt="a", max_tokens=20, temperature=0, extra_body={"ignore_eos": True})
    call = threading.Thread(target=lambda: done.update(r=client(base).completions.create(**kw)))
    call.start()
    while metric(base, "requests_running") < 1:
        time.sleep(0.01)
    server.should_exit = True
    call.join(timeout=10)
    thread.join(timeout=10)
    assert done["r"].usage.completion_tokens == 20 and done["r"].choices[0].finish_reason == "length"
    assert not app.state.server.runner.thread.is_alive()


def test_the_command_line_builds_the_server(model_dir, monkeypatch):
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    argv = ["serve", str(model_dir), "--port", "8123", "--max-batch", "3", "--api-key", "k", "max_n=2"]
    assert main(argv) == 0
    settings = served["app"].state.server.settings
    assert (served["host"], served["port"], settings.max_batch, settings.api_key, settings.max_n) == (
        "127.0.0.1",
        8123,
        3,
        "k",
        2,
    )
    assert served["app"].state.server.name == NAME
