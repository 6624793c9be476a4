"""DeleteDocument: an "Object Deleted" event (or a delete marker) removes the object's rows."""

from __future__ import annotations

from aws_lambda_powertools import Logger
from aws_lambda_powertools.metrics import MetricUnit

from ..db.connection import connect_settings
from ..db.vectors import delete_document
from ..metrics import emit
from ..models import DeleteRequest, DeleteResult
from ..settings import Settings

logger = Logger(child=True)


def delete_object_rows(request: DeleteRequest, settings: Settings) -> DeleteResult:
    """Delete every row of the deleted object, for every model (a bundle: all its documents).

    Idempotent: deleting again removes nothing more.
    """
    bucket = request.event.detail.bucket.name
    key = request.event.detail.object.key
    with connect_settings(settings) as conn:
        deleted = delete_document(conn, bucket=bucket, key=key)
    emit("rows_deleted", deleted, MetricUnit.Count)
    logger.info("document deleted", extra={"key": key, "rows_deleted": deleted})
    return DeleteResult(bucket=bucket, key=key, rows_deleted=deleted)
