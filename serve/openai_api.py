"""The OpenAI embeddings API shape: request checking, error bodies and response encoding.

Plain functions and pydantic models, no Ray: the ingress in serve/app.py calls them.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from raylib.models.quantize import PRECISIONS, quantize

INPUT_SHAPES = "a string, a list of strings, a list of token ids or a list of lists of token ids"
QUOTED_CHARS = 200  # of a bad value, at most, in an error message


def quoted(value) -> str:
    """A bad value as an error message shows it: repr (lone surrogates escaped), at most QUOTED_CHARS."""
    shown = repr(value)
    return shown if len(shown) <= QUOTED_CHARS else shown[:QUOTED_CHARS] + "..."


class ApiError(Exception):
    """A request the service refuses or cannot serve; rendered as OpenAI's {"error": {...}} body with its
    status (4xx: the caller's mistake; 503: try again later; 500: ours)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", retry_after_s: int | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = {} if retry_after_s is None else {"Retry-After": str(retry_after_s)}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class EmbeddingRequest(BaseModel):
    """POST /v1/embeddings body: OpenAI's fields plus `input_type`, `truncate` and `chunking`."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr] | list[StrictInt] | list[list[StrictInt]]
    model: StrictStr | None = None  # None: the application's first model
    encoding_format: Literal["float", "base64", "int8", "uint8", "binary", "ubinary"] = "float"
    dimensions: StrictInt | None = Field(None, gt=0)
    user: StrictStr | None = None
    input_type: Literal["query", "document"] = "document"
    truncate: bool = True  # False: an input longer than the model's max length is an error
    # mean: an input longer than the model's max length is embedded as windows pooled into one vector
    # (serve/chunking.py); `truncate` applies only to none
    chunking: Literal["none", "mean"] = "none"


class QuantizationRequest(BaseModel):
    """POST /v1/quantization body: the model and dimensions whose int8/uint8 calibration ranges to return."""

    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None
    dimensions: StrictInt | None = Field(None, gt=0)


class TokenizeRequest(BaseModel):
    """POST /tokenize body: texts and the model whose tokenizer, prefix and truncation apply."""

    model_config = ConfigDict(extra="forbid")

    input: StrictStr | list[StrictStr]
    model: StrictStr | None = None
    input_type: Literal["query", "document"] = "document"
    truncate: bool = True


@dataclass
class Inputs:
    """A request's inputs as either texts or token id lists, never both."""

    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None

    def __len__(self) -> int:
        return len(self.texts if self.texts is not None else self.token_ids)


def parse_request(body: bytes, schema: type[BaseModel] = EmbeddingRequest) -> BaseModel:
    """Decode and check a request body against `schema`; ApiError(400) names the bad field."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON ({str(exc)[:QUOTED_CHARS]}); send a JSON object",
                       code="invalid_json") from None
    except ValueError:  # an integer literal past Python's digit limit
        raise ApiError(400, "request body holds a number too long to read; send plain JSON values",
                       code="invalid_json") from None
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply; send the fields of the embeddings API only",
                       code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object with an `input` field", code="invalid_json")
    try:
        request = schema.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc.errors()[0]) from None
    _check_unicode(request)
    return request


def _check_unicode(request: BaseModel) -> None:
    """Refuse strings that are not valid Unicode text (a lone surrogate such as "\\ud83d"): no tokenizer
    or response can carry them."""
    texts = getattr(request, "input", [])
    texts = [texts] if isinstance(texts, str) else texts
    fields = [(f"input[{index}]", "input", text) for index, text in enumerate(texts) if isinstance(text, str)]
    fields += [(name, name, getattr(request, name)) for name in ("model", "user") if getattr(request, name, None)]
    for where, param, text in fields:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ApiError(400, f"{where} is not valid Unicode text ({exc.reason} at position {exc.start}); "
                           "send UTF-8 text", param=param) from None


def _describe(error: dict) -> ApiError:
    param = str(error["loc"][0])[:QUOTED_CHARS] if error["loc"] else None
    if error["type"] == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument: {quoted(param)}; remove it", param=param)
    if error["type"] == "missing":
        return ApiError(400, f"{param} is required", param=param)
    if param == "input":
        return ApiError(400, f"input must be {INPUT_SHAPES}", param="input")
    return ApiError(400, f"{param or 'request'}: {error['msg']} (got {quoted(error.get('input'))})", param=param)


def split_inputs(raw: str | list, max_inputs: int) -> Inputs:
    """Turn the request's `input` into texts or token id lists, refusing empty and too many inputs."""
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise ApiError(400, "input must not be empty; send at least one text", param="input")
    if isinstance(raw[0], int):
        raw = [raw]
    if len(raw) > max_inputs:
        raise ApiError(400, f"input has {len(raw)} items; at most {max_inputs} per request", param="input",
                       code="too_many_inputs")
    if isinstance(raw[0], str):
        for index, text in enumerate(raw):
            if not text:
                raise ApiError(400, f"input[{index}] is an empty string; send non-empty text", param="input")
        return Inputs(texts=list(raw))
    for index, ids in enumerate(raw):
        if not ids:
            raise ApiError(400, f"input[{index}] is an empty list of token ids", param="input")
    return Inputs(token_ids=[list(ids) for ids in raw])


def check_token_ids(token_ids: list[list[int]], vocab_size: int) -> None:
    """Refuse token ids outside the model's vocabulary."""
    for index, ids in enumerate(token_ids):
        bad = [i for i in ids if not 0 <= i < vocab_size]
        if bad:
            raise ApiError(400, f"input[{index}] has token id {bad[0]} outside the vocabulary [0, {vocab_size})",
                           param="input")


def fit_lengths(token_ids: list[list[int]], max_length: int, truncate: bool) -> list[list[int]]:
    """Cut inputs to `max_length` tokens, or refuse the first longer one when `truncate` is off."""
    for index, ids in enumerate(token_ids):
        if len(ids) > max_length and not truncate:
            raise ApiError(400, f"input[{index}] has {len(ids)} tokens, more than the model's {max_length}; "
                           "shorten it or set truncate: true", param="input", code="context_length_exceeded")
    return [ids[:max_length] for ids in token_ids]


def shorten(vectors: np.ndarray, dimensions: int | None, renormalize: bool) -> np.ndarray:
    """Matryoshka truncation of (rows, dims) vectors to `dimensions`, re-normalised when the model normalises."""
    if dimensions is None or dimensions == vectors.shape[1]:
        return vectors
    vectors = vectors[:, :dimensions]
    if renormalize:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def embedding_response(vectors: np.ndarray, model: str, encoding_format: str, prompt_tokens: int,
                       ranges: np.ndarray | None = None) -> dict:
    """OpenAI's response body; base64 is little-endian float32, as the official clients decode it. The
    quantized formats (raylib.models.quantize, int8/uint8 with calibration `ranges`) give lists of integers:
    one per dimension for int8/uint8, one per 8 dimensions (packed sign bits) for binary/ubinary."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if encoding_format in PRECISIONS:
        encoded = quantize(vectors, encoding_format, ranges).tolist()
    elif encoding_format == "base64":
        encoded = [base64.b64encode(row.tobytes()).decode("ascii") for row in vectors]
    else:
        encoded = vectors.tolist()
    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)],
        "model": model,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }
