"""Files of the emulator: metadata in memory, contents on disk under ``data_dir/files``.

File objects follow the openai SDK's ``FileObject`` type (``id`` ``file-...``, ``object``
``"file"``, ``bytes``, ``created_at`` in Unix seconds, ``filename``, ``purpose``,
``status`` ``"processed"``). Metadata is not persisted: a restarted emulator starts empty.

Expiry: ``expires_at`` (Unix seconds) is ``created_at + N`` for an upload with
``expires_after={"anchor": "created_at", "seconds": N}`` or a batch output with
``output_expires_after``; otherwise ``created_at`` + 30 days for purposes ``batch`` /
``batch_output`` and None (kept until deleted) for the others. Files are deleted lazily:
once ``time.time() >= expires_at`` the next lookup, listing or count removes the file, so
it answers 404. ``created_at`` is whole seconds, so an N-second file lives between N - 1
and N seconds.
"""

from __future__ import annotations

import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from openai.types import FileObject

from .errors import new_id

__all__ = ["FileStore", "StoredFile"]

#: Purposes the SDK's FileObject accepts; uploads may use the first six.
UPLOAD_PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
#: Batch files (input and output) expire after 30 days (reference: Files API).
BATCH_FILE_TTL_SECONDS = 30 * 24 * 3600


@dataclass
class StoredFile:
    """One file: metadata plus where its bytes live."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path
    expires_at: int | None = None

    def to_model(self) -> FileObject:
        """The ``openai.types.FileObject`` served for this file (validated; a purpose the
        SDK's literal does not list yet, such as ``evals``, is kept as sent)."""
        fields: dict[str, Any] = {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }
        if self.purpose in get_args(FileObject.model_fields["purpose"].annotation):
            return FileObject.model_validate(fields)
        return FileObject.model_construct(**fields)

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_model` as a JSON-ready dict."""
        return self.to_model().model_dump(mode="json", warnings=False)


class FileStore:
    """Thread-safe registry of :class:`StoredFile` with contents under ``root``.

    Contents live in ``root/files/<file id>``; uploads and batch output are assembled in
    ``root/tmp``. Both sub-directories are emptied when the store is created (only they are
    touched, never anything else under ``root``).
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files_dir = root / "files"
        self.tmp_dir = root / "tmp"
        self._lock = threading.Lock()
        self._files: dict[str, StoredFile] = {}
        # Metadata is not persisted, so contents left by an earlier run are unreachable:
        # start from empty directories.
        self.clear()

    def new_tmp_path(self, suffix: str = "") -> Path:
        """A fresh path in the scratch directory (not created)."""
        return self.tmp_dir / (new_id("tmp-") + suffix)

    def adopt(
        self, tmp_path: Path, filename: str, purpose: str, expires_after: int | None = None
    ) -> StoredFile:
        """Register ``tmp_path`` (moved into the store) as a new file.

        Args:
            expires_after: lifetime in seconds from ``created_at``; None = the default
                (30 days for batch files, no expiry for the others).
        """
        file_id = new_id("file-")
        dest = self.files_dir / file_id
        tmp_path.replace(dest)
        now = int(time.time())
        if expires_after is not None:
            expires: int | None = now + expires_after
        else:
            expires = now + BATCH_FILE_TTL_SECONDS if purpose.startswith("batch") else None
        stored = StoredFile(file_id, filename, purpose, dest.stat().st_size, now, dest, expires)
        with self._lock:
            self._files[file_id] = stored
        return stored

    def purge_expired(self) -> int:
        """Delete every file whose ``expires_at`` has passed; returns how many."""
        now = time.time()
        with self._lock:
            gone = [
                f for f in self._files.values() if f.expires_at is not None and now >= f.expires_at
            ]
            for f in gone:
                del self._files[f.id]
        for f in gone:
            f.path.unlink(missing_ok=True)
        return len(gone)

    def get(self, file_id: str) -> StoredFile | None:
        """The file, or None if unknown, deleted or expired (an expired one is deleted)."""
        with self._lock:
            stored = self._files.get(file_id)
        if (
            stored is not None
            and stored.expires_at is not None
            and time.time() >= stored.expires_at
        ):
            self.delete(file_id)
            return None
        return stored

    def list_files(self, purpose: str | None = None) -> list[StoredFile]:
        """All unexpired files, newest first (ties: most recently added first)."""
        self.purge_expired()
        with self._lock:
            files = list(self._files.values())
        files.reverse()
        if purpose:
            files = [f for f in files if f.purpose == purpose]
        files.sort(key=lambda f: f.created_at, reverse=True)
        return files

    def delete(self, file_id: str) -> bool:
        """Remove a file; False if it was unknown or already expired (404 for the caller)."""
        with self._lock:
            stored = self._files.pop(file_id, None)
        if stored is None:
            return False
        stored.path.unlink(missing_ok=True)
        return stored.expires_at is None or time.time() < stored.expires_at

    def count(self) -> int:
        """Files currently stored (expired ones are deleted first)."""
        self.purge_expired()
        with self._lock:
            return len(self._files)

    def clear(self) -> None:
        """Forget every file and empty the files and scratch directories."""
        with self._lock:
            self._files.clear()
        for d in (self.files_dir, self.tmp_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True, exist_ok=True)
