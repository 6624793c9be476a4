"""DeleteDocuments: remove the rows of the group's deleted keys."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ChunkedJob
from batch_embedder.steps.delete import delete_documents

lambda_handler = step_handler(ChunkedJob)(delete_documents)
