"""gnnrec: a DGL-based distributed trainer for graph recommendation models.

Stages (each a plain function and a `gnnrec` subcommand, listed in launch/stages.py): synth, ingest,
partition, train, mine, infer, evaluate, recommend; `run` chains them from one config.
"""
import contextlib
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
    that exists under its final name is always complete. What a killed run left (its temporary
    directory, named after its host and pid) is removed by the next run writing `path` on that host.
    """
    if "://" in str(path):
        raise UserError(f"output {path}: outputs are written to local paths only")
    path = Path(path)
    if path.exists() and not overwrite:
        raise UserError(f"output {path} already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
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


def _reclaim_dead_runs(path: Path) -> None:
    import psutil

    for kind in ("tmp", "old"):
        prefix = f".{path.name}.{kind}-{socket.gethostname()}-"
        for left in path.parent.glob(glob.escape(prefix) + "*"):
            pid = left.name[len(prefix):].split("-")[0]
            if pid.isdigit() and not psutil.pid_exists(int(pid)):
                shutil.rmtree(left, ignore_errors=True)
