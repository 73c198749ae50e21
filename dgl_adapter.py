"""The one place that imports dgl (DGL is frozen at 2.1.0; keep the rest of gnnrec engine-agnostic).

Node types are `user` and `item`; edge types are gnnrec/relations.py's (EDGE_TYPES: their canonical form).
"""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import threading
import time
import types

import numpy as np
import torch

from gnnrec.arrays import group_by
from gnnrec.relations import RELATIONS, canonical

# DistDGL's RPC client is not thread-safe (two threads take each other's replies: KeyError in recv_responses):
# every call to the servers holds this lock, so a sampler thread and the training thread share one client.
RPC = threading.RLock()


def _serialized(fn):
    @functools.wraps(fn)
    def call(*args, **kwargs):
        with RPC:
            return fn(*args, **kwargs)
    return call

EDGE_TYPES = {relation: canonical(relation) for relation in RELATIONS}
INTERACTS = EDGE_TYPES["interacts"]


def _dgl():
    os.environ.setdefault("DGLBACKEND", "pytorch")
    import dgl
    return dgl


@contextlib.contextmanager
def _written(path):
    """DGL's C++ writers report a write the disk refused (full, a quota, a file-size limit) as a DGLError
    with a C++ backtrace; here it is the OSError a Python write raises, naming the file."""
    try:
        yield
    except _dgl().DGLError as e:
        if "Write incomplete" not in str(e):
            raise
        raise OSError(errno.ENOSPC, "the disk refused more bytes (full, quota or size limit)", str(path)) from None


def save_graph(path, num_users: int, num_items: int, user: np.ndarray, item: np.ndarray,
               edge_data: dict[str, np.ndarray], social: tuple[np.ndarray, np.ndarray] | None = None) -> None:
    """Save the user–item graph (both directions, plus user→user when `social` is given) as a DGL file,
    `edge_data` (e.g. weight, timestamp, count) on both interaction directions."""
    dgl = _dgl()
    u, i = torch.from_numpy(user), torch.from_numpy(item)
    data = {EDGE_TYPES["interacts"]: (u, i), EDGE_TYPES["interacted_by"]: (i, u)}
    if social is not None:
        data[EDGE_TYPES["follows"]] = (torch.from_numpy(social[0]), torch.from_numpy(social[1]))
    g = dgl.heterograph(data, num_nodes_dict={"user": num_users, "item": num_items})
    for name, values in edge_data.items():
        g.edges["interacts"].data[name] = g.edges["interacted_by"].data[name] = torch.from_numpy(values)
    with _written(path):
        dgl.save_graphs(str(path), [g])


def load_graph(path):
    """Load a graph written by save_graph."""
    return _dgl().load_graphs(str(path))[0][0]


def type_ids(edge_types) -> tuple[dict[str, int], dict[tuple, int]]:
    """DGL's node-type and edge-type ids for a heterograph with these canonical edge types."""
    dgl = _dgl()
    empty = torch.zeros(0, dtype=torch.int64)
    g = dgl.heterograph({et: (empty, empty) for et in edge_types})
    return {nt: g.get_ntype_id(nt) for nt in g.ntypes}, {et: g.get_etype_id(et) for et in g.canonical_etypes}


def metis_assignment(num_nodes: int, src: np.ndarray, dst: np.ndarray, node_type: np.ndarray, parts: int) -> np.ndarray:
    """DGL's METIS on a homogeneous graph (symmetrized inside), balancing node count and in-degree per
    node type, as partition_graph(balance_ntypes=..., balance_edges=True) does. The graph must have no
    duplicate edges (DGL's METIS corrupts the heap on them)."""
    dgl = _dgl()
    g = dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=num_nodes, idtype=torch.int64)
    return dgl.metis_partition_assignment(g, parts, balance_ntypes=torch.from_numpy(node_type),
                                          balance_edges=True).numpy()


def save_partition(directory, num_nodes: int, src: np.ndarray, dst: np.ndarray, ndata: dict, edata: dict,
                   node_feats: dict, edge_feats: dict) -> None:
    """Write one partition as DGL's partition_graph does: graph.dgl (homogeneous, with _ID/_TYPE/
    inner_node/part_id node data and _ID/_TYPE/inner_edge edge data), node_feat.dgl, edge_feat.dgl."""
    dgl = _dgl()
    from dgl.data.utils import save_tensors
    g = dgl.graph((torch.from_numpy(src), torch.from_numpy(dst)), num_nodes=num_nodes, idtype=torch.int64)
    g.ndata.update({name: torch.from_numpy(values) for name, values in ndata.items()})
    g.edata.update({name: torch.from_numpy(values) for name, values in edata.items()})
    with _written(directory):
        dgl.save_graphs(str(directory / "graph.dgl"), [g])
        for name, feats in (("node_feat", node_feats), ("edge_feat", edge_feats)):
            save_tensors(str(directory / f"{name}.dgl"),
                         {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feats.items()})


# ---------------------------------------------------------------- DistDGL (servers and clients)

def dist_env(role: str, ip_config, part_config, num_servers: int, num_clients: int, server_id: int = 0,
             num_samplers: int = 0) -> dict[str, str]:
    """The environment DistDGL reads in dgl.distributed.initialize."""
    return {"DGL_ROLE": role, "DGL_SERVER_ID": str(server_id), "DGL_NUM_SERVER": str(num_servers),
            "DGL_NUM_CLIENT": str(num_clients), "DGL_CONF_PATH": str(part_config),
            "DGL_IP_CONFIG": str(ip_config), "DGL_NUM_SAMPLER": str(num_samplers),
            "DGL_DIST_MODE": "distributed", "DGL_GRAPH_FORMAT": "csc"}


def serve(env: dict[str, str]) -> None:
    """Run a graph server until every client has exited (DGL ends it with SystemExit, caught here)."""
    os.environ.update(env)
    dgl = _dgl()
    _shorten_the_servers_wait_for_clients()
    with contextlib.suppress(SystemExit):
        dgl.distributed.initialize(env["DGL_IP_CONFIG"])


def _shorten_the_servers_wait_for_clients() -> None:
    """DGL 2.1's server sleeps 3 s once its clients have registered, "for the clients' receivers to be
    ready", before it connects back to them; every client waits those 3 s in `initialize`. A client
    listens right after sending its registration (and a connect that came too early is retried 5 s
    later): 0.1 s is enough. Measured: a client's initialize takes 0.11-0.12 s instead of 3.0 s."""
    from dgl.distributed import rpc_server
    rpc_server.time = types.SimpleNamespace(sleep=lambda seconds: time.sleep(0.1 if seconds == 3 else seconds))


def job_features(part_config: str, part: int, directory: str) -> str:
    """The part config to serve partition `part` with: its feature files copied into `directory` with
    every name made the job's own (`<type>/<feat>` -> `<type>/<graph name>_<feat>`, the graph name being
    the job's; read them with `dist_values`); `part_config` itself when the part has none.
    DistDGL names a feature's shared memory after the feature alone, so two jobs serving features of the
    same name on one machine would write into each other's."""
    from dgl.data.utils import load_tensors, save_tensors
    meta = json.loads(open(part_config).read())
    files, graph, copied = meta[f"part-{part}"], meta["graph_name"], False
    for key in ("node_feats", "edge_feats"):
        tensors = load_tensors(files[key]) if os.path.exists(files[key]) else {}
        if tensors:
            files[key] = os.path.join(directory, f"{key}.dgl")
            save_tensors(files[key], {f"{k.rsplit('/', 1)[0]}/{graph}_{k.rsplit('/', 1)[1]}": v
                                      for k, v in tensors.items()})
            copied = True
    if not copied:
        return part_config
    path = os.path.join(directory, "part_config.json")
    with open(path, "w") as f:
        json.dump(meta, f)
    return path


def connect(env: dict[str, str], graph_name: str):
    """Connect this process to the graph servers as a client; return the DistGraph."""
    os.environ.update(env)
    dgl = _dgl()
    dgl.distributed.initialize(env["DGL_IP_CONFIG"])
    return dgl.distributed.DistGraph(graph_name)


def disconnect() -> None:
    _dgl().distributed.exit_client()


@_serialized
def dist_sample_one(graph, nodes: np.ndarray, node_type: str, etype: str) -> np.ndarray:
    """One random out-neighbour over `etype` of each of `nodes` (duplicates draw independently) from
    a DistGraph; -1 where a node has none. Neighbours are sampled where their partition lives."""
    dgl = _dgl()
    out = np.full(len(nodes), -1, np.int64)
    if not len(nodes):
        return out
    # sample_neighbors would draw one edge among all edge types; this draws one of `etype` only
    canonical = next(c for c in graph.canonical_etypes if c[0] == node_type and c[1] == etype)
    fanout = {c: int(c == canonical) for c in graph.canonical_etypes}
    frontier = dgl.distributed.sample_etype_neighbors(graph, {node_type: torch.from_numpy(nodes)}, fanout,
                                                      edge_dir="out", etype_sorted=False)
    src, dst, _ = (t.numpy() for t in _frontier_edges(frontier, canonical))
    if not len(src):
        return out
    # the k-th walker at node v takes the k-th edge sampled from v
    walkers = np.argsort(nodes, kind="stable")
    at = nodes[walkers]
    edges = np.argsort(src, kind="stable")
    src, dst = src[edges], dst[edges]
    index = np.minimum(np.searchsorted(src, at) + np.arange(len(at)) - np.searchsorted(at, at), len(src) - 1)
    ok = src[index] == at
    out[walkers[ok]] = dst[index[ok]]
    return out


def _frontier_edges(frontier, canonical_etype: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(src, dst, per-type edge id) of one edge type of a frontier from sample_etype_neighbors, which
    leaves out every edge type it drew no edge of (unless it drew none at all)."""
    if canonical_etype not in frontier.canonical_etypes:
        return (torch.zeros(0, dtype=torch.int64),) * 3
    return (*frontier.edges(etype=canonical_etype), frontier.edges[canonical_etype].data[_dgl().EID])


def dist_train_edges(graph, rank: int, world: int) -> np.ndarray:
    """This trainer's share of the user→item training edges (DistGraph edge ids). DGL gives each
    host (partition) an equal slice of the edge ids, mostly its own partition's edges, and `rank`
    modulo the trainers per host picks the share within it: every edge goes to exactly one trainer
    as long as the trainers of a host have distinct rank % trainers_per_host (Ray Train's ranks do)."""
    dgl = _dgl()
    mask = torch.ones(graph.num_edges(INTERACTS), dtype=torch.bool)
    eids = dgl.distributed.edge_split(mask, graph.get_partition_book(), etype=INTERACTS, rank=rank,
                                      force_even=True, edge_trainer_ids=None)
    return eids.numpy()


@_serialized
def dist_find_edges(graph, eids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, item) endpoints of user→item edges. DGL builds and keeps the local partition's COO for it
    (16 bytes an edge, 1.9 GB at 100M rows): the partition as it was (shared CSC) replaces it after."""
    local = graph.local_partition
    before = None if local is None else local.formats()
    u, i = graph.find_edges(torch.from_numpy(eids), etype=INTERACTS)
    if before is not None and "coo" not in before["created"]:  # it may still build CSR (out-edges), not COO
        graph._g = local.formats(before["created"] + [f for f in before["not created"] if f != "coo"])
    return u.numpy(), i.numpy()


@_serialized
def dist_out_neighbors(graph, nodes: np.ndarray, canonical_etype=INTERACTS) -> tuple[np.ndarray, np.ndarray]:
    """All (node, neighbour) pairs over `canonical_etype` for the given nodes."""
    dgl = _dgl()
    fanout = {c: -1 if c == canonical_etype else 0 for c in graph.canonical_etypes}
    frontier = dgl.distributed.sample_etype_neighbors(graph, {canonical_etype[0]: torch.from_numpy(nodes)},
                                                      fanout, edge_dir="out", etype_sorted=False)
    src, dst, _ = _frontier_edges(frontier, canonical_etype)
    return src.numpy(), dst.numpy()


# ---------------------------------------------------------------- neighbour sampling (samplers/neighbor.py)

def dist_edge_types(graph) -> list[str]:
    """The edge type names of a DistGraph."""
    return [c[1] for c in graph.canonical_etypes]


@_serialized
def dist_sample_in_edges(graph, nodes: dict[str, np.ndarray], fanouts: dict[str, int]) -> dict:
    """Up to fanouts[etype] in-edges (-1: all) of each of `nodes` ({node type: per-type ids}) per edge
    type, drawn by the servers: {etype: (src, dst, edge id)} as numpy per-type ids. Edge types missing
    from `fanouts` get 0 (sample_neighbors with an int fanout would draw across all types at once)."""
    dgl = _dgl()
    fanout = {c: int(fanouts.get(c[1], 0)) for c in graph.canonical_etypes}
    frontier = dgl.distributed.sample_etype_neighbors(
        graph, {t: torch.from_numpy(np.asarray(ids, np.int64)) for t, ids in nodes.items()}, fanout,
        edge_dir="in", etype_sorted=True)  # the writer numbers edges by type: in-edge rows are sorted
    return {c[1]: tuple(t.numpy().astype(np.int64) for t in _frontier_edges(frontier, c))
            for c in graph.canonical_etypes if c[1] in fanouts and c[2] in nodes}


def local_in_csr(graph) -> tuple[dict, dict] | None:
    """The in-edges of the nodes this machine's partition owns, read from the shared memory its graph
    server shares with the clients of its machine (no server round): ({edge type: (indptr over the
    partition's own dst nodes, src per-type ids, per-type edge ids)}, {node type: (first per-type id,
    count) of its own nodes}: a partition's own nodes of a type have contiguous ids). None when no
    server runs here."""
    dgl = _dgl()
    g = graph.local_partition
    if g is None:
        return None
    book = graph.get_partition_book()
    types, ids = book.map_to_per_ntype(g.ndata[dgl.NID])
    inner = g.ndata["inner_node"].bool()
    own = {}
    for k, node_type in enumerate(book.ntypes):
        mine = ids[inner & (types == k)]
        own[node_type] = (int(mine.min()) if len(mine) else 0, len(mine))
        assert not len(mine) or int(mine.max()) - own[node_type][0] + 1 == len(mine), "own ids not contiguous"
    indptr, src, eids = g.adj_tensors("csc")  # what the servers share: a COO would be this process's own
    dst = torch.repeat_interleave(torch.arange(len(indptr) - 1), indptr.diff())
    etypes, inner_edge = g.edata[dgl.ETYPE][eids], g.edata["inner_edge"][eids].bool()
    _, type_eids = book.map_to_per_etype(g.edata[dgl.EID][eids])
    csr = {}
    for k, (_, etype, dst_type) in enumerate(book.canonical_etypes):
        keep = inner_edge & (etypes == k) & inner[dst]  # an edge is its dst's (DGL's rule)
        first, count = own[dst_type]
        indptr_k, src_eid = group_by(ids[dst[keep]].numpy() - first,
                                     np.stack([ids[src[keep]].numpy(), type_eids[keep].numpy()], 1), count)
        csr[etype] = indptr_k, src_eid[:, 0], src_eid[:, 1]
    return csr, own


@_serialized
def dist_values(graph, kind: str, feat: str, ids: np.ndarray) -> np.ndarray:
    """Feature `feat` as the partitioner wrote it (see `job_features`) of nodes of a node type (`kind` user or
    item: feat) or edges of an edge type (interacts, ...: count, weight, timestamp), by per-type ids; this
    machine's partition's own read from its shared memory (DGL's fast pull), the others from the servers."""
    data = graph.nodes[kind].data if kind in ("user", "item") else graph.edges[EDGE_TYPES[kind]].data
    return data[f"{graph.graph_name}_{feat}"][torch.from_numpy(ids)].numpy()


@_serialized
def dist_node_in_degrees(graph, node_type: str, ids: np.ndarray) -> np.ndarray:
    """In-degree over all edge types of the given nodes (per-type ids), from the servers."""
    if not len(ids):
        return np.zeros(0, np.int64)
    homo = graph.get_partition_book().map_to_homo_nid(torch.from_numpy(np.asarray(ids, np.int64)), node_type)
    return graph.in_degrees(homo).numpy().astype(np.int64)


# ---------------------------------------------------------------- distributed tensors (trainer/)

def normal_init(shape, dtype, seed: int = 0):
    """The ID tables' initializer, N(0, 0.1^2), drawn from its own generator: a server's global one is
    not seeded. The servers unpickle it, so it lives at module level."""
    return torch.randn(shape, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 0.1


def dist_embedding(graph, node_type: str, dim: int, name: str, seed: int = 0):
    """A learnable [num_nodes(node_type), dim] table sharded in the graph servers' key-value store,
    rows next to their nodes (read rows with `table[ids]`; trainer/row_adam.py updates them). Each
    partition's rows are drawn from (seed, table, partition): the same tables for the same seed."""
    policy = graph.get_node_partition_policy(node_type)
    part_seed = int.from_bytes(hashlib.sha256(f"{seed}/{name}/{policy.part_id}".encode()).digest()[:8], "little") >> 1
    return dist_tensor(graph, node_type, dim, name, init=functools.partial(normal_init, seed=part_seed))


def dist_tensor(graph, node_type: str, dim: int | None, name: str, init=None):
    """A [num_nodes(node_type), dim] float tensor ([num_nodes] for dim None) in the servers' key-value
    store, zeros unless `init`; named after the job's graph (shared memory is named after it)."""
    from dgl.distributed import DistTensor
    shape = (graph.num_nodes(node_type),) + (() if dim is None else (dim,))
    return DistTensor(shape, torch.float32, name=f"{graph.graph_name}_{name}", init_func=init,
                      part_policy=graph.get_node_partition_policy(node_type))


def dist_partition_of(tensor, ids: torch.Tensor) -> torch.Tensor:
    """The partition (machine) holding each of the rows `ids` of a DistTensor."""
    return tensor.part_policy.to_partid(ids)


def dist_local_rows(tensors: list, ids: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """This machine's shards of DistTensors of one partition policy (the shared memory of its graph server
    and its clients: a write is seen by all, with no server round) and the positions in them of its rows `ids`."""
    return [t.local_partition for t in tensors], tensors[0].part_policy.to_local(ids)


def dist_node_split(graph, node_type: str, rank: int, world: int) -> np.ndarray:
    """This trainer's share of the nodes of a type (per-type ids, its own partition's nodes first);
    the shares of all trainers cover every node once (as dist_train_edges does for edges)."""
    dgl = _dgl()
    mask = torch.ones(graph.num_nodes(node_type), dtype=torch.bool)
    return dgl.distributed.node_split(mask, graph.get_partition_book(), ntype=node_type, rank=rank,
                                      force_even=True).numpy()
