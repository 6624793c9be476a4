"""EmbedSync: Embed small or urgent jobs (or what a failed/expired batch left) through the
synchronous Embeddings API, paced by the shared token bucket.

Input: ``WriteInput``; output: see ``batch_embedder.steps.sync.embed_sync_step``.
"""

from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.utilities.parser import event_parser
from aws_lambda_powertools.utilities.typing import LambdaContext

from batch_embedder.models import WriteInput
from batch_embedder.settings import get_settings
from batch_embedder.steps.sync import embed_sync_step

logger = Logger()
tracer = Tracer()
metrics = Metrics()


@logger.inject_lambda_context
@tracer.capture_lambda_handler
@metrics.log_metrics
@event_parser(model=WriteInput)
def lambda_handler(event: WriteInput, context: LambdaContext) -> dict[str, Any]:
    """EmbedSync handler: one call into the library, its pydantic result as JSON."""
    return embed_sync_step(event, get_settings()).model_dump(mode="json")
