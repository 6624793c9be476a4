"""EmbedSync: embed urgent documents (or a failed batch's rest) through the synchronous API."""

from batch_embedder.handler import step_handler
from batch_embedder.models import WriteInput
from batch_embedder.settings import (
    BATCH_POOL,
    PROVIDER,
    TABLES,
    DatabaseSettings,
    Mixins,
    WorkBucketSettings,
)
from batch_embedder.steps.sync import embed_sync_step

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*PROVIDER, *BATCH_POOL, WorkBucketSettings, *TABLES, DatabaseSettings)


lambda_handler = step_handler(WriteInput, settings=SETTINGS)(embed_sync_step)
