"""WaitForBatches: store the task token; the webhook or the reconciler ends the wait."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import WaitRequest
from batch_embedder.settings import JobsTableSettings
from batch_embedder.steps.complete import wait_for_batches

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS = (JobsTableSettings,)


lambda_handler = step_handler(WaitRequest, settings=SETTINGS)(wait_for_batches)
