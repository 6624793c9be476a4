"""WebhookReceiver: (Function URL) verify OpenAI's batch webhooks and record the batch."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import FunctionUrlRequest
from batch_embedder.settings import BATCH_POOL, PROVIDER, TABLES, Mixins, WebhookSettings
from batch_embedder.steps.complete import receive_webhook

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = (*PROVIDER, *BATCH_POOL, *TABLES, WebhookSettings)


lambda_handler = step_handler(FunctionUrlRequest, settings=SETTINGS)(receive_webhook)
