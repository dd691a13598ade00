"""One writer per output folder: a lock file that names its holder.

A stage that writes a folder holds ``.semore-<stage>.lock`` in it while it runs, or, when
nodes of a job array write side by side (``--worker-index I --num-workers N``), its slice's
``.semore-<stage>-I-of-N.lock``. A second writer whose slice overlaps a held one stops at
once with one line naming the holder (pid, host, since when).

A lock whose holder was killed is taken over: on the same host, a holder whose pid is not
running, or runs a process that started at another time (the pid was reused), is gone. A
lock from another host is never taken over: this machine cannot see that host's processes,
so the message says which file to delete once that process is known to be gone.

Taking a lock is atomic: the holder record is written to a temporary file and hard-linked
to the lock's name (``link`` fails if the name exists, as ``O_CREAT|O_EXCL`` does); a lock
file is never changed once linked. A stale lock is removed under an ``flock`` on the stale
file itself, and only if its name still points at that file, so of two processes that find
the same stale lock one removes it and both race for the name: exactly one links it. Locks
of one stage under different names (a slice and the whole folder) are checked again after
the link; of two that appeared at once, the one with the smaller token stays.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

from pipeline.errors import SemoreError

log = logging.getLogger(__name__)

LOCK_PREFIX = ".semore-"
LOCK_SUFFIX = ".lock"
MAX_TRIES = 5  # links lost to a racing writer before giving up (each loss re-reads the holder)


@dataclass(frozen=True)
class Holder:
    """What a lock file records about the process that holds it."""

    stage: str
    pid: int
    host: str
    # /proc/<pid>/stat start time (clock ticks since boot): tells a reused pid from the holder
    start_ticks: int | None
    since: str  # ISO time the lock was taken
    command: str
    worker_index: int
    num_workers: int
    token: str  # tells this lock apart from a later one at the same path

    def describe(self) -> str:
        part = f", slice {self.worker_index} of {self.num_workers}" if self.num_workers > 1 else ""
        return f"pid {self.pid} on {self.host} since {self.since}{part}"

    def overlaps(self, worker_index: int, num_workers: int) -> bool:
        """Whether this holder's slice shares work with ``worker_index`` of ``num_workers``.

        Slices of one split (same ``num_workers``) are disjoint; any other pair may overlap.
        """
        if self.num_workers != num_workers:
            return True
        return self.worker_index == worker_index


def process_start_ticks(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None where /proc is absent."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 2, the command name, is in parentheses and may hold spaces: split after it.
    fields_from_3 = text[text.rindex(")") + 2 :].split()
    return int(fields_from_3[22 - 3])  # field 22: starttime


def pid_running(pid: int) -> bool:
    """Whether a process ``pid`` exists on this host (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def holder_alive(holder: Holder) -> bool | None:
    """True / False on this host; None for another host's holder (it cannot be checked)."""
    if holder.host != socket.gethostname():
        return None
    if not pid_running(holder.pid):
        return False
    if holder.start_ticks is None:
        return True
    return process_start_ticks(holder.pid) == holder.start_ticks


def lock_name(stage: str, worker_index: int = 0, num_workers: int = 1) -> str:
    """``.semore-collect.lock`` for a whole folder, ``.semore-collect-1-of-4.lock`` for a slice."""
    part = f"-{worker_index}-of-{num_workers}" if num_workers > 1 else ""
    return f"{LOCK_PREFIX}{stage}{part}{LOCK_SUFFIX}"


def read_holder(path: Path) -> Holder | None:
    """The record in lock file ``path``; None if it vanished meanwhile."""
    try:
        data = json.loads(path.read_text())
        return Holder(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as err:
        raise SemoreError(
            f"lock file {path} is unreadable ({type(err).__name__}): expected a Semore lock "
            "record; if no process writes this folder, delete the file and rerun"
        ) from None


def remove_if_unchanged(path: Path, stale: Holder) -> None:
    """Unlink lock file ``path`` if it still is the ``stale`` holder's.

    The ``flock`` on the file serialises processes that found the same stale lock: the first
    removes it; the others then find the name gone, or opened a newer lock (another token)
    or a file the name no longer points at, and leave it.
    """
    try:
        fd = os.open(path, os.O_RDWR)  # NFS emulates an exclusive flock only on writable files
    except FileNotFoundError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            with os.fdopen(os.dup(fd)) as handle:
                record = json.loads(handle.read())
        except ValueError:  # not a lock record: not ours to remove
            return
        opened = os.fstat(fd)
        try:
            now = os.stat(path)
        except FileNotFoundError:
            return
        same_file = (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino)
        if same_file and record.get("token") == stale.token:
            os.unlink(path)
    finally:
        os.close(fd)  # releases the flock


class FolderLock:
    """The lock of one writer (``stage``) on ``folder`` or on its slice; a context manager.

    ``acquire`` creates ``folder`` if needed and raises ``SemoreError`` when an overlapping
    live lock exists; ``release`` (also on errors and Ctrl-C, through ``with``) removes the
    lock file if it is still this one.
    """

    def __init__(
        self,
        folder: str | Path,
        stage: str,
        worker_index: int = 0,
        num_workers: int = 1,
        create: bool = True,
    ) -> None:
        self.folder = Path(folder)
        self.create = create  # False: the folder must exist (a stage that adds to a dataset)
        self._made: list[Path] = []  # folders acquire() created, deepest first
        self.stage = stage
        self.worker_index = worker_index
        self.num_workers = num_workers
        self.path = self.folder / lock_name(stage, worker_index, num_workers)
        self.holder: Holder | None = None

    def _new_holder(self) -> Holder:
        pid = os.getpid()
        return Holder(
            stage=self.stage,
            pid=pid,
            host=socket.gethostname(),
            start_ticks=process_start_ticks(pid),
            since=datetime.now().astimezone().isoformat(timespec="seconds"),
            command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            worker_index=self.worker_index,
            num_workers=self.num_workers,
            token=uuid.uuid4().hex,
        )

    def acquire(self) -> FolderLock:
        if not self.create and not self.folder.is_dir():
            raise SemoreError(f"{self.folder} is not a folder: expected an existing dataset folder")
        holder = self._new_holder()
        tmp = self.folder / f"{self.path.name}.{holder.token}.tmp"
        # A folder made only to hold the lock goes again on release if nothing was written
        # to it: a run refused after taking the lock (bad input) leaves no trace.
        self._made = [d for d in (self.folder, *self.folder.parents) if not d.exists()]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(holder), indent=1) + "\n")
            self._link(tmp)
        except OSError as err:
            raise SemoreError(
                f"cannot write to {self.folder} ({err.strerror}): expected a writable folder"
            ) from None
        finally:
            with contextlib.suppress(OSError):  # never written if the folder is not one
                tmp.unlink(missing_ok=True)
        self.holder = holder
        try:
            self._check_after_link(holder)
        except SemoreError:
            self.release()
            raise
        return self

    def _link(self, tmp: Path) -> None:
        """Link ``tmp`` to the lock's name once no overlapping live lock is in the way."""
        for _ in range(MAX_TRIES):
            self._clear_way()
            try:
                os.link(tmp, self.path)  # fails if the name exists: never two holders
                return
            except FileExistsError:  # another writer linked it first: look at it again
                continue
        raise SemoreError(
            f"{self.path} kept changing while it was taken: expected one writer; rerun"
        )

    def _overlapping(self) -> Iterator[tuple[Path, Holder]]:
        """This stage's other locks in the folder whose slices overlap this one's."""
        for path in sorted(self.folder.glob(f"{LOCK_PREFIX}{self.stage}*{LOCK_SUFFIX}")):
            other = read_holder(path)
            if other is None or other.stage != self.stage:
                continue
            if other.overlaps(self.worker_index, self.num_workers):
                yield path, other

    def _clear_way(self) -> None:
        """Refuse if an overlapping lock is live or unknown; remove stale ones."""
        for path, other in self._overlapping():
            if holder_alive(other) is False:
                log.warning(
                    "taking over %s: its holder (%s) is no longer running", path, other.describe()
                )
                remove_if_unchanged(path, other)
                continue
            self._refuse(path, other)

    def _check_after_link(self, mine: Holder) -> None:
        """A lock under another name linked at the same time: the smaller token stays."""
        for path, other in self._overlapping():
            if other.token == mine.token or holder_alive(other) is False:
                continue
            if other.token < mine.token:
                self._refuse(path, other)

    def _refuse(self, path: Path, other: Holder) -> None:
        if holder_alive(other) is None:
            raise SemoreError(
                f"{self.folder} is locked by semore-{other.stage} {other.describe()}, another host "
                f"this machine cannot check: if that process is gone, delete {path} and rerun"
            )
        raise SemoreError(
            f"{self.folder} is being written by semore-{other.stage} {other.describe()}: "
            "expected one writer per folder (or per --worker-index slice); wait for it or stop it"
        )

    def release(self) -> None:
        """Remove the lock file if this process holds it (a forked child never releases)."""
        holder, self.holder = self.holder, None
        if holder is None or holder.pid != os.getpid():
            return
        with contextlib.suppress(OSError, SemoreError):
            current = read_holder(self.path)
            if current is not None and current.token == holder.token:
                self.path.unlink()
        for folder in self._made:
            try:
                folder.rmdir()
            except OSError:  # not empty: something was written, keep it (and its parents)
                break

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.release()


def tmp_owner_gone(pid_text: str) -> bool:
    """Whether the process that named a temporary file after its pid (``...tmp-<pid>``) is gone.

    Only meaningful under the lock of the files' slice: no other host writes them then.
    An unparseable suffix is kept (not ours to remove).
    """
    try:
        pid = int(pid_text)
    except ValueError:
        return False
    return not pid_running(pid)
