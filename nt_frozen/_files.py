"""Files that are never half-written, and folders checked before any work.

The sweep's results and a kernel store's manifest and block markers are read
by other processes (a resumed run, another host) at any moment: each is
written to a temporary name in the same folder, flushed, and renamed into
place (`os.replace` is atomic on POSIX and Windows), so a reader sees the old
file or the whole new one, even when the writer is killed.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that `path` is never half-written.

    Example:
      >>> import tempfile
      >>> from pathlib import Path
      >>> path = Path(tempfile.mkdtemp()) / "a.txt"
      >>> write_text_atomic(path, "done").read_text()
      'done'
    """
    path = Path(path)
    # A leftover temporary file (a kill between write and replace) is hidden
    # and never matches the final name's suffix, so it is never read as done.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file private (0600); give it the mode `open`
        # would have, 0666 less the umask.
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def write_json_atomic(path: str | Path, value: Any, **dumps_kwargs) -> Path:
    """Write `value` as JSON to `path` so that `path` is never half-written.

    Example:
      >>> import json, tempfile
      >>> from pathlib import Path
      >>> path = Path(tempfile.mkdtemp()) / "a.json"
      >>> json.loads(write_json_atomic(path, {"a": 1}).read_text())
      {'a': 1}
    """
    return write_text_atomic(path, json.dumps(value, **dumps_kwargs))


def unwritable_reason(folder: str | Path) -> OSError | None:
    """Create `folder` if needed and try a file in it: the error, or None.

    Example:
      >>> import tempfile
      >>> unwritable_reason(tempfile.mkdtemp()) is None
      True
    """
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e
    return None


def _umask() -> int:
    """The process's umask (reading it means setting it: put it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable (where directories can be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
