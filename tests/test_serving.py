"""Serving: the generation engine, the Triton repository, and a real tritonserver with a tiny model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from lathe.core.errors import InputError, LatheError
from lathe.serving.client import RequestFailed, complete, http_generate
from lathe.serving.config import ServeConfig
from lathe.serving.engine import ContinuousBatcher, Engine, Event, RequestError
from lathe.serving.loadtest import PROMPTS, Send, grpc_sender
from lathe.serving.package import build_repositories, check_repository, parse_model_config
from lathe.serving.server import TritonServer, free_port, port_busy
from tests.processes import wait_for_line
from tests.served import PROMPT, VERSION, reference, running_server, served_repositories

# --- the engine, without Triton -------------------------------------------------------------


def test_engine_greedy_matches_generate_alone_and_in_a_ragged_batch(engine: Engine) -> None:
    prompts = [PROMPT, "import os", "class Heap:\n    def push(self, item):\n        "]
    requests = [engine.parse(p, {"max_tokens": 24}) for p in prompts]
    together: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    for event in engine.generate(requests):
        together[event.index] += event.token_ids
    for i, p in enumerate(prompts):
        assert together[i] == reference(engine, p, 24), p


def test_engine_stops_at_a_stop_sequence_and_never_streams_it(engine: Engine) -> None:
    free = "".join(e.text for e in engine.generate([engine.parse(PROMPT, {"max_tokens": 40})]))
    stop = free[5:8]  # three characters the unconstrained completion is known to produce
    events = list(engine.generate([engine.parse(PROMPT, {"max_tokens": 40, "stop": [stop]})]))
    text = "".join(e.text for e in events)
    assert events[-1].finish == "stop" and text == free[: free.find(stop)] and stop not in text


def test_engine_sampling_is_seeded(engine: Engine) -> None:
    def sample(seed: int) -> list[int]:
        r = engine.parse(PROMPT, {"max_tokens": 16, "temperature": 1.0, "top_p": 0.9, "seed": seed})
        return [t for e in engine.generate([r]) for t in e.token_ids]

    assert sample(7) == sample(7) and sample(7) != sample(8)


class _Sink:
    """Collects one request's events; ``cancel`` makes it report its client gone."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.cancel = False
        self.error: BaseException | None = None
        self.done = threading.Event()

    def event(self, event: Event) -> None:
        self.events.append(event)
        if event.finish:
            self.done.set()

    def cancelled(self) -> bool:
        return self.cancel

    def failed(self, exc: BaseException) -> None:
        self.error = exc
        self.done.set()

    @property
    def token_ids(self) -> list[int]:
        return [t for e in self.events for t in e.token_ids]


def test_continuous_greedy_matches_generate_alone_and_admitted_mid_batch(engine: Engine) -> None:
    long_prompt = "class Heap:\n    def push(self, item):\n        "
    batcher = ContinuousBatcher(engine, max_rows=3)
    alone = _Sink()
    batcher.submit(engine.parse(PROMPT, {"max_tokens": 20}), alone)
    while batcher.busy:
        batcher.step()
    # a long row runs; a short prompt joins it (padded), then a prompt longer than the running cache (the running rows padded)
    plan = [(long_prompt, 40, 0), ("import os", 12, 3), ("x = 1\n" * 12 + "def f():\n", 24, 5), (PROMPT, 30, 6)]
    sinks = [_Sink() for _ in plan]
    steps, widths = 0, []
    while steps == 0 or batcher.busy:
        for (prompt, n, at), sink in zip(plan, sinks):
            if at == steps:
                batcher.submit(engine.parse(prompt, {"max_tokens": n}), sink)
        batcher.step()
        steps += 1
        assert batcher.running <= 3  # the fourth waited in the queue for a free row
        widths.append(batcher.width)
    assert alone.token_ids == reference(engine, PROMPT, 20)
    for (prompt, n, _), sink in zip(plan, sinks):
        assert sink.token_ids == reference(engine, prompt, n), prompt
        assert sink.events[-1].finish in ("length", "eos") and [e.finish for e in sink.events[:-1]] == [None] * (
            len(sink.events) - 1
        )
    # the cache never outgrew its longest row: padding columns left with the rows that needed them
    assert max(widths) < engine.context and batcher.width == 0


def test_continuous_cancelled_row_leaves_and_a_waiting_request_takes_its_place(engine: Engine) -> None:
    batcher = ContinuousBatcher(engine, max_rows=1)
    first, second = _Sink(), _Sink()
    batcher.submit(engine.parse(PROMPT, {"max_tokens": 60}), first)
    batcher.submit(engine.parse("import os", {"max_tokens": 10}), second)
    batcher.step()
    batcher.step()
    assert batcher.running == 1 and not second.events
    first.cancel = True
    batcher.step()
    assert first.events[-1].finish == "cancelled" and len(first.events) == 3
    while batcher.busy:
        batcher.step()
    assert second.token_ids == reference(engine, "import os", 10)


def test_continuous_loop_closes_every_open_request_when_a_step_fails(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    batcher = ContinuousBatcher(engine, max_rows=4)
    batcher.start()
    try:
        monkeypatch.setattr(engine, "_prefill", lambda requests: 1 / 0)
        broken = [_Sink(), _Sink()]
        for sink in broken:
            batcher.submit(engine.parse(PROMPT, {"max_tokens": 8}), sink)
        assert all(sink.done.wait(30) for sink in broken)
        assert all(isinstance(sink.error, ZeroDivisionError) for sink in broken)
        monkeypatch.undo()
        later = _Sink()  # the loop survived the failure
        batcher.submit(engine.parse(PROMPT, {"max_tokens": 8}), later)
        assert later.done.wait(30) and later.token_ids == reference(engine, PROMPT, 8)
    finally:
        batcher.stop()


@pytest.mark.parametrize(
    "prompt, params, message",
    [
        ("", {}, "text_input is empty"),
        ("x " * 400, {}, "the model's context is 128"),
        (PROMPT, {"max_tokens": 10**6}, "max_tokens must be between 1 and 1024"),
        (PROMPT, {"max_tokens": "ten"}, "max_tokens must be int"),
        (PROMPT, {"temperature": -1.0}, "temperature must be between 0 and 10"),
        (PROMPT, {"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        (PROMPT, {"max_token": 5}, "unknown parameter.*max_token"),
    ],
)
def test_engine_refuses_bad_requests_by_name(engine: Engine, prompt: str, params: dict, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        engine.parse(prompt, params)


# --- the repository -------------------------------------------------------------------------


def test_repository_layout_and_configs(repository: dict[str, Path], tmp_path: Path) -> None:
    config = parse_model_config(repository["python"] / "lathe-code" / "config.pbtxt")
    assert config.backend == "python" and config.model_transaction_policy.decoupled and config.max_batch_size == 8
    assert config.HasField("dynamic_batching") and list(config.version_policy.specific.versions) == [VERSION]
    assert [i.name for i in config.input if i.allow_ragged_batch] == ["stop"]
    vllm = parse_model_config(repository["vllm"] / "lathe-code" / "config.pbtxt")
    assert vllm.backend == "vllm" and vllm.model_transaction_policy.decoupled
    args = json.loads((repository["vllm"] / "lathe-code" / str(VERSION) / "model.json").read_text())
    assert args["model"] == f"/models/vllm/lathe-code/{VERSION}/hf_model" and args["max_model_len"] == 128
    # a misspelled field in a hand-edited config is caught before Triton sees it
    bad = tmp_path / "r" / "lathe-code"
    bad.mkdir(parents=True)
    (bad / "config.pbtxt").write_text('name: "lathe-code"\nbackend: "python"\nmax_batch_sise: 8\n')
    with pytest.raises(InputError, match="not a valid Triton model config"):
        check_repository(tmp_path / "r", "lathe-code", VERSION)


def test_package_refuses_a_directory_without_a_model(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not an HF model with its tokenizer"):
        build_repositories(tmp_path, 1, tmp_path / "out", ServeConfig())


def test_no_dynamic_batching_variant(hf_model: Path, tmp_path: Path) -> None:
    roots = build_repositories(hf_model, 1, tmp_path, ServeConfig(dynamic_batching=False, instance_kind="gpu", instance_count=2))
    config = parse_model_config(roots["python"] / "lathe-code" / "config.pbtxt")
    assert not config.HasField("dynamic_batching") and config.instance_group[0].count == 2
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU


# --- a real tritonserver ----------------------------------------------------------------------


def test_served_greedy_completion_equals_local_generate(server: TritonServer, engine: Engine) -> None:
    got = complete(server.endpoints.grpc, PROMPT, max_tokens=24)
    assert got.token_ids == reference(engine, PROMPT, 24)
    assert got.text == engine.tokenizer.decode(got.token_ids, skip_special_tokens=True)
    answer = http_generate(server.endpoints.http, PROMPT, max_tokens=24)
    assert answer["text_output"] == got.text and answer["finish_reason"] == "length" and answer["model_version"] == str(VERSION)


def test_streaming_returns_tokens_incrementally(server: TritonServer) -> None:
    got = complete(server.endpoints.grpc, PROMPT, max_tokens=48)
    assert len(got.chunks) > 10  # not one response at the end
    assert [c.finish for c in got.chunks[:-1]] == [None] * (len(got.chunks) - 1) and got.chunks[-1].finish == "length"
    # by the order of arrivals, not a share of the latency (a busy machine can stall either part; `make bench`
    # measures time to first token): each chunk came after the one before it, the first before the last
    arrivals = [c.at for c in got.chunks]
    assert arrivals == sorted(arrivals) and arrivals[0] < arrivals[-1] and got.first_token_s < got.latency_s


@pytest.mark.parametrize(
    "params, message",
    [
        ({"max_tokens": 10**6}, "max_tokens must be between 1 and 1024"),
        ({"max_token": 5}, "unexpected inference input 'max_token'"),  # gRPC: Triton refuses an undeclared input
        ({"top_p": 2.0}, r"top_p must be in \(0, 1\]"),
    ],
)
def test_bad_grpc_requests_get_clear_errors_and_the_server_keeps_serving(
    server: TritonServer, params: dict, message: str
) -> None:
    with pytest.raises(RequestFailed, match=message):
        complete(server.endpoints.grpc, PROMPT, **params)
    with pytest.raises(RequestFailed, match="text_input is empty"):
        complete(server.endpoints.grpc, "")
    with pytest.raises(RequestFailed, match="context is 128"):
        complete(server.endpoints.grpc, "x " * 400)
    assert complete(server.endpoints.grpc, PROMPT, max_tokens=4).token_ids


@pytest.mark.parametrize(
    "body, code, message",
    [
        # Triton's own generate-extension parser refuses a wrong JSON type before the model sees it,
        # and answers 500 for it (tritonserver 2.51); lathe cannot change that code.
        ({"text_input": "x", "max_tokens": "ten"}, 500, "Unable to parse 'data'"),
        ({"text_input": "x", "max_token": 5}, 400, "unknown parameter.*max_token"),  # refused by the model: INVALID_ARG
        ({"text_input": ""}, 400, "text_input is empty"),
        ({"max_tokens": 5}, 400, "text_input"),  # the required input is missing
    ],
)
def test_bad_http_requests_get_clear_errors(server: TritonServer, body: dict, code: int, message: str) -> None:
    request = urllib.request.Request(
        f"http://{server.endpoints.http}/v2/models/lathe-code/generate", data=json.dumps(body).encode()
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=30)
    assert err.value.code == code
    assert re.search(message, json.loads(err.value.read())["error"])
    assert http_generate(server.endpoints.http, PROMPT, max_tokens=2)["finish_reason"] == "length"


def concurrent_requests(send: Send, clients: int, each: int) -> list[tuple[float, float, int]]:
    """``clients`` threads at once, each sending ``each`` requests one after another: every answer, in no
    particular order (a failed request raises). A fixed count, not as many as fit in a time window (which
    measures the machine's speed; `make bench` does that)."""
    from concurrent.futures import ThreadPoolExecutor

    start = threading.Barrier(clients)

    def client(k: int) -> list[tuple[float, float, int]]:
        start.wait(timeout=60)  # all together: the server sees them concurrently
        return [send(PROMPTS[(k + clients * i) % len(PROMPTS)]) for i in range(each)]

    with ThreadPoolExecutor(clients) as pool:
        return [answer for answers in pool.map(client, range(clients)) for answer in answers]


def test_concurrent_clients_are_batched_with_zero_failures(server: TritonServer, engine: Engine) -> None:
    answers = concurrent_requests(grpc_sender(server.endpoints.grpc, max_tokens=8), clients=8, each=2)
    assert len(answers) == 16 and all(1 <= n <= 8 for _, _, n in answers), answers
    with urllib.request.urlopen(server.endpoints.metrics, timeout=10) as r:
        metrics = r.read().decode()
    success = [line for line in metrics.splitlines() if line.startswith("nv_inference_request_success{")]
    executions = [line for line in metrics.splitlines() if line.startswith("nv_inference_exec_count{")]
    requests, execs = float(success[0].split()[-1]), float(executions[0].split()[-1])
    assert requests >= len(answers) and execs < requests  # the batcher put several requests in one execute
    # a seeded sampled stream under load still reproduces
    a = complete(server.endpoints.grpc, PROMPT, max_tokens=12, temperature=0.9, seed=5).token_ids
    assert a == complete(server.endpoints.grpc, PROMPT, max_tokens=12, temperature=0.9, seed=5).token_ids


# --- a real tritonserver with the continuous engine -----------------------------------------

INT8_VERSION = VERSION + 1


@pytest.fixture(scope="module")
def continuous_server(hf_model: Path, int8_model: Path, tmp_path_factory):
    """The continuous engine's server; the micro model's int8 variant is served beside it (`lathe-code-int8`)."""
    repository = served_repositories(
        hf_model, tmp_path_factory, ServeConfig(max_batch_size=8, engine="continuous"), {"int8": (int8_model, INT8_VERSION)}
    )
    assert (
        parse_model_config(repository["python"] / "lathe-code" / "config.pbtxt").parameters["engine"].string_value == "continuous"
    )
    with running_server(repository, tmp_path_factory) as s:
        yield s


def test_continuous_served_greedy_completion_equals_local_generate(continuous_server: TritonServer, engine: Engine) -> None:
    got = complete(continuous_server.endpoints.grpc, PROMPT, max_tokens=24)
    assert got.token_ids == reference(engine, PROMPT, 24) and len(got.chunks) > 1
    answer = http_generate(continuous_server.endpoints.http, PROMPT, max_tokens=24)  # not streamed: one final response
    assert answer["text_output"] == got.text and answer["finish_reason"] == "length"
    with pytest.raises(RequestFailed, match="max_tokens must be between 1 and 1024"):
        complete(continuous_server.endpoints.grpc, PROMPT, max_tokens=10**6)


def test_int8_variant_loads_beside_the_model_and_answers_as_the_local_int8_engine(
    continuous_server: TritonServer, engine: Engine, int8_model: Path
) -> None:
    url = continuous_server.endpoints.grpc
    got = complete(url, PROMPT, "lathe-code-int8", max_tokens=24)
    assert got.chunks[0].model_version == str(INT8_VERSION) and got.token_ids
    local = Engine(int8_model)
    assert type(local.model.model.layers[0].mlp.down_proj).__module__.startswith("torch.ao.nn.quantized")  # int8 kernels
    assert got.token_ids == reference(local, PROMPT, 24)
    # greedy decoding of the int8 variant agrees with the fp32 model it was made from on most tokens
    fp32 = complete(url, PROMPT, max_tokens=24).token_ids
    assert sum(a == b for a, b in zip(got.token_ids, fp32)) >= 0.75 * max(len(fp32), len(got.token_ids))


def test_continuous_concurrent_clients_with_zero_failures(continuous_server: TritonServer, engine: Engine) -> None:
    answers = concurrent_requests(grpc_sender(continuous_server.endpoints.grpc, max_tokens=8), clients=8, each=2)
    assert len(answers) == 16 and all(1 <= n <= 8 for _, _, n in answers), answers
    assert complete(continuous_server.endpoints.grpc, PROMPT, max_tokens=16).token_ids == reference(engine, PROMPT, 16)


def test_continuous_cancelled_stream_frees_its_row(continuous_server: TritonServer, engine: Engine) -> None:
    import queue

    import tritonclient.grpc as grpc

    from lathe.serving.client import infer_inputs

    url, max_tokens = continuous_server.endpoints.grpc, 100  # a long completion: cancelled long before its end
    for _ in range(9):  # more cancelled streams than rows: each must have left its row
        arrived: queue.Queue = queue.Queue()
        client = grpc.InferenceServerClient(url=url)
        client.start_stream(callback=lambda result, error, arrived=arrived: arrived.put(error or result))
        client.async_stream_infer("lathe-code", infer_inputs(grpc, PROMPT, {"max_tokens": max_tokens, "stream": True}))
        assert not isinstance(arrived.get(timeout=60), Exception)
        client.stop_stream(cancel_requests=True)
        client.close()
    assert complete(url, "import os", max_tokens=8).token_ids == reference(engine, "import os", 8)
    log = continuous_server.log_file.read_text()
    freed = [int(n) for n in re.findall(rf"request cancelled by its client after (\d+) of {max_tokens} tokens; row freed", log)]
    assert len(freed) == 9 and max(freed) < max_tokens, freed


def test_an_editor_that_disconnects_from_the_gateway_frees_its_row(continuous_server: TritonServer, tmp_path: Path) -> None:
    """Through the OpenAI-compatible gateway: a client that closes its event stream cancels the request in Triton."""
    import httpx

    from lathe.serving.config import GatewayConfig
    from lathe.serving.gateway import running_gateway

    before = continuous_server.log_file.read_text().count("row freed")
    with running_gateway(
        GatewayConfig(), continuous_server.endpoints.grpc, "lathe-code", f"sqlite:///{tmp_path / 't.db'}"
    ) as url:
        body = {"model": "lathe-code", "prompt": PROMPT, "max_tokens": 100, "stream": True}
        with httpx.stream("POST", f"{url}/completions", json=body, timeout=60) as response:
            assert response.status_code == 200
            assert next(response.iter_lines()).startswith("data: ")  # the first chunk, then the editor moves on
        deadline = time.monotonic() + 30
        while continuous_server.log_file.read_text().count("row freed") == before and time.monotonic() < deadline:
            time.sleep(0.2)
    assert re.search(r"cancelled by its client after (\d+) of 100 tokens; row freed", continuous_server.log_file.read_text())
    assert continuous_server.log_file.read_text().count("row freed") == before + 1


def test_lathe_complete_streams_from_the_cli(server: TritonServer) -> None:
    lathe = [sys.executable, "-m", "lathe.pipelines.cli"]
    ok = subprocess.run(
        [*lathe, "complete", PROMPT, "--url", server.endpoints.grpc, "--max-tokens", "8"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and ok.stdout.startswith(PROMPT) and len(ok.stdout) > len(PROMPT) + 1
    bad = subprocess.run(
        [*lathe, "complete", "x", "--url", server.endpoints.grpc, "--max-tokens", "99999"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "max_tokens must be between" in bad.stderr
    port = free_port()
    gone = subprocess.run([*lathe, "complete", "x", "--url", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=120)
    assert gone.returncode == 2 and f"no Triton server at 127.0.0.1:{port}" in gone.stderr
    http = subprocess.run([*lathe, "complete", "x", "--url", server.endpoints.http], capture_output=True, text=True, timeout=120)
    assert http.returncode == 2 and f"{server.endpoints.http} is Triton's HTTP port, not its gRPC one" in http.stderr


def test_a_killed_lathe_serve_takes_its_server_with_it(repository: dict[str, Path]) -> None:
    import psutil

    ports = [free_port() for _ in range(3)]
    lathe = [
        sys.executable,
        "-m",
        "lathe.pipelines.cli",
        "serve",
        "--repository",
        str(repository["python"]),
        "--http-port",
        str(ports[0]),
        "--grpc-port",
        str(ports[1]),
        "--metrics-port",
        str(ports[2]),
        "--api-port",
        "-1",
    ]
    proc = subprocess.Popen(lathe, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        assert wait_for_line(proc, "serving", timeout_s=300), "lathe serve did not come up"
        triton = [c for c in psutil.Process(proc.pid).children(recursive=True) if c.name() == "tritonserver"]
        assert len(triton) == 1
        proc.kill()  # kill -9: no handler runs, the kernel's parent-death signal must stop the server
        proc.wait()
        gone, alive = psutil.wait_procs(triton, timeout=60)
        assert alive == [] and not any(port_busy(p) for p in ports)
    finally:
        proc.kill()


def _group_alive(pgid: int) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pgid=,stat=,args="], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[0] == str(pgid) and not line.split()[1].startswith("Z")]


def test_clean_shutdown_leaves_nothing_behind(repository: dict[str, Path], tmp_path: Path) -> None:
    server = TritonServer(repository["python"], 0, 0, 0, log_file=tmp_path / "t.log").start()
    pgid, ports = server.process.pid, dict(server.ports)
    assert _group_alive(pgid)  # tritonserver and its Python-backend stub
    assert server.stop() == 0  # SIGTERM: a graceful exit
    assert _group_alive(pgid) == []
    s = TritonServer(repository["python"], ports["http"], ports["grpc"], ports["metrics"])  # the ports are free again
    assert s.start().stop() == 0


def test_busy_port_and_missing_repository_fail_in_one_line(
    repository: dict[str, Path], server: TritonServer, tmp_path: Path
) -> None:
    import psutil

    [triton] = [
        c.pid for c in psutil.Process(server.process.pid).children() if c.name() == "tritonserver"
    ]  # under its supervisor
    with pytest.raises(
        InputError,
        match=rf"grpc port {server.ports['grpc']} is in use by a tritonserver left running "
        rf"\(pid {triton}, repository .*\), probably by a killed `lathe serve` "
        rf"\(`kill {triton}` stops it\); stop it or pass another --grpc-port",
    ):
        TritonServer(repository["python"], 0, server.ports["grpc"], 0).start()
    with pytest.raises(InputError, match="run `lathe run package` first"):
        TritonServer(tmp_path / "nothing").start()
    broken = tmp_path / "broken" / "lathe-code"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text(
        'name: "lathe-code"\nbackend: "python"\nmax_batch_size: 1\n'
        'input [{name: "a", data_type: TYPE_FP32, dims: [1]}]\n'
        'output [{name: "b", data_type: TYPE_FP32, dims: [1]}]\n'
    )
    (broken / "1" / "model.py").write_text("raise ImportError('no such model')\n")
    with pytest.raises(LatheError, match="exited with status"):
        TritonServer(tmp_path / "broken", 0, 0, 0, ready_timeout_s=60).start()


def test_publish_lays_out_what_the_init_container_syncs(repository: dict[str, Path], tmp_path: Path) -> None:
    """A local directory stands in for the object store (fsspec gives s3/gs/abfs the same calls)."""
    from lathe.serving.package import publish

    bucket = tmp_path / "bucket"
    published = publish(repository, f"file://{bucket}", "lathe-code", VERSION)
    # k8s/base: aws s3 sync "$MODEL_BUCKET/$MODEL_NAME/$MODEL_VERSION/$REPOSITORY/" /models/
    synced = bucket / "lathe-code" / str(VERSION) / "triton"
    assert (synced / "lathe-code" / "config.pbtxt").is_file() and (synced / "lathe-code" / str(VERSION) / "model.py").is_file()
    check_repository(synced, "lathe-code", VERSION)
    check_repository(bucket / "lathe-code" / str(VERSION) / "triton-vllm", "lathe-code", VERSION)
    assert published["python"].endswith(f"/lathe-code/{VERSION}/triton")
    (synced / "stale.txt").write_text("from an older publish")
    publish(repository, str(bucket), "lathe-code", VERSION)
    assert not (synced / "stale.txt").exists()  # republishing replaces, never mixes
    with pytest.raises(InputError, match="serve.publish_uri"):
        publish(repository, "nosuchproto://bucket", "lathe-code", VERSION)
