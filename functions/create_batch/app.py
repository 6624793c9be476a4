"""CreateBatch: create each batch once, within the Batch API's queue limits; register it."""

from batch_embedder.handler import step_handler
from batch_embedder.models import UploadedJob
from batch_embedder.steps.batch import create_batches

lambda_handler = step_handler(UploadedJob)(create_batches)
