"""gnnrec: a DGL-based distributed trainer for graph recommendation models.

Stages (each a plain function and a `gnnrec` subcommand, listed in launch/stages.py): synth, ingest,
partition, train, mine, infer, evaluate, recommend; `run` chains them from one config.
"""
import contextlib
import errno
import glob
import os
import shutil
import socket
import uuid
from pathlib import Path

__version__ = "0.1.0"

NODE_TYPES = ("user", "item")  # every graph: users and items, ids 0-based per type


class UserError(Exception):
    """Bad input or bad config: the CLI prints the message on one line and exits with status 2."""


# what the user can fix about where outputs go: a full disk, a quota or file-size limit, a read-only or
# forbidden place, a file where a directory belongs
OUTPUT_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                 errno.EEXIST}


class JobFailed(RuntimeError):
    """A distributed job failed (a graph server or trainer died, froze or raised): one line naming it,
    exit status 1. `restartable`: whether a restart from the last checkpoint may succeed (a process
    lost), unlike an exception of the code, which would repeat."""

    def __init__(self, message: str, restartable: bool = True):
        super().__init__(message)
        self.restartable = restartable


@contextlib.contextmanager
def atomic_dir(path, overwrite=True):
    """Yield a temporary sibling directory that becomes `path` only when the block completes.

    A crash or error leaves nothing at `path` (and removes the temporary directory), so a directory
    that exists under its final name is always complete; a second job writing `path` meanwhile is
    refused. What a killed run left (its temporary directory, named after its host and pid) is removed
    by the next run writing `path` on that host.
    """
    if "://" in str(path):
        raise UserError(f"output {path}: outputs are written to local paths only")
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"output {path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(path):  # one job per output
        _reclaim_dead_runs(path)
        tmp = path.parent / f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if path.exists():
            old = tmp.with_name(tmp.name.replace(".tmp-", ".old-", 1))
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)


@contextlib.contextmanager
def exclusive(path):
    """Hold the job lock of the output `path` for the block: one job writes an output at a time, a
    second is refused in one line. The lock is an flock(2) on `.{name}.lock` beside `path`, which the
    kernel drops when its holder dies (a killed job never holds it); the holder removes the file."""
    import fcntl

    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{path}: another job is writing it ({holder}); wait for it to end or give this "
                            "job another output") from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:  # not a file its last holder removed meanwhile
                break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        os.close(fd)


def contained(directory, name: str, source) -> Path:
    """`directory / name`, for a `name` read from the file `source`, once it resolves (symlinks and '..'
    followed) to a path strictly inside `directory`; UserError naming `source` otherwise: a name in a file
    anyone could edit must never lead a job to /etc."""
    base, path = Path(directory).resolve(), (Path(directory) / name).resolve()
    if path == base or not path.is_relative_to(base):
        raise UserError(f"{source}: names {name!r}, which is not inside {directory}: refusing to follow it "
                        "(a damaged or tampered file)")
    return Path(directory) / name


def _reclaim_dead_runs(path: Path) -> None:
    import psutil

    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-{socket.gethostname()}-"
        for left in path.parent.glob(glob.escape(prefix) + "*"):
            pid = left.name[len(prefix):].split("-")[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
