"""CloudWatch metrics (EMF) that are safe when several invocations share a process.

Powertools' ``Metrics`` keeps one metric set per process; when two invocations run at once
in one process (the local stack runs every Lambda in one), one flush can clear what the
other is about to serialise ("Must contain at least one metric"). Each metric here is
written at once with its own ``single_metric`` context, with the ``service`` dimension the
dashboard and the budget alarm use. Namespace: ``POWERTOOLS_METRICS_NAMESPACE``.
"""

from __future__ import annotations

import os

from aws_lambda_powertools.metrics import MetricUnit, single_metric

DEFAULT_NAMESPACE = "BatchEmbedder"


def emit(name: str, value: float, unit: MetricUnit = MetricUnit.Count) -> None:
    """Write one metric now (one EMF line on stdout, which CloudWatch Logs ingests)."""
    namespace = os.environ.get("POWERTOOLS_METRICS_NAMESPACE", DEFAULT_NAMESPACE)
    service = os.environ.get("POWERTOOLS_SERVICE_NAME", "batch-embedder")
    with single_metric(
        name=name,
        unit=unit,
        value=value,
        namespace=namespace,
        default_dimensions={"service": service},
    ):
        pass
