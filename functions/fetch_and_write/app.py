"""FetchAndWrite: stream the new vectors and write every chunk to pgvector in one transaction."""

from batch_embedder.handler import step_handler
from batch_embedder.models import WriteInput
from batch_embedder.steps.write import fetch_and_write

lambda_handler = step_handler(WriteInput)(fetch_and_write)
