"""ReconcileBatches: (every ReconcileMinutes) retrieve open batches; the only poller."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import ScheduledEvent
from batch_embedder.settings import SETTLES, Mixins, UploadQueueSettings
from batch_embedder.steps.complete import reconcile

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*SETTLES, UploadQueueSettings)


lambda_handler = step_handler(ScheduledEvent, settings=SETTINGS)(reconcile)
