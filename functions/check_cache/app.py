"""CheckCache: reuse stored vectors, claim the rest."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ChunkedJob
from batch_embedder.steps.cache import check_cache

lambda_handler = step_handler(ChunkedJob)(check_cache)
