"""EmbedSync: embed urgent documents (or a failed batch's rest) through the synchronous API."""

from batch_embedder.handler import step_handler
from batch_embedder.models import WriteInput
from batch_embedder.steps.sync import embed_sync_step

lambda_handler = step_handler(WriteInput)(embed_sync_step)
