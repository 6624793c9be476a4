"""SweepReservations: (hourly) release reservations crashed executions left held."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import ScheduledEvent
from batch_embedder.settings import SETTLES, BudgetSettings, Mixins
from batch_embedder.steps.budget import sweep_reservations

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*SETTLES, BudgetSettings)


lambda_handler = step_handler(ScheduledEvent, settings=SETTINGS)(sweep_reservations)
