"""The embeddings service over real HTTP: `serve run` of a config shaped like serve/config.yaml on the session's Ray:
the application "embeddings" serves two models (an ingress in front of one deployment per model), "single" one model
(one deployment that answers HTTP and holds the model, as serve/config.yaml does)."""

import base64
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import psutil
import pytest
import ray
from ray import serve
from sentence_transformers.util.quantization import quantize_embeddings

from raylib.models.quantize import calibration_ranges, dequantize
from raylib.runtime import free_port
from serve.local import default_config, local_service

API_KEY = "test-key-5d1c"
MODEL = "minilm"
SMALL = "minilm-128"  # the same weights, 128 dimensions and a query prefix
SINGLE = "minilm-single"  # the only model of the application at /single
MAX_BODY_BYTES = 50_000


def service_config(port: int) -> dict:
    """serve/config.yaml with a free port, two models, small limits, fast autoscaling and a key; and beside it
    serve/config.yaml's one-model shape at /single."""
    config = default_config()
    config["http_options"] = {"host": "127.0.0.1", "port": port}
    app = config["applications"][0]
    app["runtime_env"] = {"env_vars": {"RAYLIB_API_KEY": API_KEY}}
    app["args"]["models"] = [
        {"name": MODEL, "model": {"path": "bundled"}},
        {"name": SMALL, "model": {"path": "bundled", "dimensions": 128, "query_prefix": "query: "}},
    ]
    app["args"]["limits"] = {"max_inputs": 8, "max_body_bytes": MAX_BODY_BYTES}
    app["deployments"] = [
        {"name": "EmbeddingsAPI", "ray_actor_options": {"num_cpus": 0.1}},
        {"name": MODEL, "ray_actor_options": {"num_cpus": 0.5}, "autoscaling_config": {
            "min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 2, "upscale_delay_s": 1,
            "downscale_delay_s": 4, "metrics_interval_s": 0.5, "look_back_period_s": 2}},
        {"name": SMALL, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}, "max_ongoing_requests": 1,
         "max_queued_requests": 1},  # a short queue, for the overload test
    ]
    config["applications"].append({
        **app, "name": "single", "route_prefix": "/single",
        "args": {**app["args"], "models": [{"name": SINGLE, "model": {"path": "bundled"}}], "layout": "single"},
        "deployments": [{"name": SINGLE, "num_replicas": 1, "ray_actor_options": {"num_cpus": 0.25}}],
    })
    return config


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    """`serve run` on the session's Ray; yields the base URL once /health answers 200."""
    with local_service(service_config(free_port()), ray_session, tmp_path_factory.mktemp("serve")) as url:
        yield url


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as http:
        yield http


def embed(client, **body) -> dict:
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def vectors(result: dict) -> np.ndarray:
    return np.array([item["embedding"] for item in result["data"]], dtype=np.float32)


def test_each_input_form_gets_the_openai_shape(client, embedder):
    text_ids = embedder.tokenize(["hello world", "a second text"])
    for given, rows in [
        ("hello world", 1),
        (["hello world", "a second text"], 2),
        (text_ids[0], 1),
        (text_ids, 2),
    ]:
        result = embed(client, input=given, model=MODEL)
        assert result["object"] == "list" and result["model"] == MODEL
        assert [item["index"] for item in result["data"]] == list(range(rows))
        assert all(item["object"] == "embedding" and len(item["embedding"]) == 384 for item in result["data"])
        assert result["usage"] == {"prompt_tokens": sum(map(len, text_ids[:rows])),
                                   "total_tokens": sum(map(len, text_ids[:rows]))}
    # text and its token ids give the same vector
    from_text = vectors(embed(client, input="hello world"))
    from_ids = vectors(embed(client, input=text_ids[0]))
    np.testing.assert_allclose(from_text, from_ids, atol=1e-6)


def test_concurrent_requests_match_the_offline_embedder(client, embedder, documents):
    texts = [doc["text"] for doc in documents[:48]]
    requests = [texts[i : i + 3] for i in range(0, len(texts), 3)]
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda chunk: vectors(embed(client, input=chunk, model=MODEL)), requests))
    np.testing.assert_allclose(np.concatenate(results), embedder.encode(texts), atol=2e-5)


def test_base64_decodes_to_the_float_vectors(client):
    texts = ["base64 carries the same numbers", "as the float lists"]
    as_floats = vectors(embed(client, input=texts))
    as_base64 = embed(client, input=texts, encoding_format="base64")
    decoded = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), dtype="<f4")
                        for item in as_base64["data"]])
    np.testing.assert_array_equal(decoded, as_floats)


def replica_ranges(model: str, dimensions: int | None) -> np.ndarray:
    """The int8/uint8 calibration ranges a model replica serves, asked through Ray."""
    return serve.get_deployment_handle(model, app_name="embeddings").calibration_ranges.remote(dimensions).result()


def test_quantized_formats_are_quantize_embeddings_of_the_float_vectors(client, embedder, documents):
    texts = [doc["text"] for doc in documents[300:306]]
    floats = vectors(embed(client, input=texts, model=MODEL))
    ranges = replica_ranges(MODEL, None)
    # the ranges: min and max of the model's vectors of the first 256 sample documents
    np.testing.assert_allclose(ranges, calibration_ranges(embedder.encode([d["text"] for d in documents[:256]])),
                               atol=1e-4)
    for precision in ("int8", "uint8", "binary", "ubinary"):
        got = np.array([item["embedding"] for item in embed(client, input=texts, encoding_format=precision)["data"]])
        expected = quantize_embeddings(floats, precision, ranges=ranges)
        assert got.shape == expected.shape and got.tolist() == expected.tolist(), precision
    bits = np.packbits(floats > 0, axis=1)
    assert embed(client, input=texts, encoding_format="ubinary")["data"][0]["embedding"] == bits[0].tolist()
    published = client.post("/v1/quantization", json={"model": MODEL}).json()
    np.testing.assert_array_equal(np.array([published["min"], published["max"]], np.float32), ranges)
    assert published["dimensions"] == 384 and "floor" in published["scheme"]
    short = vectors(embed(client, input=texts, dimensions=64))
    got = [item["embedding"] for item in embed(client, input=texts, dimensions=64, encoding_format="int8")["data"]]
    assert got == quantize_embeddings(short, "int8", ranges=replica_ranges(MODEL, 64)).tolist()


def test_int8_vectors_keep_the_ranking_of_documents_for_a_query(client):
    query = "How do I sort a list of numbers in Python?"
    documents = ["list.sort() sorts a list in place and sorted() returns a new sorted list of its items.",
                 "Use sorted(d.items(), key=lambda item: item[1]) to order a dictionary by its values.",
                 "The json module encodes Python objects as JSON text and decodes them again.",
                 "A socket is one endpoint of a two-way network connection between programs.",
                 "Whisk the eggs with sugar, fold in the flour and bake the cake for forty minutes."]
    floats = vectors(embed(client, input=[query, *documents]))
    codes = np.array([item["embedding"] for item in embed(client, input=[query, *documents],
                                                           encoding_format="int8")["data"]])
    float_order = np.argsort(-(floats[1:] @ floats[0]))
    assert float_order[0] == 0 and float_order[-1] == 4  # the set is what it is meant to be
    # a float query against the documents' codes mapped back with the ranges the service publishes: the whole ranking
    published = client.post("/v1/quantization", json={}).json()
    restored = dequantize(codes[1:], "int8", 384, np.array([published["min"], published["max"]]))
    np.testing.assert_array_equal(np.argsort(-(restored @ floats[0])), float_order)
    # int8 dot products of the raw codes (not centred: offsets per dimension) keep the relevant documents' order
    raw = codes.astype(np.int32)
    np.testing.assert_array_equal(np.argsort(-(raw[1:] @ raw[0]))[:3], float_order[:3])


def test_dimensions_truncate_and_renormalise(client):
    full = vectors(embed(client, input="matryoshka"))[0]
    short = vectors(embed(client, input="matryoshka", dimensions=64))[0]
    assert short.shape == (64,)
    np.testing.assert_allclose(short, full[:64] / np.linalg.norm(full[:64]), atol=1e-6)


def test_model_field_routes_and_input_type_applies_the_prefix(client):
    small = vectors(embed(client, input="how do I sort a list", model=SMALL))[0]
    full = vectors(embed(client, input="how do I sort a list", model=MODEL))[0]
    assert small.shape == (128,)
    np.testing.assert_allclose(small, full[:128] / np.linalg.norm(full[:128]), atol=1e-6)
    as_query = vectors(embed(client, input="how do I sort a list", model=SMALL, input_type="query"))[0]
    prefixed = vectors(embed(client, input="query: how do I sort a list", model=SMALL))[0]
    np.testing.assert_allclose(as_query, prefixed, atol=1e-6)
    assert np.dot(as_query, small) < 0.999  # the prefix changed the vector


def test_long_input_is_truncated_unless_asked_not_to(client):
    result = embed(client, input="word " * 600)
    assert result["usage"]["prompt_tokens"] == 256  # the bundled model's max_seq_length


def chunked_by_hand(embedder, ids: list[int], head: int, dimensions: int) -> tuple[np.ndarray, list[list[int]]]:
    """(vector, windows) of `ids` ([CLS] + prefix = `head` tokens, body, [SEP]) done by hand: head + body
    pieces + [SEP] windows of max_length tokens, their vectors cut to `dimensions` and normalised as the
    model does, mean weighted by window tokens, normalised."""
    room = embedder.spec.max_length - head - 1
    body = ids[head:-1]
    windows = [ids[:head] + body[start:start + room] + ids[-1:] for start in range(0, len(body), room)]
    rows = embedder.embed_tokens(windows)[:, :dimensions]
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    mean = np.average(rows, axis=0, weights=[len(window) for window in windows])
    return mean / np.linalg.norm(mean), windows


def test_chunking_mean_equals_pooling_max_length_windows_by_hand(client, embedder, documents):
    text = " ".join(doc["text"] for doc in documents[:20])
    ids = embedder.tokenize([text], truncate=False)[0]
    expected, windows = chunked_by_hand(embedder, ids, 1, 384)
    assert 2 < len(windows) <= 8 and embedder.spec.precision == "fp32"  # 8: the service's max_inputs
    result = embed(client, input=text, model=MODEL, chunking="mean")
    np.testing.assert_allclose(vectors(result)[0], expected, atol=1e-5)
    assert result["usage"]["prompt_tokens"] == sum(map(len, windows))
    from_ids = vectors(embed(client, input=ids, model=MODEL, chunking="mean"))[0]  # split the same way
    np.testing.assert_allclose(from_ids, expected, atol=1e-5)
    # the query prefix starts every window; dimensions cut the pooled vector
    expected, _ = chunked_by_hand(embedder, embedder.tokenize(["query: " + text], truncate=False)[0], 3, 128)
    as_query = embed(client, input=text, model=SMALL, input_type="query", chunking="mean", dimensions=64)
    np.testing.assert_allclose(vectors(as_query)[0], expected[:64] / np.linalg.norm(expected[:64]), atol=1e-5)


def test_chunking_leaves_a_short_text_as_it_is(client):
    plain = embed(client, input="a short text fits one window")
    chunked = embed(client, input="a short text fits one window", chunking="mean")
    np.testing.assert_allclose(vectors(chunked), vectors(plain), atol=1e-6)
    assert chunked["usage"] == plain["usage"]


@pytest.mark.parametrize("body", [
    {"input": "word " * 2500, "chunking": "mean"},  # 10 windows, past max_inputs: 8
    {"input": ["word " * 600] * 3, "chunking": "mean"},  # 3 windows each
    {"input": "x", "chunking": "max"},
])
def test_chunking_refuses_too_many_windows_and_unknown_values(client, body):
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "chunking"


def test_the_official_openai_client_works_unchanged(service, embedder):
    api = openai.OpenAI(base_url=f"{service}/v1", api_key=API_KEY)
    texts = ["the openai client asks for base64", "and decodes it itself"]
    result = api.embeddings.create(model=MODEL, input=texts)
    got = np.array([item.embedding for item in result.data], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.encode(texts), atol=2e-5)
    assert result.usage.prompt_tokens == sum(map(len, embedder.tokenize(texts)))
    assert len(api.embeddings.create(model=SMALL, input="x", dimensions=32).data[0].embedding) == 32
    assert [model.id for model in api.models.list()] == [MODEL, SMALL]


MISTAKES = [
    ({"json": {"input": []}}, 400, "input"),
    ({"json": {"input": ""}}, 400, "input"),
    ({"json": {"input": ["fine", ""]}}, 400, "input"),
    ({"json": {"input": 5}}, 400, "input"),
    ({"json": {"input": [1.5]}}, 400, "input"),
    ({"json": {"input": ["text", 3]}}, 400, "input"),
    ({"json": {"input": [[]]}}, 400, "input"),
    ({"json": {"input": [[101, 99999999]]}}, 400, "input"),
    ({"json": {"model": MODEL}}, 400, "input"),
    ({"json": {"input": ["x"] * 9}}, 400, "input"),
    ({"json": {"input": "word " * 600, "truncate": False}}, 400, "input"),
    ({"json": {"input": "x", "model": "gpt-4"}}, 404, "model"),
    ({"json": {"input": "x", "encoding_format": "hex"}}, 400, "encoding_format"),
    ({"json": {"input": "x", "encoding_format": "int4"}}, 400, "encoding_format"),
    ({"json": {"input": "x", "encoding_format": "binary", "dimensions": 1000}}, 400, "dimensions"),
    ({"json": {"input": "x", "dimensions": 0}}, 400, "dimensions"),
    ({"json": {"input": "x", "dimensions": 1000}}, 400, "dimensions"),
    ({"json": {"input": "x", "input_type": "passage"}}, 400, "input_type"),
    ({"json": {"input": "x", "colour": "red"}}, 400, "colour"),
    ({"content": b"{not json"}, 400, None),
    ({"content": b'"a bare string"'}, 400, None),
    ({"json": {"input": "x" * 60_000}}, 413, None),
    ({"json": {"input": "x"}, "headers": {"Authorization": ""}}, 401, None),
    ({"json": {"input": "x"}, "headers": {"Authorization": "Bearer wrong"}}, 401, None),
    ({"content": b'{"input": "x", "dimensions": ' + b"9" * 5000 + b"}"}, 400, None),  # past Python's digit limit
    ({"content": b'{"input": ' + b"[" * 20000 + b"]" * 20000 + b"}"}, 400, None),  # past the recursion limit
    ({"content": b'{"input": "\\ud83d is half an emoji"}'}, 400, "input"),  # a lone surrogate
    ({"content": b'{"input": ["fine", "\\udc00"]}'}, 400, "input"),
    ({"content": b'{"input": "x", "model": "\\ud83d"}'}, 400, "model"),
]


@pytest.mark.parametrize("request_args, status, param", MISTAKES)
def test_caller_mistakes_get_a_4xx_openai_error(client, request_args, status, param):
    response = client.post("/v1/embeddings", **request_args)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param


def test_unknown_routes_answer_in_the_error_shape_and_the_service_stays_healthy(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404 and response.json()["error"]["message"]
    assert client.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/health").json() == {"status": "ok"}  # open, so it names nothing
    assert len(embed(client, input="still serving")["data"]) == 1


def scrape_metrics(node_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node_port}/metrics", timeout=10) as response:
        return response.read().decode()


def metric_total(text: str, name: str, **labels) -> float:
    """Sum of a Prometheus series over all label sets that contain `labels`."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{key}="{value}"' in line for key, value in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_prometheus_metrics_count_requests_tokens_and_batches(client):
    port = ray.nodes()[0]["MetricsExportPort"]
    deadline = time.monotonic() + 90
    while True:  # Ray exports metrics every few seconds: wait until the concurrent test's 48 rows are counted
        text = scrape_metrics(port)
        if (metric_total(text, "ray_embeddings_requests_total", status="400")
                and metric_total(text, "ray_embeddings_batch_rows_sum") >= 48):
            break
        assert time.monotonic() < deadline, "embedding metrics never appeared"
        time.sleep(2)
    assert metric_total(text, "ray_embeddings_requests_total", model=MODEL, status="200") >= 5
    assert metric_total(text, "ray_embeddings_tokens_total", model=MODEL) > 100
    batches = metric_total(text, "ray_embeddings_batch_rows_count")
    single_row_batches = metric_total(text, "ray_embeddings_batch_rows_bucket", le="1.0")
    assert single_row_batches < batches  # concurrent requests were merged into shared batches
    assert metric_total(text, "ray_embeddings_queue_seconds_count") > 0
    assert "ray_serve_num_http_requests_total" in text  # Serve's own metrics are exported beside ours


def running_replicas(deployment: str) -> int:
    states = serve.status().applications["embeddings"].deployments[deployment].replica_states
    return states.get("RUNNING", 0)


def test_autoscaling_adds_replicas_under_load_and_removes_them_after(client):
    assert running_replicas(MODEL) == 1
    stop_at = time.monotonic() + 120
    peak = 1

    def keep_sending(_):
        while time.monotonic() < stop_at:
            embed(client, input=["load " * 100] * 4, model=MODEL)

    with ThreadPoolExecutor(12) as pool:
        senders = [pool.submit(keep_sending, i) for i in range(12)]
        while time.monotonic() < stop_at and peak < 2:
            peak = max(peak, running_replicas(MODEL))
            time.sleep(0.5)
        stop_at = time.monotonic()  # stop the load
        for sender in senders:
            sender.result()
    assert peak == 2
    deadline = time.monotonic() + 90
    while running_replicas(MODEL) > 1:
        assert time.monotonic() < deadline, "idle replica was not removed"
        time.sleep(1)


def test_bad_values_are_quoted_briefly_and_the_schema_is_behind_the_key(client):
    for body in ({"input": "x", "model": "m" * 5000}, {"input": "x", "dimensions": "9" * 5000}):
        response = client.post("/v1/embeddings", json=body)
        assert 400 <= response.status_code < 500 and len(response.json()["error"]["message"]) < 400
    refused = client.get("/openapi.json", headers={"Authorization": ""})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert "/v1/embeddings" in client.get("/openapi.json").json()["paths"]


def test_a_named_but_missing_api_key_refuses_to_deploy(monkeypatch):
    from raylib.config import ConfigError
    from serve.app import build_app

    monkeypatch.delenv("RAYLIB_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"api_key_env: RAYLIB_TEST_UNSET_KEY is not set; .*api_key_env: null"):
        build_app({"api_key_env": "RAYLIB_TEST_UNSET_KEY"})
    build_app({"api_key_env": None})  # the explicit opt-out
    monkeypatch.setenv("RAYLIB_TEST_UNSET_KEY", "a-key")
    build_app({"api_key_env": "RAYLIB_TEST_UNSET_KEY"})


def test_the_single_layout_serves_exactly_one_model():
    from raylib.config import ConfigError
    from serve.app import build_app

    two = [{"name": "a", "model": {"path": "bundled"}}, {"name": "b", "model": {"path": "bundled"}}]
    with pytest.raises(ConfigError, match="layout: single serves one model, got 2; use layout: split"):
        build_app({"api_key_env": None, "layout": "single", "models": two})
    assert build_app({"api_key_env": None, "layout": "single"}).__class__.__name__ == "Application"


def test_a_burst_past_the_queue_gets_fast_503s_with_retry_after(client):
    def post(_):
        return client.post("/v1/embeddings", json={"input": "a burst of requests " * 40, "model": SMALL})

    with ThreadPoolExecutor(24) as pool:
        responses = list(pool.map(post, range(48)))
    statuses = [response.status_code for response in responses]
    assert set(statuses) <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    refused = next(response for response in responses if response.status_code == 503)
    assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "overloaded"
    assert len(embed(client, input="served again", model=SMALL)["data"]) == 1


def test_quantization_ranges_are_checked_like_embeddings_and_behind_the_key(client):
    assert len(client.post("/v1/quantization", json={"model": SMALL, "dimensions": 32}).json()["min"]) == 32
    for body, status, param in [({"dimensions": 1000}, 400, "dimensions"), ({"model": "gpt-4"}, 404, "model"),
                                ({"input": "x"}, 400, "input")]:
        response = client.post("/v1/quantization", json=body)
        assert response.status_code == status and response.json()["error"]["param"] == param, response.text
    assert client.post("/v1/quantization", json={}, headers={"Authorization": ""}).status_code == 401


def test_tokenize_gives_the_models_token_ids_behind_the_key(client, embedder):
    result = client.post("/tokenize", json={"input": ["hello world", "word " * 600], "model": SMALL,
                                            "input_type": "query"}).json()
    expected = embedder.tokenize(["query: hello world", "query: " + "word " * 600])  # SMALL's query prefix
    assert [row["tokens"] for row in result["data"]] == expected
    assert [row["count"] for row in result["data"]] == [len(ids) for ids in expected]
    assert result["data"][1]["count"] == embedder.spec.max_length  # truncated as embedding would
    assert result["usage"]["prompt_tokens"] == sum(map(len, expected)) and result["model"] == SMALL
    refused = client.post("/tokenize", json={"input": "x"}, headers={"Authorization": ""})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"


def test_an_unknown_argument_is_named_briefly():
    from serve.openai_api import ApiError, parse_request

    with pytest.raises(ApiError) as refused:
        parse_request(b'{"input": "x", "' + b"k" * 5000 + b'": 1}')
    assert refused.value.status == 400 and len(refused.value.message) < 400 and len(refused.value.param) <= 200


def test_one_model_is_one_deployment_that_answers_like_the_ingress(client, embedder):
    deadline = time.monotonic() + 120
    while client.get("/single/health").status_code != 200:  # deployed beside "embeddings": may come up later
        assert time.monotonic() < deadline, "the one-model application never became healthy"
        time.sleep(1)
    assert list(serve.status().applications["single"].deployments) == [SINGLE]
    texts = ["one replica answers HTTP", "and holds the model"]
    result = client.post("/single/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).json()
    assert result["model"] == SINGLE and result["usage"]["prompt_tokens"] == sum(map(len, embedder.tokenize(texts)))
    got = np.stack([np.frombuffer(base64.b64decode(item["embedding"]), "<f4") for item in result["data"]])
    np.testing.assert_allclose(got, vectors(embed(client, input=texts, model=MODEL)), atol=1e-6)
    int8 = client.post("/single/v1/embeddings", json={"input": texts, "encoding_format": "int8"}).json()["data"]
    assert len(int8[0]["embedding"]) == 384  # calibration ranges from the replica's own model
    for body, headers, status in [({"input": "x", "model": MODEL}, {}, 404), ({"input": "x"}, {"Authorization": ""}, 401),
                                  ({"input": "x" * 60_000}, {}, 413)]:
        response = client.post("/single/v1/embeddings", json=body, headers=headers)
        assert response.status_code == status and response.json()["error"]["message"], response.text


def serve_processes(*titles: str) -> list[psutil.Process]:
    """Processes of this session's Ray (descendants of the test process, not other Rays on the machine) whose
    title starts with one of `titles`."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if " ".join(process.cmdline()).startswith(titles):
                found.append(process)
        except psutil.Error:
            continue
    return found


def haproxy_processes() -> list[psutil.Process]:
    """This session's HAProxy processes (started by Serve's HAProxyManager actor)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name() == "haproxy":
                found.append(process)
        except psutil.Error:
            continue
    return found


def listener_names(port: int) -> set[str]:
    """Names of the processes listening on `port`."""
    names = set()
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            try:
                names.add(psutil.Process(conn.pid).name())
            except psutil.Error:  # a reload's old HAProxy exiting
                continue
    return names


def test_http_goes_through_haproxy_straight_to_the_replicas(client, service):
    """RAY_SERVE_ENABLE_HA_PROXY=1 (as conftest, serve/config.yaml and cluster/ set it): HAProxy holds the port, and
    each replica that answers HTTP listens on a port of its own (Serve's direct ingress), which checks the key too."""
    assert listener_names(int(service.rsplit(":", 1)[1])) == {"haproxy"}
    for title in ("ray::ServeReplica:embeddings:EmbeddingsAPI", f"ray::ServeReplica:single:{SINGLE}"):
        (replica,) = serve_processes(title)
        ports = [conn.laddr.port for conn in replica.net_connections("tcp")
                 if conn.status == psutil.CONN_LISTEN and 30000 <= conn.laddr.port <= 31000]  # Serve's HTTP range
        assert len(ports) == 1, (title, ports)
        prefix = "/single" if "single" in title else ""
        assert httpx.get(f"http://127.0.0.1:{ports[0]}{prefix}/v1/models").status_code == 401
    assert len(embed(client, input="through HAProxy")["data"]) == 1


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_big_bodies_from_64_clients_are_refused_without_being_buffered(client, chunked):
    clients, body_bytes = 64, 8_000_000  # 512 MB in all, each body 160x the limit
    ingress = serve_processes("ray::ServeReplica:embeddings:EmbeddingsAPI")[0]
    ingress_before = ingress.memory_info().rss
    peak = {"ingress": ingress_before, "haproxy": 0}  # HAProxy: the largest of its processes (a reload starts one)
    sending = threading.Event()

    def sample() -> None:
        while not sending.wait(0.02):
            peak["ingress"] = max(peak["ingress"], ingress.memory_info().rss)
            for process in haproxy_processes():
                try:
                    peak["haproxy"] = max(peak["haproxy"], process.memory_info().rss)
                except psutil.Error:  # a reload's old process exiting
                    continue

    def post(_) -> int | str:
        body = b'{"input": "' + b"x" * body_bytes + b'"}'
        content = (body[i : i + 2**16] for i in range(0, len(body), 2**16)) if chunked else body  # no length
        try:
            return client.post("/v1/embeddings", content=content, headers={"Content-Type": "application/json"}).status_code
        except httpx.TransportError as exc:  # the service answered 413 and closed before the whole body was sent
            return type(exc).__name__

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with ThreadPoolExecutor(clients) as pool:
            outcomes = list(pool.map(post, range(clients)))
    finally:
        sending.set()
        sampler.join()
    assert all(outcome == 413 or isinstance(outcome, str) for outcome in outcomes), outcomes
    assert outcomes.count(413) >= clients // 2, outcomes
    # the ingress refuses a body by its declared length before reading it, a chunked one once it passes the limit:
    # at most the limit plus a socket buffer of each body at once, never the bodies themselves (~14 MB measured)
    assert (peak["ingress"] - ingress_before) / 2**20 < clients * (MAX_BODY_BYTES + 2**20) / 2**20, peak
    # HAProxy on the port passes each body on through a 16 KB buffer per connection (~13 MB resident when idle)
    assert 0 < peak["haproxy"] / 2**20 < 64, peak
    assert len(embed(client, input="still serving")["data"]) == 1
