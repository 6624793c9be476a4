"""ChunkAndEstimate: read the group's uploads, chunk them by tokens, estimate the cost."""

from batch_embedder.handler import step_handler
from batch_embedder.models import GroupRequest
from batch_embedder.settings import (
    BudgetSettings,
    ChunkingSettings,
    DatabaseSettings,
    EmbeddingSettings,
    PricingSettings,
    SyncSettings,
    WorkBucketSettings,
)
from batch_embedder.steps.chunk import chunk_and_estimate

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS = (
    ChunkingSettings,
    EmbeddingSettings,
    BudgetSettings,
    SyncSettings,
    PricingSettings,
    WorkBucketSettings,
    DatabaseSettings,
)


lambda_handler = step_handler(GroupRequest, settings=SETTINGS)(chunk_and_estimate)
