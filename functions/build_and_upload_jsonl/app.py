"""BuildAndUploadJsonl: pack request lines into batch input files and upload them."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ReservedJob
from batch_embedder.steps.batch import build_and_upload_jsonl

lambda_handler = step_handler(ReservedJob)(build_and_upload_jsonl)
