"""BudgetCheck: reserve the group's new tokens against today's budgets."""

from batch_embedder.handler import step_handler
from batch_embedder.models import ChunkedJob
from batch_embedder.steps.budget import reserve_budget

lambda_handler = step_handler(ChunkedJob)(reserve_budget)
