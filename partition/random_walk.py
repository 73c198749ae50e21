"""The random-walk partitioner: locality from short random walks, for graphs too big for METIS.

Works on the CSR of partition.csr (which may be memory-mapped from disk) over the homogeneous node
space v = user, or U + item; the neighbours of a user are its items, followees and followers, those of
an item its users. Every step below is a vectorized pass over the CSR in chunks of rows.

1. Seeds. C = clamp(N / 32, 16·K, 2048) seed nodes are drawn without replacement with probability
   proportional to degree (hubs are good cluster centres). Seed c starts cluster c.
2. Walks with restart. From each seed, `walks_per_seed` walkers take `walk_length` steps, all walkers
   advancing together (one gather per step): each step moves to a uniform random neighbour, or with
   probability `restart_prob` jumps back to the seed (a personalized-PageRank sample around the seed).
   Walks may be split over Ray tasks (`partition.workers` > 0), each mapping the CSR from disk.
3. Clusters. A node joins the cluster whose walkers visited it most. Nodes no walk reached take the
   most common cluster among their labelled neighbours, repeated until no node changes; nodes with no
   labelled neighbour at all (isolated) are hashed to a cluster.
4. Packing (greedy graph growing on the cluster graph, whose edge weights count the edges between two
   clusters): part k starts from the heaviest unplaced cluster and takes the unplaced cluster with the
   most edges into it until it holds 1/K of the graph (the mean of its balance weights, each relative
   to its total: user count, item count, user and item in-degree, users' held-out edges; see
   partitioners); the last part takes the rest.
5. Refinement (balanced label propagation, `REFINE_ROUNDS` rounds). For each node, n_k = its neighbours
   in part k; it wants to move to argmax_k n_k when the gain n_best - n_own > 0. A random 70% of the
   willing nodes is considered each round (so neighbours do not swap back and forth). Moves s -> t are
   paired one for one, per node type and by descending gain, with moves t -> s; unpaired moves go
   through while the target stays under cap = (1 + ε)·mean and the source above (1 - ε)·mean for every
   weight (ε = EPS = 0.05). Then `rebalance` (a few steps per round, to the end after the last round)
   brings every weight of every part back within (1 ± ε)·mean
   by moving the cheapest nodes (fewest neighbours lost) from the fullest to the emptiest part, low-degree
   nodes for a count and high-for-low-degree swaps for a degree sum.

Memory: the CSR (mapped or loaded) plus O(N·K) counts and one chunk of rows; never the edge list twice.
"""
from __future__ import annotations

import numpy as np

from gnnrec.partition import csr
from gnnrec.arrays import splitmix64
from gnnrec.partition.balance import COUNT_COLUMN, DEGREE_COLUMN, node_weights, part_loads

EPS = 0.05
REFINE_ROUNDS = 24
CHUNK_EDGES = 1 << 20


def num_clusters(num_nodes: int, parts: int) -> int:
    return int(min(num_nodes, max(16 * parts, min(2048, num_nodes // 32))))


def degrees(g) -> np.ndarray:
    """Symmetric degree of every homogeneous node."""
    du = csr.user_degree(g) + np.diff(g.follow_out_ptr) + np.diff(g.follow_in_ptr)
    return np.r_[du, csr.item_degree(g)]


def neighbours(g, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All (index into `nodes`, neighbour) pairs of homogeneous nodes `nodes`."""
    nu = g.num_users
    idx = np.arange(len(nodes))
    is_user = nodes < nu
    users, items = nodes[is_user], nodes[~is_user] - nu
    rows, nbrs = [], []
    for ptr, values, sel, ids, offset in ((g.user_ptr, g.user_items, is_user, users, nu),
                                          (g.follow_out_ptr, g.follow_out, is_user, users, 0),
                                          (g.follow_in_ptr, g.follow_in, is_user, users, 0),
                                          (g.item_ptr, g.item_users, ~is_user, items, 0)):
        if len(values) == 0 or len(ids) == 0:
            continue
        pos = csr.gather_rows(ptr, ids)
        rows.append(np.repeat(idx[sel], np.asarray(ptr[ids + 1]) - np.asarray(ptr[ids])))
        nbrs.append(np.asarray(values[pos], np.int64) + offset)
    if not rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(rows), np.concatenate(nbrs)


def node_chunks(deg: np.ndarray, nodes: np.ndarray):
    """Split `nodes` into consecutive chunks of about CHUNK_EDGES incident edges."""
    if len(nodes) == 0:
        return
    cum = np.cumsum(deg[nodes])
    bounds = np.searchsorted(cum, np.arange(CHUNK_EDGES, cum[-1] + CHUNK_EDGES, CHUNK_EDGES), side="right")
    start = 0
    for stop in np.unique(np.r_[bounds, len(nodes)]):
        stop = max(int(stop), start + 1)
        if start < len(nodes):
            yield nodes[start:stop]
        start = stop


# ---------------------------------------------------------------- 2. walks

def walk(g, seeds: np.ndarray, first_cluster: int, cfg, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random walks with restart from `seeds`; every visited (node, cluster) pair (cluster ids start
    at first_cluster). All walkers advance together: one vectorized gather per step."""
    p = cfg.partition
    rng = np.random.default_rng(seed)
    nu = g.num_users
    home = np.repeat(seeds.astype(np.int64), p.walks_per_seed)
    cluster = np.repeat(np.arange(first_cluster, first_cluster + len(seeds)), p.walks_per_seed)
    deg_items = np.diff(g.user_ptr)
    deg_out, deg_in = np.diff(g.follow_out_ptr), np.diff(g.follow_in_ptr)
    deg_users = np.diff(g.item_ptr)
    at = home.copy()
    visited = []
    for _ in range(p.walk_length):
        is_user = at < nu
        u, i = at[is_user], at[~is_user] - nu
        nxt = at.copy()
        # a user steps to an item, a followee or a follower, uniformly over all of them
        du = deg_items[u] + deg_out[u] + deg_in[u]
        r = (rng.random(len(u)) * du).astype(np.int64)
        step = np.full(len(u), -1, np.int64)
        m = r < deg_items[u]
        step[m] = np.asarray(g.user_items[g.user_ptr[u[m]] + r[m]], np.int64) + nu
        m2 = ~m & (r < deg_items[u] + deg_out[u])
        step[m2] = g.follow_out[g.follow_out_ptr[u[m2]] + r[m2] - deg_items[u[m2]]]
        m3 = ~m & ~m2 & (du > 0)
        step[m3] = g.follow_in[g.follow_in_ptr[u[m3]] + r[m3] - deg_items[u[m3]] - deg_out[u[m3]]]
        nxt[is_user] = np.where(du > 0, step, u)
        di = deg_users[i]
        r = (rng.random(len(i)) * di).astype(np.int64)
        ok = di > 0
        item_step = i + nu
        item_step[ok] = g.item_users[g.item_ptr[i[ok]] + r[ok]]
        nxt[~is_user] = item_step
        restart = rng.random(len(at)) < p.restart_prob
        at = np.where(restart, home, nxt)
        visited.append(np.stack([at, cluster]))
    pairs = np.concatenate(visited, 1) if visited else np.zeros((2, 0), np.int64)
    return pairs[0], pairs[1]


def _walk_task(csr_dir, meta, seeds, first_cluster, cfg, seed):
    g = csr.load_csr(csr_dir, meta, mmap=True)
    return walk(g, seeds, first_cluster, cfg, seed)


def run_walks(g, seeds: np.ndarray, cfg, meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """Walks from every seed: in-process, or over `cfg.partition.workers` Ray tasks (on the Ray of
    `launch`: attached to, or an embedded one for the call)."""
    workers = cfg.partition.workers
    if workers == 0 or len(seeds) < 2:
        return walk(g, seeds, 0, cfg, cfg.partition.seed)
    import ray

    from gnnrec.launch.cluster import ray_session
    with ray_session(cfg.launch):
        task = ray.remote(_walk_task)
        bounds = np.linspace(0, len(seeds), min(workers, len(seeds)) + 1).astype(int)
        refs = [task.remote(str(g.directory), meta, seeds[a:b], int(a), cfg, cfg.partition.seed + 1000 * k)
                for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
        results = ray.get(refs)
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


# ---------------------------------------------------------------- 3. clusters

def majority_label(rows: np.ndarray, labels: np.ndarray, num_rows: int, num_labels: int) -> np.ndarray:
    """For each row, the most frequent label among its (row, label) pairs; -1 for rows with none."""
    out = np.full(num_rows, -1, np.int64)
    if len(rows) == 0:
        return out
    keys, counts = np.unique(rows * num_labels + labels, return_counts=True)
    r, lab = keys // num_labels, keys % num_labels
    order = np.lexsort((-counts, r))  # per row, the largest count first
    r, lab = r[order], lab[order]
    first = np.r_[True, r[1:] != r[:-1]]
    out[r[first]] = lab[first]
    return out


def fill_unreached(g, label: np.ndarray, num_labels: int, deg: np.ndarray, max_rounds: int = 50) -> np.ndarray:
    """Unlabelled nodes take the majority label of their labelled neighbours, until none changes."""
    for _ in range(max_rounds):
        todo = np.flatnonzero(label < 0)
        changed = 0
        new = label.copy()
        for nodes in node_chunks(deg, todo):
            rows, nbrs = neighbours(g, nodes)
            lab = label[nbrs]
            keep = lab >= 0
            best = majority_label(rows[keep], lab[keep], len(nodes), num_labels)
            new[nodes] = best
            changed += int((best >= 0).sum())
        label = new
        if changed == 0:
            break
    return label


# ---------------------------------------------------------------- 4. packing

def pack_clusters(g, label: np.ndarray, num_labels: int, weights: np.ndarray, parts: int,
                  deg: np.ndarray) -> np.ndarray:
    """Part of each node by greedy graph growing over the cluster graph: part k starts from the heaviest
    unplaced cluster and repeatedly takes the unplaced cluster with the most edges into it, until its
    size (the mean of its balance weights relative to their totals) reaches 1/K; the last part takes the rest."""
    total = weights.sum(0, dtype=np.float64)
    scale = np.where(total > 0, total, 1)
    size = (np.stack([np.bincount(label, weights[:, c], minlength=num_labels)
                      for c in range(weights.shape[1])], 1) / scale).mean(1)
    between = np.zeros((num_labels, num_labels))
    for nodes in node_chunks(deg, np.arange(len(label))):
        rows, nbrs = neighbours(g, nodes)
        a, b = label[nodes][rows], label[nbrs]
        between += np.bincount(a * num_labels + b, minlength=num_labels * num_labels).reshape(num_labels, -1)
    np.fill_diagonal(between, 0)
    cluster_part = np.full(num_labels, parts - 1, np.int32)
    placed = np.zeros(num_labels, bool)
    for k in range(parts - 1):
        affinity = np.zeros(num_labels)
        while size[placed].sum() < (k + 1) / parts and not placed.all():
            score = np.where(placed, -np.inf, affinity + 1e-12 * size)
            c = int(np.argmax(score))
            placed[c], cluster_part[c] = True, k
            affinity += between[:, c]
    return cluster_part[label]


# ---------------------------------------------------------------- 5. refinement

def neighbour_part_counts(g, part: np.ndarray, parts: int, deg: np.ndarray) -> np.ndarray:
    """int32 [N, K]: how many neighbours of each node lie in each part."""
    counts = np.zeros((len(part), parts), np.int32)
    start = 0
    for nodes in node_chunks(deg, np.arange(len(part))):
        rows, nbrs = neighbours(g, nodes)
        counts[start:start + len(nodes)] = np.bincount(rows * parts + part[nbrs],
                                                       minlength=len(nodes) * parts).reshape(len(nodes), parts)
        start += len(nodes)
    return counts


def _accept(order_key: np.ndarray, group: np.ndarray, w: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Accept moves in ascending order_key within each group while their cumulative weight (every
    column) fits room[group]. Weights are non-negative, so what is accepted is a prefix per group."""
    order = np.lexsort((order_key, group))
    g_sorted, w_sorted = group[order], w[order]
    cum = np.cumsum(w_sorted, 0)
    first = np.r_[True, g_sorted[1:] != g_sorted[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
    within = cum - (cum[start] - w_sorted[start])
    ok = np.zeros(len(order), bool)
    ok[order] = np.all(within <= room[g_sorted] + 1e-9, 1)
    return ok


def refine(g, part: np.ndarray, weights: np.ndarray, parts: int, deg: np.ndarray, rng,
           rounds: int = REFINE_ROUNDS) -> np.ndarray:
    """Balanced label propagation: move nodes to the part most of their neighbours are in. Moves
    s -> t are paired one for one (per node type) with moves t -> s, so balance is kept; unpaired
    moves go through while the target stays under cap and the source above floor."""
    if parts == 1:
        return part
    total = weights.sum(0, dtype=np.float64)
    cap, floor = (1 + EPS) * total / parts, (1 - EPS) * total / parts
    node_type = (weights[:, 1] > 0).astype(np.int64)
    part = part.astype(np.int32)
    for _ in range(rounds):
        counts = neighbour_part_counts(g, part, parts, deg)
        best = counts.argmax(1)
        rows = np.arange(len(part))
        gain = counts[rows, best] - counts[rows, part]
        del counts, rows
        movers = np.flatnonzero((gain > 0) & (rng.random(len(part), dtype=np.float32) < 0.7))
        if len(movers) == 0:
            break
        # pair s -> t with t -> s: rank of each mover within its (type, s, t) group by gain
        src, dst, typ = part[movers], best[movers], node_type[movers]
        group = (typ * parts + src) * parts + dst
        order = np.lexsort((-gain[movers], group))
        first = np.r_[True, group[order][1:] != group[order][:-1]]
        start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
        rank = np.empty(len(order), np.int64)
        rank[order] = np.arange(len(order)) - start
        size = np.bincount(group, minlength=2 * parts * parts)
        reverse = (typ * parts + dst) * parts + src
        paired = rank < size[reverse]
        moved = movers[paired]
        part[moved] = best[moved]
        rest = movers[~paired]
        load = part_loads(part, weights, parts)
        w = weights[rest].astype(np.float64)
        into = _accept(-gain[rest], best[rest], w, np.maximum(cap - load, 0))
        rest, w = rest[into], w[into]
        out = _accept(-gain[rest], part[rest], w, np.maximum(load - floor, 0))
        part[rest[out]] = best[rest[out]]
        part = rebalance(g, part, weights, parts, deg, max_steps=weights.shape[1])
    return rebalance(g, part, weights, parts, deg, patience=None)


def rebalance(g, part: np.ndarray, weights: np.ndarray, parts: int, deg: np.ndarray, eps: float = EPS,
              max_steps: int | None = None, patience: int | None = 10) -> np.ndarray:
    """Restore balance: until every weight is within eps of its mean (or max_steps, or the worst
    deviation has not improved for `patience` steps), take the (part, weight) furthest from its mean
    and the part at the other extreme of that weight, and move nodes of the weight's node type from the
    fuller part s to the emptier part t, cheapest first:
    - a count off: move low-degree nodes that lose few neighbours s -> t (degree sums barely move);
    - a sum off (degree, held-out edges): swap the nodes s -> t that lose fewest neighbours per unit of
      weight for as many light, cheap nodes t -> s (counts stay).
    """
    total = weights.sum(0, dtype=np.float64)
    mean = np.where(total > 0, total / parts, 1)
    counts, best, since_best = None, np.inf, 0
    for step in range(max_steps or 16 * parts * weights.shape[1]):
        load = part_loads(part, weights, parts)
        over, under = load / mean - 1, 1 - load / mean
        over[:, total == 0] = under[:, total == 0] = 0
        worst = max(over.max(), under.max())
        if worst <= eps + 1e-9:
            break
        # fixing one (part, weight) can unsettle another: stop when the worst stops improving
        best, since_best = (worst, 0) if worst < best - 1e-3 else (best, since_best + 1)
        if patience is not None and since_best > patience:
            break
        if step % 4 == 0:
            counts = neighbour_part_counts(g, part, parts, deg)
        if over.max() >= under.max():
            s, c = np.unravel_index(np.argmax(over), over.shape)
            t = int(np.argmin(load[:, c]))
        else:
            t, c = np.unravel_index(np.argmax(under), under.shape)
            s = int(np.argmax(load[:, c]))
        excess = min(load[s, c] - mean[c], mean[c] - load[t, c]) if load[t, c] < mean[c] else load[s, c] - mean[c]
        count_col = COUNT_COLUMN[c]
        col = DEGREE_COLUMN[count_col] if c == count_col else c
        typ = weights[:, count_col] > 0
        d = weights[:, col] / max(mean[col] / max(mean[count_col], 1), 1e-9)  # weight / mean weight of the type
        a = np.flatnonzero((part == s) & typ)
        cost_a = counts[a, s] - counts[a, t]
        if c == count_col:
            a = a[np.argsort(cost_a + d[a], kind="stable")]
            take = a[:max(1, int(excess))]
            part[take] = t
        else:
            b = np.flatnonzero((part == t) & typ)
            a = a[np.argsort(cost_a / (weights[a, col] + 1), kind="stable")]  # fewest neighbours lost per unit moved
            b = b[np.argsort(counts[b, t] - counts[b, s] + d[b], kind="stable")]
            n = min(len(a), len(b))
            net = weights[a[:n], col] - weights[b[:n], col]
            ok = (net > 0) & (np.cumsum(np.maximum(net, 0)) <= excess)
            if not ok.any():
                ok[:1] = n > 0
            part[a[:n][ok]], part[b[:n][ok]] = t, s
    return part


# ---------------------------------------------------------------- the partitioner

def random_walk_partition(g, parts: int, cfg) -> tuple[np.ndarray, np.ndarray]:
    nu, ni = g.num_users, g.num_items
    n = nu + ni
    if parts == 1:
        return np.zeros(nu, np.int32), np.zeros(ni, np.int32)
    rng = np.random.default_rng(cfg.partition.seed)
    deg = degrees(g)
    weights = node_weights(g)
    num_labels = num_clusters(n, parts)
    candidates = np.flatnonzero(deg > 0)
    num_labels = max(1, min(num_labels, len(candidates)))
    if len(candidates):
        p = deg[candidates] / deg[candidates].sum()
        seeds = rng.choice(candidates, num_labels, replace=False, p=p)
    else:
        seeds = np.arange(num_labels)
    meta = {"num_users": nu, "num_items": ni}
    nodes, clusters = run_walks(g, seeds, cfg, meta)
    label = majority_label(nodes, clusters, n, num_labels)
    label[seeds] = np.arange(num_labels)
    del nodes, clusters
    label = fill_unreached(g, label, num_labels, deg)
    isolated = label < 0
    label[isolated] = (splitmix64(np.flatnonzero(isolated), cfg.partition.seed) % np.uint64(num_labels)).astype(np.int64)
    part = pack_clusters(g, label, num_labels, weights, parts, deg)
    del label
    part = refine(g, part, weights, parts, deg, rng).astype(np.int32)
    return part[:nu], part[nu:]
