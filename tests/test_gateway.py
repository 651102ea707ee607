"""The OpenAI-compatible gateway, driven by the official `openai` client, over the shared real tritonserver."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from lathe.core.errors import ConfigError
from lathe.serving.client import complete
from lathe.serving.config import GatewayConfig
from lathe.serving.engine import Engine
from lathe.serving.gateway import key_digest, running_gateway, serve_gateway
from lathe.serving.server import TritonServer, free_port, port_busy
from tests.processes import wait_for_line
from tests.served import PROMPT, reference

MODEL = "lathe-code"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('telemetry') / 'telemetry.db'}"


@pytest.fixture(scope="module")
def gateway(server: TritonServer, store_url: str) -> Iterator[str]:
    with running_gateway(GatewayConfig(), server.endpoints.grpc, MODEL, store_url) as url:
        yield url


@pytest.fixture(scope="module")
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway, api_key="unused", max_retries=0)


def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """POST raw bytes; the status and the JSON answer, error or not."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_plain_completion_is_the_served_greedy_completion(client: openai.OpenAI, server: TritonServer, engine: Engine) -> None:
    got = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=12)
    [choice] = got.choices
    assert choice.text == complete(server.endpoints.grpc, PROMPT, max_tokens=12).text
    assert choice.text == engine.tokenizer.decode(reference(engine, PROMPT, 12), skip_special_tokens=True)
    assert choice.finish_reason == "length" and got.id.startswith("cmpl-") and got.model == MODEL
    assert got.usage.prompt_tokens == len(engine.encode(PROMPT)) and got.usage.completion_tokens == 12
    assert got.system_fingerprint == f"{MODEL}:3"  # the Triton version (the registry's) that made it
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_a_suffix_makes_a_fim_prompt(client: openai.OpenAI, engine: Engine) -> None:
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    got = client.completions.create(model=MODEL, prompt=prefix, suffix=suffix, max_tokens=10)
    fim_ids = engine.fim_prompt_ids(prefix, suffix, 10)
    assert got.usage.prompt_tokens == len(fim_ids) == len(engine.encode(prefix)) + len(engine.encode(suffix)) + 3
    assert got.choices[0].text == engine.tokenizer.decode(reference(engine, fim_ids, 10), skip_special_tokens=True)
    # a cursor in a long file: prefix and suffix are cut to leave room for the middle, never refused
    long = client.completions.create(model=MODEL, prompt="x = 1\n" * 300, suffix="y = 2\n" * 300, max_tokens=8)
    assert long.usage.prompt_tokens == engine.context - 8


def test_a_client_side_fim_prompt_is_laid_out_by_the_server(client: openai.OpenAI) -> None:
    """llm-vscode sends `<fim_prefix>p<fim_suffix>s<fim_middle>` as the prompt: served exactly as prompt=p, suffix=s."""
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    templated = client.completions.create(
        model=MODEL, prompt=f"<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>", max_tokens=10
    )
    direct = client.completions.create(model=MODEL, prompt=prefix, suffix=suffix, max_tokens=10)
    assert templated.choices[0].text == direct.choices[0].text and templated.usage.prompt_tokens == direct.usage.prompt_tokens


def test_streaming_sends_the_same_text_in_pieces(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24).choices[0].text
    chunks = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=24, stream=True, stream_options={"include_usage": True})
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) > 3 and "".join(texts) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24


def test_n_choices_are_seeded_and_distinct(client: openai.OpenAI) -> None:
    def sample() -> list[str]:
        got = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, n=3, temperature=1.0, seed=11)
        assert [c.index for c in got.choices] == [0, 1, 2] and got.usage.completion_tokens == 30
        return [c.text for c in got.choices]

    first = sample()
    assert sample() == first and len(set(first)) > 1  # replayable with a seed, yet not three copies
    streamed = list(
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=10, n=3, temperature=1.0, seed=11, stream=True)
    )
    by_index = {i: "".join(c.choices[0].text for c in streamed if c.choices[0].index == i) for i in range(3)}
    assert [by_index[i] for i in range(3)] == first


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"model": MODEL}, 400, "prompt is required"),
        ({"model": "gpt-4", "prompt": "x"}, 404, "model 'gpt-4' is not served here; use 'lathe-code'"),
        ({"model": MODEL, "prompt": "x", "max_tokens": 10**6}, 400, "max_tokens must be between 1 and 1024"),
        ({"model": MODEL, "prompt": "x", "max_tokens": "8"}, 400, "max_tokens: input should be a valid integer, got '8'"),
        (
            {"model": MODEL, "prompt": "x", "temprature": 0.5},
            400,
            "unknown field temprature; accepted fields: model, prompt, suffix",
        ),
        ({"model": MODEL, "prompt": "x", "n": 99}, 400, "n must be between 1 and 8"),
        ({"model": MODEL, "prompt": "x", "logprobs": 5}, 400, "logprobs is not supported by this server"),
        ({"model": MODEL, "prompt": "x", "top_p": 3.0}, 400, r"top_p must be in \(0, 1\]"),
        ([1, 2, 3], 400, "the request body must be a JSON object"),
        ("hello", 400, "the request body must be a JSON object"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(
    gateway: str, client: openai.OpenAI, body: Any, status: int, message: str
) -> None:
    import re

    code, answer = post(f"{gateway}/completions", json.dumps(body).encode())
    assert code == status and re.search(message, answer["error"]["message"]), answer
    assert client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=2).choices[0].text  # still serving


def test_malformed_json_and_oversized_bodies(gateway: str) -> None:
    code, answer = post(f"{gateway}/completions", b'{"model": ')
    assert code == 400 and "not valid JSON" in answer["error"]["message"]
    code, answer = post(f"{gateway}/completions", json.dumps({"model": MODEL, "prompt": "x" * (2 << 20)}).encode())
    assert code == 413 and "serve.gateway.max_body_bytes" in answer["error"]["message"]


def test_triton_unreachable_is_a_503_naming_it(store_url: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    with running_gateway(GatewayConfig(), dead, MODEL, store_url) as url:
        code, answer = post(f"{url}/completions", json.dumps({"model": MODEL, "prompt": "x"}).encode())
        assert code == 503 and f"Triton at {dead} is unreachable" in answer["error"]["message"]
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(url.removesuffix("/v1") + "/health/ready", timeout=10)
        assert err.value.code == 503


def test_api_keys(server: TritonServer, store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    keys = tmp_path / "keys"
    made = subprocess.run(
        [sys.executable, "-m", "lathe.pipelines.cli", "api-key", "new", "--file", str(keys), "--name", "ci"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    key = made.stdout.strip()
    assert made.returncode == 0 and key_digest(key) in keys.read_text() and key not in keys.read_text()
    other = "lathe-from-the-environment"
    monkeypatch.setenv("LATHE_API_KEY_HASHES", key_digest(other))
    with running_gateway(GatewayConfig(api_keys_file=str(keys)), server.endpoints.grpc, MODEL, store_url) as url:
        with pytest.raises(openai.AuthenticationError, match="missing or unknown API key"):
            openai.OpenAI(base_url=url, api_key="wrong", max_retries=0).completions.create(model=MODEL, prompt="x", max_tokens=1)
        for good in (key, other):
            assert (
                openai.OpenAI(base_url=url, api_key=good, max_retries=0)
                .completions.create(model=MODEL, prompt="x", max_tokens=1)
                .choices
            )
    monkeypatch.delenv("LATHE_API_KEY_HASHES")
    with pytest.raises(ConfigError, match="would listen on 0.0.0.0 with no API keys"):
        serve_gateway(GatewayConfig(host="0.0.0.0"), server.endpoints.grpc, MODEL, store_url)
    monkeypatch.setenv("LATHE_API_KEY_HASHES", "not-a-digest")
    with pytest.raises(ConfigError, match="must be SHA-256 hex"):
        serve_gateway(GatewayConfig(), server.endpoints.grpc, MODEL, store_url)


def test_lathe_serve_runs_triton_and_the_gateway_and_a_kill_takes_both(repository: dict[str, Path], tmp_path: Path) -> None:
    import psutil

    ports = [free_port() for _ in range(4)]
    lathe = [
        sys.executable,
        "-m",
        "lathe.pipelines.cli",
        "serve",
        "--repository",
        str(repository["python"]),
        "--set",
        f"serve.gateway.telemetry_url=sqlite:///{tmp_path / 'telemetry.db'}",
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--api-port",
        str(ports[3]),
    ]
    proc = subprocess.Popen(lathe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for_line(proc, "OpenAI-compatible", timeout_s=300), "lathe serve did not come up"
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{ports[3]}/v1", api_key="unused", max_retries=3)
        assert client.completions.create(model=MODEL, prompt=PROMPT, suffix="\n", max_tokens=4).usage.completion_tokens >= 1
        triton = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "tritonserver"]
        proc.kill()  # kill -9: the gateway dies with its process, Triton by its parent-death signal
        proc.wait()
        gone, alive = psutil.wait_procs(triton, timeout=60)
        assert alive == [] and not any(port_busy(p) for p in ports)
    finally:
        proc.kill()


def test_events_are_stored_counted_and_survive_a_restart(
    server: TritonServer, gateway: str, client: openai.OpenAI, store_url: str
) -> None:
    raw = client.completions.with_raw_response.create(
        model=MODEL,
        prompt=PROMPT,
        max_tokens=4,
        n=2,
        temperature=1.0,
        seed=3,
        extra_headers={"x-lathe-user": "bob"},
        extra_body={"filename": "app.py"},
    )
    completion = raw.parse()
    assert raw.headers["x-lathe-track"] == "production"
    for kind, index in (("view", 0), ("select", 0), ("view", 1), ("dismiss", 1)):
        code, answer = post(
            f"{gateway}/events",
            json.dumps({"type": kind, "completion_id": completion.id, "choice_index": index, "elapsed": 900}).encode(),
        )
        assert code == 200 and answer == {"status": "recorded"}
    for body, status, message in (
        ({"type": "select", "completion_id": "cmpl-nope"}, 404, "completion_id 'cmpl-nope' is unknown"),
        ({"type": "select", "completion_id": completion.id, "choice_index": 5}, 404, "choice_index 5 is out of range"),
        ({"type": "accept", "completion_id": completion.id}, 400, "type: input should be 'view', 'select' or 'dismiss'"),
    ):
        code, answer = post(f"{gateway}/events", json.dumps(body).encode())
        assert code == status and message in answer["error"]["message"], answer
    with urllib.request.urlopen(gateway.removesuffix("/v1") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    labels = 'language="python",model_version="3",track="production"'
    for line in (
        f"lathe_suggestions_shown_total{{{labels}}} 2.0",
        f"lathe_suggestions_accepted_total{{{labels}}} 1.0",
        f"lathe_suggestions_dismissed_total{{{labels}}} 1.0",
        'lathe_events_rejected_total{reason="unknown_completion"} 2.0',
    ):
        assert line in text, line
    assert 'lathe_completion_latency_seconds_count{model_version="3",track="production"}' in text
    # a new gateway over the same store: the completion is still known
    with running_gateway(GatewayConfig(), server.endpoints.grpc, MODEL, store_url) as url:
        code, _ = post(f"{url}/events", json.dumps({"type": "view", "completion_id": completion.id}).encode())
        assert code == 200


def test_users_are_routed_to_tracks(server: TritonServer, store_url: str) -> None:
    from lathe.serving.ab import route
    from lathe.serving.config import AbConfig, TrackUpstream

    ab = AbConfig(staff_users=["alice"], candidate_share=0.5)
    cfg = GatewayConfig(ab=ab, tracks={"candidate": TrackUpstream(triton_url=server.endpoints.grpc)})
    with running_gateway(cfg, server.endpoints.grpc, MODEL, store_url) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        users = ["alice", *(f"user{i}" for i in range(8))]
        for user in users:
            raw = client.completions.with_raw_response.create(
                model=MODEL, prompt="x", max_tokens=1, extra_headers={"x-lathe-user": user}
            )
            assert raw.headers["x-lathe-track"] == route(user, ab)
        assert {route(u, ab) for u in users} == {"staff", "production", "candidate"}
    with pytest.raises(ConfigError, match="no candidate is served"):
        serve_gateway(GatewayConfig(ab=ab), server.endpoints.grpc, MODEL, store_url)


def test_lathe_complete_fills_in_the_middle(server: TritonServer, engine: Engine) -> None:
    prefix, suffix = "def area(r):\n    return ", "\n\nprint(area(2))\n"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "lathe.pipelines.cli",
            "complete",
            prefix,
            "--suffix",
            suffix,
            "--max-tokens",
            "6",
            "--url",
            server.endpoints.grpc,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    middle = engine.tokenizer.decode(reference(engine, engine.fim_prompt_ids(prefix, suffix, 6), 6), skip_special_tokens=True)
    assert done.returncode == 0 and done.stdout == prefix + middle + suffix + "\n"
