"""The serving application: an OpenAI-compatible ingress (HTTP, request checks, tokenising) and the models.

`serve run serve/config.yaml` builds it with `build_app(args)`. With `layout: single` (one model) the application is
one deployment, named like the model: each replica answers HTTP and holds the model (serve/model.py), so a request
crosses no replica boundary after HAProxy (or Serve's HTTP proxy). With `layout: split` the ingress is
`EmbeddingsAPI`, in front of one batched deployment per model (named like it), which it calls by handle. The YAML's `deployments:` section sets
replicas, resources and autoscaling per deployment.

`encoding_format` int8/uint8 quantizes with calibration ranges per (model, dimensions): the per-dimension
minimum and maximum of the model's own vectors of fixed documents of the sample corpus (serve/model.py),
computed once by a model replica on the first such request (the same on every replica of the same hardware)
and kept by the ingress.
"""

import asyncio
import hmac
import logging
import os
from dataclasses import dataclass

import numpy as np
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from ray.serve.metrics import Counter
from starlette.exceptions import HTTPException

from raylib.config import ConfigError, ServeAppConfig, validate_config
from raylib.models.quantize import SCALAR, SCALAR_SCHEME
from raylib.models.spec import ModelSpec, resolve_spec
from raylib.models.tokenizer import PromptTokenizer
from serve.chunking import mean_pool, windows
from serve.model import EmbeddingModel
from serve.openai_api import (
    ApiError,
    EmbeddingRequest,
    Inputs,
    QuantizationRequest,
    TokenizeRequest,
    check_token_ids,
    embedding_response,
    fit_lengths,
    parse_request,
    quoted,
    shorten,
    split_inputs,
)

logger = logging.getLogger(__name__)
REPLICA_RETRIES = 2  # a request whose model replica dies is sent again to another one


class RemoteModel:
    """A model deployment reached through its handle, with EmbeddingModel's methods (awaitable answers)."""

    def __init__(self, handle: DeploymentHandle):
        self.handle = handle

    def embed(self, token_ids: list[list[int]], prompt_length: int = 0):
        return self.handle.embed.remote(token_ids, prompt_length)

    def calibration_ranges(self, dimensions: int | None):
        return self.handle.calibration_ranges.remote(dimensions)

    def ready(self):
        return self.handle.ready.remote()


@dataclass
class ServedModel:
    spec: ModelSpec
    tokenize: PromptTokenizer
    model: EmbeddingModel | RemoteModel  # in this replica (one model served) or a model deployment

    @property
    def vocab_size(self) -> int:
        return self.tokenize.vocab_size

    def prefix_length(self, input_type: str) -> int:
        """Tokens of the input type's prefix alone, without special tokens."""
        return len(self.tokenize([""], input_type, special_tokens=False)[0])


class FastJSONResponse(JSONResponse):
    """A JSON response encoded by orjson: the same values as json.dumps (floats in shortest round-trip form),
    several times faster on the float lists of embeddings."""

    def render(self, content) -> bytes:
        return orjson.dumps(content)


api = FastAPI(title="raylib embeddings", docs_url=None, redoc_url=None, openapi_url=None)  # schema: behind the key


def required_api_key(env: str | None) -> str | None:
    """The key requests must carry: the value of the variable `env` names (None: no key asked for). A named
    variable that is unset or empty refuses to deploy, so the service never runs open by mistake."""
    if env is None:
        return None
    key = os.environ.get(env)
    if not key:
        raise ConfigError(
            f"serve application args: api_key_env: {env} is not set; set it where Ray starts (export {env}=<key>), "
            f"in the application's runtime_env.env_vars or from a Kubernetes Secret on KubeRay, or set "
            "api_key_env: null to serve without a key"
        )
    return key


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


@api.exception_handler(Exception)
async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """What was not the caller's mistake: a 500 in the API's error shape, without internals (logged here)."""
    logger.exception("request %s %s failed", request.method, request.url.path)
    return await _api_error(request, ApiError(500, "internal error; the service logged it", kind="server_error"))


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    """Unknown routes and methods answer in the same error shape as the API's own errors."""
    return await _api_error(request, ApiError(exc.status_code,
                                              f"{request.method} {quoted(request.url.path)}: {exc.detail}"))


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` bytes."""
    too_large = ApiError(413, f"request body is larger than {limit} bytes; send fewer or shorter inputs",
                         code="request_too_large")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large
    return bytes(body)


@serve.deployment(name="EmbeddingsAPI", max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.1})
@serve.ingress(api)
class EmbeddingsAPI:
    """HTTP ingress: checks and tokenises requests, sends token ids to the model's deployment (`handles`, by
    model name), or with no handles holds the one model itself."""

    def __init__(self, config: dict, handles: dict[str, DeploymentHandle] | None = None):
        self.config = ServeAppConfig.model_validate(config)
        self.models = {}
        for served in self.config.models:
            spec = resolve_spec(**served.model.model_dump())
            model = (RemoteModel(handles[served.name]) if handles else
                     EmbeddingModel(served.model.model_dump(), self.config.batching.model_dump()))
            self.models[served.name] = ServedModel(spec, PromptTokenizer.from_spec(spec), model)
        self.default_model = self.config.models[0].name
        self.ranges: dict[tuple[str, int | None], np.ndarray] = {}  # int8/uint8 calibration, by (model, dimensions)
        self.api_key = required_api_key(self.config.api_key_env)
        self.requests = Counter("embeddings_requests", "embedding requests by model and status",
                                tag_keys=("model", "status"))
        self.tokens = Counter("embeddings_tokens", "input tokens embedded", tag_keys=("model",))

    def authorize(self, request: Request) -> None:
        if self.api_key is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.api_key}".encode()):
            raise ApiError(401, "missing or wrong API key; send `Authorization: Bearer <key>`",
                           code="invalid_api_key")

    def served(self, name: str | None, dimensions: int | None = None) -> tuple[str, ServedModel]:
        """(name, model) the request's `model` field picks (None: the default), or a 404; a 400 when the model
        has fewer than the request's `dimensions`."""
        served = self.models.get(name or self.default_model)
        if served is None:
            raise ApiError(404, f"model {quoted(name)} is not served; choose one of {sorted(self.models)}",
                           param="model", code="model_not_found")
        if dimensions is not None and dimensions > served.spec.dimensions:
            raise ApiError(400, f"dimensions: at most {served.spec.dimensions} for {name or self.default_model}",
                           param="dimensions")
        return name or self.default_model, served

    @api.post("/v1/embeddings")
    async def create_embeddings(self, request: Request) -> JSONResponse:
        model_name = "unknown"
        try:
            self.authorize(request)
            body = parse_request(await read_body(request, self.config.limits.max_body_bytes))
            model_name, served = self.served(body.model, body.dimensions)
            inputs = split_inputs(body.input, self.config.limits.max_inputs)
            vectors, token_ids = await self.embed_inputs(served, body, inputs)
            vectors = shorten(vectors, body.dimensions, served.spec.normalize)
            ranges = None
            if body.encoding_format in SCALAR:
                ranges = await self.calibration(model_name, served, body.dimensions)
        except ApiError as exc:
            self.requests.inc(tags={"model": model_name, "status": str(exc.status)})
            raise
        prompt_tokens = sum(len(ids) for ids in token_ids)
        self.requests.inc(tags={"model": model_name, "status": "200"})
        self.tokens.inc(prompt_tokens, tags={"model": model_name})
        return FastJSONResponse(embedding_response(vectors, model_name, body.encoding_format, prompt_tokens,
                                                  ranges))

    async def embed_inputs(self, served: ServedModel, body: EmbeddingRequest,
                           inputs: Inputs) -> tuple[np.ndarray, list[list[int]]]:
        """(one vector per input, the token id rows embedded): inputs cut to max_length (or refused), or with
        chunking mean split into windows whose vectors are pooled back into one per input (serve/chunking.py)."""
        prompt_length = prefix_length = 0  # token-id inputs are used as they are
        if inputs.texts is not None:
            truncate = body.truncate and body.chunking == "none"
            token_ids = await asyncio.to_thread(served.tokenize, inputs.texts, body.input_type, truncate)
            prompt_length = served.tokenize.prompt_length(body.input_type)
            prefix_length = served.prefix_length(body.input_type)
        else:
            check_token_ids(inputs.token_ids, served.vocab_size)
            token_ids = inputs.token_ids
        if body.chunking == "none":
            token_ids = fit_lengths(token_ids, served.spec.max_length, body.truncate)
            return await self.ask(served.model.embed, token_ids, prompt_length), token_ids
        token_ids, counts = windows(token_ids, served.spec.max_length, served.tokenize.special_ids, prefix_length,
                                    self.config.limits.max_inputs)
        vectors = await self.ask(served.model.embed, token_ids, prompt_length)
        return mean_pool(vectors, [len(ids) for ids in token_ids], counts, served.spec.normalize), token_ids

    async def calibration(self, model_name: str, served: ServedModel, dimensions: int | None) -> np.ndarray:
        """The int8/uint8 ranges of a model at `dimensions`, asked of a model replica once."""
        key = (model_name, dimensions)
        if key not in self.ranges:
            self.ranges[key] = await self.ask(served.model.calibration_ranges, dimensions)
        return self.ranges[key]

    async def ask(self, method, *args):
        """The model's answer to `method` (e.g. served.model.embed) with `args`; a full queue (the model
        deployment's max_queued_requests) or no answer within limits.request_timeout_s is a fast 503 with
        Retry-After, a dead model replica is retried."""
        timeout = self.config.limits.request_timeout_s
        for attempt in range(REPLICA_RETRIES + 1):
            try:
                return await asyncio.wait_for(method(*args), timeout)
            except BackPressureError:
                raise ApiError(503, "the model's queue is full; retry in a moment", code="overloaded",
                               kind="server_error", retry_after_s=1) from None
            except asyncio.TimeoutError:
                raise ApiError(503, f"the model did not answer within {timeout:g} s; retry in a moment",
                               code="timeout", kind="server_error", retry_after_s=5) from None
            except RayActorError:
                if attempt == REPLICA_RETRIES:
                    raise ApiError(503, "the model's replicas are restarting; retry in a moment", code="unavailable",
                                   kind="server_error", retry_after_s=5) from None

    @api.post("/v1/quantization")
    async def quantization(self, request: Request) -> JSONResponse:
        """The int8/uint8 calibration ranges of a model at `dimensions`, for clients that map codes back to
        floats (raylib.models.quantize.dequantize) to score them against float queries."""
        self.authorize(request)
        body = parse_request(await read_body(request, self.config.limits.max_body_bytes), QuantizationRequest)
        model_name, served = self.served(body.model, body.dimensions)
        ranges = await self.calibration(model_name, served, body.dimensions)
        return JSONResponse({"object": "quantization", "model": model_name, "dimensions": ranges.shape[1],
                             "scheme": SCALAR_SCHEME, "min": ranges[0].tolist(), "max": ranges[1].tolist()})

    @api.post("/tokenize")
    async def tokenize(self, request: Request) -> JSONResponse:
        """Token ids and counts of texts as the model embeds them (its prefix and truncation), for clients
        that budget tokens."""
        self.authorize(request)
        body = parse_request(await read_body(request, self.config.limits.max_body_bytes), TokenizeRequest)
        model_name, served = self.served(body.model)
        texts = split_inputs(body.input, self.config.limits.max_inputs).texts
        token_ids = await asyncio.to_thread(served.tokenize, texts, body.input_type, body.truncate)
        total = sum(len(ids) for ids in token_ids)
        return JSONResponse({
            "object": "list", "model": model_name,
            "data": [{"object": "tokens", "index": index, "tokens": ids, "count": len(ids)}
                     for index, ids in enumerate(token_ids)],
            "usage": {"prompt_tokens": total, "total_tokens": total},
        })

    @api.get("/v1/models")
    async def list_models(self, request: Request) -> JSONResponse:
        self.authorize(request)
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "raylib"} for name in self.models]
        return JSONResponse({"object": "list", "data": data})

    @api.get("/openapi.json")
    async def openapi_schema(self, request: Request) -> JSONResponse:
        self.authorize(request)
        return JSONResponse(api.openapi())

    @api.get("/health")
    async def health(self) -> JSONResponse:
        """200 once every model deployment has a replica with its model loaded, else 503; open to load
        balancers without the key, so it says nothing else."""
        try:
            await asyncio.wait_for(
                asyncio.gather(*(served.model.ready() for served in self.models.values())), timeout=5
            )
        except (asyncio.TimeoutError, RayActorError):
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ok"})


MODEL_DEPLOYMENT = {"max_ongoing_requests": 128, "ray_actor_options": {"num_cpus": 1}}  # serve/config.yaml's own
model_deployment = serve.deployment(EmbeddingModel, **MODEL_DEPLOYMENT)


def build_app(args: dict) -> serve.Application:
    """Application builder for serve/config.yaml's `args` (see raylib.config.ServeAppConfig)."""
    config = validate_config(args, ServeAppConfig, "serve application args")
    names = [served.name for served in config.models]
    if len(set(names)) != len(names):
        raise ConfigError(f"serve application args: models: names must differ (got {names})")
    required_api_key(config.api_key_env)
    for served in config.models:
        resolve_spec(**served.model.model_dump())  # a bad path or dimension fails the deploy, not the first request
    if config.layout == "single":  # one deployment, named like the model: HTTP and the model in one replica
        return EmbeddingsAPI.options(name=names[0], **MODEL_DEPLOYMENT).bind(config.model_dump())
    handles = {
        served.name: model_deployment.options(name=served.name).bind(
            served.model.model_dump(), config.batching.model_dump()
        )
        for served in config.models
    }
    return EmbeddingsAPI.bind(config.model_dump(), handles)
