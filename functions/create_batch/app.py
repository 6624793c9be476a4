"""CreateBatch: create each batch once, within the Batch API's queue limits; register it."""

from batch_embedder.handler import step_handler
from batch_embedder.models import UploadedJob
from batch_embedder.settings import BATCH_POOL, PROVIDER, TABLES, Mixins
from batch_embedder.steps.batch import create_batches

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*PROVIDER, *BATCH_POOL, *TABLES)


lambda_handler = step_handler(UploadedJob, settings=SETTINGS)(create_batches)
