"""ChunkAndEstimate: read the group's uploads, chunk them by tokens, estimate the cost."""

from batch_embedder.handler import step_handler
from batch_embedder.models import GroupRequest
from batch_embedder.steps.chunk import chunk_and_estimate

lambda_handler = step_handler(GroupRequest)(chunk_and_estimate)
