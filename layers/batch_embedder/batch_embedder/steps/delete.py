"""DeleteDocuments: the group's "Object Deleted" events (deletes and delete markers) remove
the objects' rows."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..db.connection import connect_settings
from ..db.vectors import delete_document
from ..metrics import emit
from ..models import ChunkedJob
from ..settings import Settings

logger = Logger(child=True)


def delete_documents(job: ChunkedJob, settings: Settings) -> ChunkedJob:
    """Delete every row of each deleted key, for every model (a bundle: all its documents),
    in one transaction.

    Idempotent: deleting again removes nothing more.

    Returns:
        The group unchanged (the rows deleted are logged and counted in ``rows_deleted``).
    """
    deleted = 0
    with connect_settings(settings) as conn, conn.transaction():
        for key in job.deletes:
            deleted += delete_document(conn, bucket=job.bucket, key=key)
    emit("rows_deleted", deleted, MetricUnit.Count)
    logger.info("documents deleted", extra={"keys": len(job.deletes), "rows_deleted": deleted})
    return job
