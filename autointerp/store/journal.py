"""The LLM call journal: ledger rows made durable the moment an answer arrives, before the batched insert
into `llm_calls`, so that a killed process loses only the calls still in flight.

Each process that records calls appends JSON lines, one `write()` per row, to its own file in the folder
`<store>.jobs/`, and holds an exclusive `flock` on that file while it lives. Once the process has inserted
its pending rows into `llm_calls`, it empties its file. A file whose lock can be taken belongs to a process
that is gone: opening the store for writing folds its rows into `llm_calls` (skipping rows already there, by
`call_uid`) and deletes it.

A row is safe once `write()` returns: the kernel holds it even if the process is killed. It is not fsync'd,
so a power cut can still lose the last seconds of answers (a crash of the machine, not of the job).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
from dataclasses import fields
from pathlib import Path

from autointerp.errors import AutointerpError
from autointerp.store.llm_calls import BODIES, LLMCall, insert_calls


def jobs_dir(store_path: str | Path) -> Path:
    """The folder beside the store for the files of jobs running on it: call journals and the job lock."""
    path = Path(store_path)
    return path.with_name(path.name + ".jobs")


class CallJournal:
    """This process's journal file for one store."""

    def __init__(self, store_path: str | Path):
        folder = jobs_dir(store_path)
        self.path = folder / f"{os.getpid()}-{secrets.token_hex(4)}.jsonl"
        try:
            folder.mkdir(exist_ok=True)
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError as exc:
            raise AutointerpError(
                f"cannot write the LLM call journal {self.path} ({exc.strerror}): the store's folder must be writable"
            ) from None
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._size = 0

    def append(self, call: LLMCall) -> None:
        # the bodies' JSON text is made once, for this line and the insert into llm_calls (`LLMCall.encoded`)
        head = json.dumps({f.name: getattr(call, f.name) for f in fields(call) if f.name not in BODIES}, default=str)
        bodies = "".join(f', "{name}": {call.encoded(name) or "null"}' for name in BODIES)
        line = f"{head[:-1]}{bodies}}}\n".encode()
        try:
            written = os.write(self._fd, line)
        except OSError as exc:
            raise AutointerpError(
                f"cannot write the LLM call journal {self.path} ({exc.strerror}): free disk space, then run again; "
                "everything stored so far is kept"
            ) from None
        self._size += written

    def clear(self) -> None:
        """Its rows are in llm_calls now."""
        if self._size:
            os.ftruncate(self._fd, 0)
            self._size = 0

    def close(self) -> None:
        """Delete the file (call after `clear`, when every row is in llm_calls)."""
        if self._fd < 0:
            return
        if self._size == 0:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = -1


def orphaned_journals(store_path: str | Path) -> list[tuple[Path, int, list[LLMCall]]]:
    """(file, its open locked descriptor, rows) for every journal whose process is gone. The caller folds the
    rows, then calls `discard`. A last line cut off mid-write is ignored (its call was still in flight)."""
    folder = jobs_dir(store_path)
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.glob("*.jsonl")):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # its process is alive
            os.close(fd)
            continue
        rows = []
        with os.fdopen(os.dup(fd), "rb") as f:
            for line in f:
                if not line.endswith(b"\n"):
                    break
                try:
                    rows.append(LLMCall(**json.loads(line)))
                except (ValueError, TypeError):
                    continue
        found.append((path, fd, rows))
    return found


def discard(path: Path, fd: int) -> None:
    path.unlink(missing_ok=True)
    os.close(fd)


def fold_journals(con, store_path: str | Path) -> int:
    """Insert the rows of journals left by processes that are gone into llm_calls (on `con`, a connection
    with no open transaction); return how many rows were new."""
    orphans = orphaned_journals(store_path)
    if not orphans:
        return 0
    before = con.execute("SELECT count(*) FROM llm_calls").fetchone()[0]
    con.execute("BEGIN TRANSACTION")
    try:
        insert_calls(con, [row for _, _, rows in orphans for row in rows], skip_known=True)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        for _, fd, _ in orphans:
            os.close(fd)
        raise
    for path, fd, _ in orphans:
        discard(path, fd)
    return con.execute("SELECT count(*) FROM llm_calls").fetchone()[0] - before
