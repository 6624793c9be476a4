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
    """Delete every row of each deleted object, for every model (a bundle: all its
    documents), each in its own transaction, unless a newer event of the key (a higher
    ``sequencer``) was applied first: then the delete is a no-op, reported as superseded.

    Idempotent: deleting again removes nothing more.

    Returns:
        The group with ``superseded_deletes`` (the rows deleted are logged and counted in
        ``rows_deleted``).
    """
    sequencers = job.delete_sequencers
    deleted = 0
    superseded: list[str] = []
    with connect_settings(settings) as conn:
        for key in job.deletes:
            rows = delete_document(
                conn, bucket=job.bucket, key=key, sequencer=sequencers.get(key, "")
            )
            if rows is None:
                superseded.append(key)
            else:
                deleted += rows
    emit("rows_deleted", deleted, MetricUnit.Count)
    logger.info(
        "documents deleted",
        extra={"keys": len(job.deletes), "rows_deleted": deleted, "superseded": superseded},
    )
    return job.model_copy(update={"superseded_deletes": superseded})
