"""RecordCost: commit the billed tokens, write the ledger (OpenAI + AWS), list the results."""

from batch_embedder.handler import step_handler
from batch_embedder.models import WrittenJob
from batch_embedder.steps.cost import record_cost

lambda_handler = step_handler(WrittenJob)(record_cost)
