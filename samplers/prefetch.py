"""`Prefetcher`: any batch iterator run ahead in a background thread."""
from __future__ import annotations

import queue
import threading
from typing import Iterable, Iterator

class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


_DONE = object()


class Prefetcher:
    """Iterates `batches` in a background thread, up to `depth` batches ahead, so compute does not wait
    on sampling. Yields in order; an exception raised by the iterator is re-raised by `next` here.
    Use as a context manager (or call `close`) to stop the thread early.

        with Prefetcher(sampler.sample(u[c], i[c]) for c in chunks) as batches:
            for batch in batches:
                loss = step(batch.to(device, non_blocking=True))

    Threads: the sampler is numpy, which releases the GIL in its array loops, so a thread is enough.
    torch.set_num_threads is per process, not per thread: leave a core for the sampler (e.g.
    torch.set_num_threads(cores - 1) in the trainer; Ray sets OMP_NUM_THREADS=1).
    With `DistNeighborhoods`, sampling is DistDGL RPC from this thread while the trainer also calls the
    servers (row pulls, sparse pushes) from its own: DGL's client is not thread-safe, so every call to
    the servers holds `dgl_adapter.RPC`.
    """

    def __init__(self, batches: Iterable, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._produce, args=(iter(batches),), daemon=True,
                                        name="gnnrec-prefetch")
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def _produce(self, batches: Iterator) -> None:
        try:
            for batch in batches:
                if not self._put(batch):
                    return
            self._put(_DONE)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self._put(_Failure(e))

    def __iter__(self):
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is _DONE or isinstance(item, _Failure):
            self._finished = True
            self._thread.join()
            if isinstance(item, _Failure):
                raise item.error
            raise StopIteration
        return item

    def close(self, timeout: float = 10.0) -> None:
        """Stop the producer and wait for its thread (it stops after the batch it is sampling)."""
        self._stop.set()
        self._finished = True
        while True:  # unblock a producer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
