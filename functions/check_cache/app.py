"""CheckCache: reuse stored vectors, claim the rest."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ChunkedJob
from batch_embedder.settings import (
    DatabaseSettings,
    EmbeddingSettings,
    ProviderSettings,
    SyncSettings,
    WorkBucketSettings,
)
from batch_embedder.steps.cache import check_cache

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS = (EmbeddingSettings, ProviderSettings, SyncSettings, WorkBucketSettings, DatabaseSettings)


lambda_handler = step_handler(ChunkedJob, settings=SETTINGS)(check_cache)
