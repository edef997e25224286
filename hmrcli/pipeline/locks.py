"""Per-image advisory locks, so that several hmrcli processes can share one output tree.

Before an image is read, its worker takes an exclusive ``flock`` on
``OUT/.hmrcli-locks/<digest of NAME>.lock`` without waiting. An image whose lock another
process holds is left to that process (counted as skipped, with the reason); an image that
another process recorded in the manifest as finished with the same settings after this run
made its plan (:class:`ManifestTail`) is not done twice. So two identical runs started together into one ``OUT`` split the
images between them instead of both doing all the work, and N processes of one job
(e.g. a farm's job array without ``--shard``) share the work dynamically.

``flock`` locks belong to the open file: they are released when the process ends, however
it ends (kill -9 included), so a crashed run leaves no stale lock. On NFS, Linux emulates
``flock`` with byte-range locks, which all clients of the server see. The lock files (empty)
are left in place: removing one while another process is about to lock it would let two
processes hold "the" lock on different files.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import threading
from pathlib import Path

LOCKS_DIR = ".hmrcli-locks"


class ImageLocks:
    """The locks this process holds on images of ``out`` (thread-safe)."""

    def __init__(self, out: Path) -> None:
        self.dir = Path(out) / LOCKS_DIR
        self._fds: dict[str, int] = {}
        self._mu = threading.Lock()

    def _path(self, name: str) -> Path:
        digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return self.dir / f"{digest}.lock"

    def try_lock(self, name: str) -> bool:
        """Take the lock of image ``name``; False when another process holds it. Raises
        OSError when the lock file cannot be made (an unwritable output folder)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._path(name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        with self._mu:
            old = self._fds.pop(name, None)
            self._fds[name] = fd
        if old is not None:
            os.close(old)
        return True

    def release(self, name: str) -> None:
        with self._mu:
            fd = self._fds.pop(name, None)
        if fd is not None:
            os.close(fd)  # closing the file releases its flock

    def release_all(self) -> None:
        with self._mu:
            fds, self._fds = list(self._fds.values()), {}
        for fd in fds:
            os.close(fd)


class ManifestTail:
    """The image lines other processes append to ``OUT/manifest.jsonl`` during this run: read
    incrementally from the manifest's size when the plan was made (``offset``), so each check
    reads only what is new. Only whole lines count (a line being written is read next time)."""

    def __init__(self, path: Path, offset: int) -> None:
        self.path, self.offset = Path(path), int(offset)
        self._done: dict[str, str] = {}

    def _read(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        for raw in data[:end].split(b"\n"):
            try:
                rec = json.loads(raw)
            except ValueError:
                continue  # a torn line (a killed writer)
            if isinstance(rec, dict) and rec.get("kind") == "image" and "name" in rec:
                self._done[str(rec["name"])] = str(rec.get("settings_id"))
        self.offset += end + 1

    def finished(self, name: str, sid: str) -> bool:
        """Whether a process recorded image ``name`` as finished with settings ``sid`` since
        the plan was made."""
        self._read()
        return self._done.get(name) == sid
