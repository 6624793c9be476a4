"""ReconcileBatches: (every ReconcileMinutes) retrieve open batches; the only poller."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import ScheduledEvent
from batch_embedder.steps.complete import reconcile

lambda_handler = step_handler(ScheduledEvent)(reconcile)
