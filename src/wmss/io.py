"""Atomic file and directory writes: nothing half-written ever looks finished."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from wmss.errors import DataError


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict], ensure_ascii: bool = True) -> None:
    """One JSON object per line, in UTF-8; ``ensure_ascii=False`` writes non-ASCII text as it is
    rather than as ``\\uXXXX`` escapes."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=ensure_ascii) + "\n" for r in rows))


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_text(path: str | Path) -> str:
    """A UTF-8 text file; any other encoding is a ``DataError`` naming the file and the byte offset."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (byte {err.start}: {err.reason}); save it as UTF-8 and try again."
        ) from None


def _utf8_lines(handle: Any, path: str | Path) -> Iterator[str]:
    lineno = 0
    try:
        for lineno, line in enumerate(handle, start=1):  # noqa: B007 — the number is needed if it fails
            yield line
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path}, line {lineno + 1}: not UTF-8 text ({err.reason}); save the file as UTF-8 and try again."
        ) from None


def read_jsonl(path: str | Path, bad_lines: list[int] | None = None) -> list[dict]:
    """The JSON objects of a UTF-8 JSONL file (gzip-compressed when its name ends in ``.gz``), one per
    non-blank line.

    A line that is not a JSON object raises ``DataError`` naming the file and the line; with
    ``bad_lines`` (a list), such lines are skipped and their numbers (from 1) appended to it instead.
    """
    rows = []
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for lineno, line in enumerate(_utf8_lines(f, path), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                if bad_lines is not None:
                    bad_lines.append(lineno)
                    continue
                raise DataError(
                    f"{path}, line {lineno}: not valid JSON ({err.msg} at column {err.colno}). "
                    "Each line must be one JSON object; fix or remove that line."
                ) from None
            if not isinstance(row, dict):
                if bad_lines is not None:
                    bad_lines.append(lineno)
                    continue
                raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}.")
            rows.append(row)
    return rows


@contextlib.contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (read in blocks)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def out_of_space(path: str | Path, margin: int = 16 << 20) -> bool:
    """Whether the file system holding ``path`` (or its nearest existing parent) has less than ``margin``
    bytes free: tells a full disk from other failures of libraries that do not say (torch.save)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def remove_litter(root: str | Path) -> None:
    """Remove the temporary files and directories (``.NAME.tmp-PID``, written by the functions above)
    under ``root`` that a process killed while writing left behind: those whose process has ended."""
    root = Path(root)
    for path in sorted(root.rglob(".*.tmp-*"), reverse=True):
        match = re.fullmatch(r"\..+\.tmp-(\d+)", path.name)
        if match is None or _running(int(match.group(1))):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        logging.getLogger("wmss").info(
            "%s: removed %s, left by an interrupted write.", root, path.relative_to(root)
        )


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # this process is not writing it now: left by an earlier process with the same pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid > 0
    return True
