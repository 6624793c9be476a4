"""RecordCost: commit the billed tokens, write the ledger (OpenAI + AWS), list the results."""

from batch_embedder.handler import step_handler
from batch_embedder.models import WrittenJob
from batch_embedder.settings import (
    TABLES,
    EmbeddingSettings,
    GroupingSettings,
    Mixins,
    PricingSettings,
    WorkBucketSettings,
)
from batch_embedder.steps.cost import record_cost

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (
    EmbeddingSettings,
    PricingSettings,
    GroupingSettings,
    WorkBucketSettings,
    *TABLES,
)


lambda_handler = step_handler(WrittenJob, settings=SETTINGS)(record_cost)
