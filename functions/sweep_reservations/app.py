"""SweepReservations: (hourly) release reservations crashed executions left held."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import ScheduledEvent
from batch_embedder.steps.budget import sweep_reservations

lambda_handler = step_handler(ScheduledEvent)(sweep_reservations)
