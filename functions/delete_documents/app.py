"""DeleteDocuments: remove the rows of the group's deleted keys."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ChunkedJob
from batch_embedder.settings import DatabaseSettings
from batch_embedder.steps.delete import delete_documents

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS = (DatabaseSettings,)


lambda_handler = step_handler(ChunkedJob, settings=SETTINGS)(delete_documents)
