"""RecordFailure: cancel, settle, and name the Fail state and its cause."""

from batch_embedder.failure_models import FailureInput
from batch_embedder.handler import step_handler
from batch_embedder.settings import SETTLES, Mixins
from batch_embedder.steps.failure import record_failure

#: What its steps read: the settings mixins (template.yaml gives it their variables).
SETTINGS: Mixins = SETTLES


lambda_handler = step_handler(FailureInput, settings=SETTINGS)(record_failure)
