"""BuildAndUploadJsonl: pack request lines into batch input files and upload them."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ReservedJob
from batch_embedder.settings import PROVIDER, TABLES, BatchSettings, Mixins, WorkBucketSettings
from batch_embedder.steps.batch import build_and_upload_jsonl

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*PROVIDER, BatchSettings, WorkBucketSettings, *TABLES)


lambda_handler = step_handler(ReservedJob, settings=SETTINGS)(build_and_upload_jsonl)
