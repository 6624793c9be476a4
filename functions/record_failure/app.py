"""RecordFailure: Record why the job failed, cancel running batches, release its reservation, pick
the Fail state.

Input: ``FailureInput``; output: see ``batch_embedder.steps.failure.record_failure``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import FailureInput
from batch_embedder.settings import get_settings
from batch_embedder.steps.failure import record_failure

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=FailureInput)
def lambda_handler(event: FailureInput, context: LambdaContext) -> dict[str, Any]:
    """RecordFailure handler: one call into the library, its pydantic result as JSON."""
    return record_failure(event, get_settings()).model_dump(mode="json")
