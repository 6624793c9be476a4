"""FetchAndWrite: stream the new vectors and write every chunk to pgvector in one transaction."""

from batch_embedder.handler import step_handler
from batch_embedder.models import WriteInput
from batch_embedder.settings import (
    PROVIDER,
    TABLES,
    BatchSettings,
    DatabaseSettings,
    Mixins,
    SyncSettings,
    WorkBucketSettings,
)
from batch_embedder.steps.write import fetch_and_write

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (
    *PROVIDER,
    BatchSettings,
    SyncSettings,
    WorkBucketSettings,
    *TABLES,
    DatabaseSettings,
)


lambda_handler = step_handler(WriteInput, settings=SETTINGS)(fetch_and_write)
