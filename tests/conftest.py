"""Shared helpers for the foundation tests: configs rooted in tmp_path, Parquet writers, dataset readers."""
from __future__ import annotations

import contextlib
import json
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gnnrec.launch.config import load_config

# pytest runs with --import-mode=importlib (tests/ is not on sys.path): put it there so test modules
# can `from conftest import ...` these helpers.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))

REPO = Path(__file__).resolve().parents[1]
DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"

# Plain interaction input with no social edges, features or timestamps: tests add what they need.
BARE = ["ingest.social=null", "ingest.item_features=null", "ingest.user_features=null",
        "ingest.interactions.timestamp_column=null"]


@pytest.fixture(scope="module")
def local_ray():
    """An embedded Ray for one test module (stopping one a previous module left running)."""
    import ray

    from gnnrec.launch.cluster import start_embedded
    if ray.is_initialized():
        ray.shutdown()
    start_embedded(4)  # as `gnnrec` starts one
    yield
    ray.shutdown()


def partitioned_dataset(work, parts: int):
    """A small synthetic dataset under `work`, ingested and cut into `parts` partitions (and 8 clusters)."""
    from gnnrec.launch.stages import run
    run(load_config(None, [f"workdir={work}", "synth.users=400", "synth.items=300", "synth.edges=6000",
                           f"partition.parts={parts}", "partition.clusters=8", "run.stages=[synth, ingest, partition]"]))
    return work


def make_cfg(workdir, *overrides, config=None):
    """The quickstart config (or `config`) with workdir=`workdir` and the given overrides."""
    return load_config(config, [f"workdir={workdir}", *overrides])


def write_parquet(path, columns: dict, schema=None) -> Path:
    """Write a dict of lists/arrays (or a pa.Table) as one Parquet file; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = columns if isinstance(columns, pa.Table) else pa.table(columns, schema=schema)
    pq.write_table(table, path)
    return path


def edge_cfg(tmp_path, path, *overrides, weight=None, timestamp=None):
    """A config ingesting the interactions at `path` (columns user_id, item_id) into tmp_path/dataset."""
    return make_cfg(tmp_path, *BARE, f"ingest.interactions.path={path}",
                    f"ingest.interactions.weight_column={weight or 'null'}",
                    f"ingest.interactions.timestamp_column={timestamp or 'null'}", *overrides)


def read_ids(dataset, node_type) -> np.ndarray:
    """raw_id by new id (the ids/*.parquet map), as a numpy array (object for strings)."""
    t = pq.read_table(Path(dataset) / "ids" / f"{node_type}.parquet")
    ids = t.column("id").to_numpy()
    assert np.array_equal(ids, np.arange(len(ids))), "ids must be contiguous 0..n-1 in order"
    return t.column("raw_id").to_numpy(zero_copy_only=False)


def read_split(dataset, split) -> dict[str, np.ndarray]:
    t = pq.read_table(Path(dataset) / "edges" / f"{split}.parquet")
    return {name: t.column(name).to_numpy() for name in t.column_names}


def raw_pairs(dataset, split) -> set[tuple]:
    """The (raw user, raw item) pairs of one split, mapped back through the ID maps."""
    users, items = read_ids(dataset, "user"), read_ids(dataset, "item")
    e = read_split(dataset, split)
    return set(zip(users[e["user"]].tolist(), items[e["item"]].tolist()))


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())


def leftovers(directory) -> list[str]:
    """Temporary directories an atomic write may have left behind in `directory`."""
    directory = Path(directory)
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


SMALL_SYNTH = ["synth.users=2000", "synth.items=1000", "synth.edges=60000", "synth.communities=8",
               "synth.social_edges=8000", "synth.item_feature_dim=4", "synth.chunk_edges=20000",
               "synth.file_edges=20000"]


@pytest.fixture(scope="session")
def small_synth(tmp_path_factory):
    """One small synthetic run + its ingest (ratio split), shared by the read-only tests."""
    from gnnrec.data.ingest import run as ingest
    from gnnrec.data.synth import run as synth
    work = tmp_path_factory.mktemp("small")
    cfg = make_cfg(work, *SMALL_SYNTH)
    summary = synth(cfg)
    stats = ingest(cfg)
    return {"cfg": cfg, "synth": summary, "stats": stats, "work": work,
            "synth_dir": cfg.path(cfg.synth.out), "dataset": cfg.path(cfg.ingest.out)}


def pytest_collection_modifyitems(config, items):
    """Run the two-host test first: after an embedded Ray has run in this process, attaching to the
    simulated cluster fails (its first actors are cancelled before they start; cause not found yet).
    Tests marked `heavy` (minutes each, on the real datasets) run only when asked: `-m heavy`."""
    items.sort(key=lambda item: 0 if item.nodeid.startswith("tests/test_two_hosts.py") else 1)
    if "heavy" not in (config.getoption("markexpr") or ""):
        for item in items:
            if "heavy" in item.keywords:
                item.add_marker(pytest.mark.skip(reason="heavy: run with -m heavy"))


@contextlib.contextmanager
def watch_processes(out):
    """Yield a dict that receives the processes.json the job writing `out` reports while it runs
    (launch/job.py), read by a thread polling its temporary output every 20 ms."""
    seen, done = {}, threading.Event()

    def poll():
        while not done.is_set() and not seen:
            for report in Path(out).parent.glob(f".{Path(out).name}.tmp-*/processes.json"):
                with contextlib.suppress(OSError, ValueError):  # the job may end meanwhile
                    seen.update(json.loads(report.read_text()))
            done.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        done.set()
        thread.join()
