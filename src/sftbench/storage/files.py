"""Writing sftbench's files so that nothing is lost: atomic writes with the permissions any file of the user's
gets, folders checked before a run trains, a file that cannot be written kept in the system's temporary
folder, and the repository root the relative folders resolve against."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

RESCUE_DIR = Path(tempfile.gettempdir()) / "sftbench-rescued"
# Files rescued by this process go in a folder of their own, so that a later run never overwrites them.
RESCUE_RUN = f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


class NotWritten(OSError):
    """A file that could not be written where it belongs; the message says why and where it went instead."""


def write_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same folder, replaced into place: a crash or a
    full disk leaves the previous file (or none), never a partial one, and no temporary file behind.

    NotWritten where that fails; the text is then in RESCUE_DIR/<this run>/<the path's own folders>/<name>,
    which the message names."""
    path = Path(path)
    try:
        _replace_into(path, text)
    except OSError as error:
        rescued = rescue_path(path)
        try:
            _replace_into(rescued, text)
        except OSError as second:
            raise NotWritten(f"could not write {path} ({_why(error)}) nor {rescued} ({_why(second)})") from None
        raise NotWritten(f"could not write {path} ({_why(error)}); it is in {rescued} instead") from None
    return path


def rescue_path(path: Path) -> Path:
    """Where a file that cannot be written at `path` goes: its whole path under this run's rescue folder, so that a
    result and a baseline of one configuration, or two runs, never share one."""
    return RESCUE_DIR / RESCUE_RUN / Path(path).resolve().relative_to(Path(path).resolve().anchor)


def _replace_into(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~UMASK)  # mkstemp makes it private (0600); the file itself is the user's to share
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def not_writable(folder: Path) -> str | None:
    """Why files cannot be written in `folder` (created if missing), or None: checked by writing one."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"{folder} is not a writable folder ({_why(error)})"
    return None


def _why(error: OSError) -> str:
    return error.strerror or str(error)


def repository_root(start: Path | None = None) -> Path:
    """The folder that relative paths resolve against, as pytest's rootdir does for the plugin: the nearest
    folder at or above `start` (the working directory) holding pyproject.toml or conftest.py, else `start`."""
    start = Path(start or Path.cwd()).resolve()
    for folder in (start, *start.parents):
        if (folder / "pyproject.toml").is_file() or (folder / "conftest.py").is_file():
            return folder
    return start
