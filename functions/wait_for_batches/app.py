"""WaitForBatches: store the task token; the webhook or the reconciler ends the wait."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import WaitRequest
from batch_embedder.steps.complete import wait_for_batches

lambda_handler = step_handler(WaitRequest)(wait_for_batches)
