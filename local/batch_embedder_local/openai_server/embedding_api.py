"""``POST /v1/embeddings`` semantics, shared by the synchronous endpoint and the batch worker.

Limits (from ``docs/openai-limits.md``, "Embeddings endpoint", which
follows the openai SDK's docstring for ``embeddings.create``): at most 2,048 inputs per
request, at most 8,192 cl100k_base tokens per input, at most 300,000 tokens summed over the
request, no empty strings; ``dimensions`` only for ``text-embedding-3-*``, 1..native. The
figures live in :class:`EmulatorConfig` so tests can lower them.

The vectors are the emulator's feature-hashing stand-ins (:mod:`.embeddings`), NOT OpenAI's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from openai.types import CreateEmbeddingResponse, Embedding
from openai.types.create_embedding_response import Usage

from batch_embedder.tokenizer import get_encoding

from .config import EmulatorConfig
from .embeddings import MODELS, ModelInfo, embed_texts
from .errors import APIError, invalid_input, model_not_found

__all__ = ["EmbeddingRequest", "parse_embedding_body", "render_embedding_response"]

#: Body fields of ``POST /v1/embeddings`` (openai SDK 3.54 ``EmbeddingCreateParams``);
#: OpenAI answers 400 "Unrecognized request argument supplied" for anything else.
KNOWN_PARAMETERS = frozenset({"model", "input", "dimensions", "encoding_format", "user"})


@dataclass
class EmbeddingRequest:
    """A syntactically valid embeddings request body, not yet checked against token limits.

    Attributes:
        model: the model entry.
        texts: the inputs as text (token-array inputs already decoded with cl100k_base).
        token_inputs: the token arrays when ``input`` was given as tokens, else ``None``.
        dimensions: floats per returned vector.
        encoding_format: ``"float"`` or ``"base64"``.
        token_counts: cl100k_base tokens per input, filled by :meth:`count_tokens`.
    """

    model: ModelInfo
    texts: list[str]
    token_inputs: list[list[int]] | None
    dimensions: int
    encoding_format: str
    token_counts: list[int] = field(default_factory=list)

    @property
    def total_tokens(self) -> int:
        return sum(self.token_counts)

    def count_tokens(self) -> list[int]:
        """Count tokens per input: the model's ``count_tokens`` if it has one, else
        cl100k_base (``encode_ordinary``: special tokens as text)."""
        if self.token_inputs is not None:
            self.token_counts = [len(t) for t in self.token_inputs]
        elif self.model.count_tokens is not None:
            self.token_counts = list(self.model.count_tokens(self.texts))
        else:
            enc = get_encoding()
            if len(self.texts) == 1:
                self.token_counts = [len(enc.encode_ordinary(self.texts[0]))]
            else:
                self.token_counts = [len(t) for t in enc.encode_ordinary_batch(self.texts)]
        return self.token_counts

    def check_token_limits(self, config: EmulatorConfig) -> None:
        """Raise the 400 OpenAI gives when an input or the whole request has too many tokens."""
        limit = min(config.max_tokens_per_input, self.model.max_input_tokens)
        for i, n in enumerate(self.token_counts):
            if n > limit:
                raise APIError(
                    400,
                    f"This model's maximum context length is {limit} "
                    f"tokens, however you requested {n} tokens ({n} in your prompt; 0 for the "
                    "completion). Please reduce your prompt; or completion length.",
                    param=f"input[{i}]" if len(self.token_counts) > 1 else "input",
                    code="context_length_exceeded",
                )
        total = self.total_tokens
        if total > config.max_tokens_per_request:
            raise APIError(
                400,
                f"Requested {total} tokens, max {config.max_tokens_per_request} tokens per request",
                type_="max_tokens_per_request",
                code="max_tokens_per_request",
            )


def _check_tokens(tokens: list[Any], n_vocab: int) -> list[int]:
    if not tokens:
        raise invalid_input()
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < n_vocab:
            raise invalid_input()
    return tokens


def parse_embedding_body(body: Any, config: EmulatorConfig) -> EmbeddingRequest:
    """Validate an embeddings request body (everything except token limits).

    Raises:
        APIError: 400 for a malformed body, 404 ``model_not_found`` for an unknown model.
    """
    if not isinstance(body, dict):
        raise APIError(400, "We could not parse the JSON body of your request.")
    for key in body:
        if key not in KNOWN_PARAMETERS:
            raise APIError(
                400,
                f"Unrecognized request argument supplied: {key}",
                param=key,
                code="unknown_parameter",
            )
    model_name = body.get("model")
    if model_name is None or model_name == "":
        raise APIError(
            400,
            "You must provide a model parameter.",
            param="model",
            code="missing_required_parameter",
        )
    if not isinstance(model_name, str):
        raise APIError(400, "Invalid type for 'model': expected a string.", param="model")
    info = MODELS.get(model_name)
    if info is None:
        raise model_not_found(model_name)

    if "input" not in body:
        raise APIError(
            400,
            "Missing required parameter: 'input'.",
            param="input",
            code="missing_required_parameter",
        )
    raw = body["input"]
    texts: list[str]
    token_inputs: list[list[int]] | None = None
    if isinstance(raw, str):
        texts = [raw]
    elif isinstance(raw, list) and raw:
        if len(raw) > config.max_inputs_per_request:
            raise APIError(
                400,
                f"'$.input' is too long. Maximum number of inputs is "
                f"{config.max_inputs_per_request}, but got {len(raw)}.",
                param="input",
                code="too_many_inputs",
            )
        first = raw[0]
        n_vocab = get_encoding().n_vocab
        if all(isinstance(x, str) for x in raw):
            texts = list(raw)
        elif isinstance(first, list):
            if not all(isinstance(x, list) for x in raw):
                raise invalid_input()
            token_inputs = [_check_tokens(x, n_vocab) for x in raw]
        elif isinstance(first, int) and not isinstance(first, bool):
            token_inputs = [_check_tokens(raw, n_vocab)]
        else:
            raise invalid_input()
    else:
        raise invalid_input()
    if token_inputs is not None:
        enc = get_encoding()
        texts = [enc.decode(t) for t in token_inputs]
    elif any(t == "" for t in texts):
        raise invalid_input()

    dimensions = body.get("dimensions")
    if dimensions is None:
        dims = info.native_dimensions
    else:
        if not info.supports_dimensions:
            raise APIError(
                400,
                "This model does not support specifying dimensions.",
                param="dimensions",
                code="unsupported_parameter",
            )
        if isinstance(dimensions, bool) or not isinstance(dimensions, int):
            raise APIError(
                400, "Invalid type for 'dimensions': expected an integer.", param="dimensions"
            )
        if not 1 <= dimensions <= info.native_dimensions:
            raise APIError(
                400,
                f"Invalid value for 'dimensions' = {dimensions}. Must be between 1 and "
                f"{info.native_dimensions}.",
                param="dimensions",
                code="invalid_value",
            )
        dims = dimensions

    encoding_format = body.get("encoding_format") or "float"
    if encoding_format not in ("float", "base64"):
        raise APIError(
            400,
            f"Invalid value: '{encoding_format}'. Supported values are: 'float' and 'base64'.",
            param="encoding_format",
            code="invalid_value",
        )
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise APIError(400, "Invalid type for 'user': expected a string.", param="user")
    return EmbeddingRequest(info, texts, token_inputs, dims, encoding_format)


def render_embedding_response(req: EmbeddingRequest) -> str:
    """The JSON text of the embeddings response (computes the vectors).

    Shape: ``openai.types.CreateEmbeddingResponse`` (validated for ``float``). Floats are the
    float32 values written as the shortest float64 text that reads back to them, so
    parsing and casting to float32 gives the same bits as ``base64``, which is the
    little-endian float32 bytes, as OpenAI sends (the SDK's ``List[float]`` type holds the
    string until the SDK decodes it, so that response is built unvalidated).
    """
    vectors = embed_texts(req.texts, req.dimensions, req.model.name)
    total = req.total_tokens
    usage = Usage(prompt_tokens=total, total_tokens=total)
    if req.encoding_format == "base64":
        encoded: list[Any] = [
            base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii") for vec in vectors
        ]
        data = [
            Embedding.model_construct(embedding=text, index=i, object="embedding")
            for i, text in enumerate(encoded)
        ]
        body = CreateEmbeddingResponse.model_construct(
            data=data, model=req.model.name, object="list", usage=usage
        )
        return body.model_dump_json(warnings=False)
    rows = vectors.astype(np.float64).tolist()
    response = CreateEmbeddingResponse.model_validate(
        {
            "data": [
                {"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)
            ],
            "model": req.model.name,
            "object": "list",
            "usage": usage,
        }
    )
    return response.model_dump_json()
