"""BudgetCheck: reserve the group's new tokens against today's budgets."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ChunkedJob
from batch_embedder.settings import PROVIDER, TABLES, BudgetSettings, Mixins
from batch_embedder.steps.budget import reserve_budget

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*PROVIDER, BudgetSettings, *TABLES)


lambda_handler = step_handler(ChunkedJob, settings=SETTINGS)(reserve_budget)
