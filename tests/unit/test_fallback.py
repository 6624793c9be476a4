"""The local model inside the pipeline: when the fallback applies, what it re-submits, and
what the local provider bills (pure: no stack; the model runs for real)."""

from __future__ import annotations

import numpy as np
import pytest

from batch_embedder.db.fallback import FallbackDocument
from batch_embedder.local_model import is_installed
from batch_embedder.models import EmbedPlan, PendingWork, S3Location, WriteInput
from batch_embedder.openai.local_provider import embed_local
from batch_embedder.settings import Settings
from batch_embedder.steps import fallback

MODEL = "text-embedding-3-small"


def job(api: str, *, model: str = MODEL, pending: bool = False) -> WriteInput:
    plan = EmbedPlan.model_construct(api=api)
    rest = (
        PendingWork.model_construct(api="sync", manifest=S3Location(bucket="b", key="k"))
        if pending
        else None
    )
    return WriteInput.model_construct(model=model, embed=plan, pending=rest)


def test_the_fallback_applies_only_to_urgent_documents_of_the_provider_s_model() -> None:
    on = Settings(fallback_provider="local")
    assert fallback.applies(job("sync"), on)
    assert not fallback.applies(job("sync"), Settings())  # FALLBACK_PROVIDER=none
    assert fallback.applies(job("sync+batch"), on)  # its urgent documents
    assert not fallback.applies(job("batch"), on)
    assert not fallback.applies(job("sync", pending=True), on)  # a failed batch's rest
    assert not fallback.applies(job("sync", model="local-minilm"), on)
    assert fallback.fallback_owner("job-1") == "job-1#fallback"


def test_the_resubmitted_event_is_the_current_version_with_the_stored_sequencer() -> None:
    doc = FallbackDocument(
        bucket="docs",
        object_key="urgent/a b.txt",
        model="local-minilm",
        dimensions=384,
        sequencer="0" * 12 + "18A2B3C4D5E6F70000",
        resubmissions=0,
    )
    head = {"ContentLength": 1234, "ETag": '"abc123"', "VersionId": "v2"}
    event = fallback.upload_event(doc, head)
    assert event["detail-type"] == "Object Created"
    assert event["source"] == "aws.s3"
    assert event["detail"]["bucket"] == {"name": "docs"}
    assert event["detail"]["object"] == {
        "key": "urgent/a b.txt",  # EventBridge sends keys as they are, not URL-encoded
        "size": 1234,
        "etag": "abc123",
        "sequencer": doc.sequencer,  # not newer than the stored rows: never superseded
        "version-id": "v2",
    }
    unversioned = fallback.upload_event(doc, {**head, "VersionId": "null"})
    assert "version-id" not in unversioned["detail"]["object"]


@pytest.mark.skipif(not is_installed(), reason="the local-model extra is not installed")
def test_the_local_provider_bills_the_model_s_word_pieces() -> None:
    texts = ["The cat sat on the mat.", "", "Embeddings map text to vectors."]
    result = embed_local(texts)
    assert len(result.vectors) == 3
    assert all(v.shape == (384,) and v.dtype == np.float32 for v in result.vectors)
    assert all(abs(float(np.linalg.norm(v)) - 1.0) < 1e-5 for v in result.vectors)
    assert result.tokens[1] == 2  # [CLS] [SEP]
    assert result.tokens[0] == 9  # [CLS] the cat sat on the mat . [SEP]
    assert result.billed_tokens == sum(result.tokens)
    assert embed_local([]).billed_tokens == 0
    with pytest.raises(TypeError):
        embed_local("one string")
