"""WebhookReceiver: (Function URL) verify OpenAI's batch webhooks and record the batch."""

from batch_embedder.handler import step_handler
from batch_embedder.service_models import FunctionUrlRequest
from batch_embedder.steps.complete import receive_webhook

lambda_handler = step_handler(FunctionUrlRequest)(receive_webhook)
