"""RecordFailure: cancel, settle, and name the Fail state and its cause."""

from batch_embedder.failure_models import FailureInput
from batch_embedder.handler import step_handler
from batch_embedder.steps.failure import record_failure

lambda_handler = step_handler(FailureInput)(record_failure)
