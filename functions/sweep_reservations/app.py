"""SweepReservations (scheduled, hourly): release token reservations that crashed
executions left held past RESERVATION_HOLD_SECONDS.

Input: the EventBridge scheduled event; output: ``SweepResult``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.parser.models import EventBridgeModel
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.settings import get_settings
from batch_embedder.steps.budget import sweep_reservations

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=EventBridgeModel)
def lambda_handler(event: EventBridgeModel, context: LambdaContext) -> dict[str, Any]:
    """SweepReservations handler: one call into the library, its pydantic result as JSON."""
    return sweep_reservations(get_settings()).model_dump(mode="json")
