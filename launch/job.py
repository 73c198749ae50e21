"""The job runtime: DistDGL graph servers, Ray Train workers and their supervision, for every job kind.

    driver:  run_workers(kind, cfg, partitions, plan, loop, job_args, tmp)
             -> GraphServers (one per partition) -> TorchTrainer.fit in a task, watched: a dead server
             or a silent worker fails the job with its name within launch.health_timeout_s, never a hang
    worker:  loop(config): context = config["context"] (a WorkerContext)
             with worker_session(context, ...) as w:   # rank, world, device, DistDGL client, ID tables
                 ... w.progress(desc, step, steps) ...

Every worker beats once a second from the moment its session opens, with where it is and its pid; the
driver shows rank 0's place as a progress bar (on a terminal). Once every worker has started, the job's
processes (trainers by rank, graph servers by partition: pid and node address) are in
`{tmp}/processes.json` until the job ends, so an operator (or a test) can act on exactly this job's
processes. The job fails, its error naming the job kind (train, infer, mine) and the process, when
    a worker has not beaten within `launch.start_timeout_s` of the start,
    a worker stops beating for `launch.health_timeout_s / 4` (dead or frozen),
    a worker inside a loop of steps has not moved for `launch.health_timeout_s` (its main thread is stuck:
        liveness is progress, which a heartbeat thread cannot fake),
    a graph server stops answering for `launch.health_timeout_s`;
a worker's UserError is raised as it is. How the workers failed is `classify`'s (a `Failure`). Restarts
are the caller's (trainer/train.py), and only where one can help (`JobFailed.restartable`): not after
an exception the workers' code raised, which would repeat; a restarted Ray Train worker could not
rejoin, since DistDGL servers admit exactly `num_clients` clients.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from tqdm import tqdm

from gnnrec import NODE_TYPES, OUTPUT_ERRORS, JobFailed, UserError, faults
from gnnrec.launch.cluster import JobPlan


@dataclass
class WorkerContext:
    """What every worker of a job receives: the config, the graph servers' client information, the
    partitions, the driver's heartbeat actor, the fail points to arm, the job's (temporary) output
    directory, and `job`: the job kind's own arguments (trainer/recipe.TrainArgs, inference/model_job.ModelArgs)."""
    cfg: object  # launch/config.Config
    client: object  # launch/graph_servers.ClientInfo
    partitions: str
    heartbeats: object
    fail_points: str | None
    out: str
    job: object = None


@dataclass(frozen=True)
class Failure:
    """How a job's workers failed, in one line: whether a restart from the last checkpoint may help,
    and whether the failure is the user's (a worker's UserError, raised as it is)."""
    message: str
    restartable: bool
    users: bool = False

    def error(self, kind: str) -> Exception:
        return UserError(self.message) if self.users else JobFailed(f"{kind} failed: {self.message}", self.restartable)


def worker_noun(kind: str) -> str:
    return "trainer" if kind == "train" else f"{kind} worker"


# ---------------------------------------------------------------- the driver

def run_workers(kind: str, cfg, partitions, plan: JobPlan, loop, job_args, tmp: Path, progress=None) -> None:
    """Graph servers for `partitions` (data/formats.Partitions) and `plan.trainers` Ray Train workers
    running `loop({"context": WorkerContext})` as DistDGL clients, writing into `tmp` (`job_args`: the
    context's `job`); raises JobFailed naming `kind` when a server or worker dies, and a worker's UserError
    as it is. Ray Train's own files go under `tmp` and are removed."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from gnnrec.launch.graph_servers import GraphServers

    tmp = Path(tmp).resolve()  # Ray Train wants an absolute storage path
    launch, fail_points = cfg.launch, faults.from_environment()
    with GraphServers(partitions.config, num_clients=plan.trainers, start_timeout_s=launch.health_timeout_s,
                      answer_timeout_s=launch.health_timeout_s) as servers:
        heartbeats = Heartbeats.remote()
        context = WorkerContext(cfg, servers.client_info, str(partitions.path.resolve()), heartbeats, fail_points,
                                str(tmp), job_args)
        trainer = TorchTrainer(
            loop,
            train_loop_config={"context": context},  # Ray Train hands its workers a dict
            scaling_config=ScalingConfig(num_workers=plan.trainers, use_gpu=plan.gpus > 0,
                                         resources_per_worker={"CPU": 1}, placement_strategy="SPREAD"),
            torch_config=TorchConfig(backend=plan.backend, timeout_s=int(launch.health_timeout_s)),
            run_config=RunConfig(storage_path=str(tmp / ".ray"), name="workers",
                                 failure_config=FailureConfig(max_failures=0)),
        )
        try:
            failure = _watch(kind, trainer, servers, heartbeats, launch, progress or Progress(), plan.trainers,
                             tmp / "processes.json")
        finally:
            (tmp / "processes.json").unlink(missing_ok=True)
        ray.kill(heartbeats)
        shutil.rmtree(tmp / ".ray", ignore_errors=True)
        if failure:
            raise failure.error(kind)


def _watch(kind: str, trainer, servers, heartbeats, launch, progress, world: int, processes: Path) -> Failure | None:
    """Run TorchTrainer.fit in a task while checking the graph servers and the workers' heartbeats
    (Ray Train notices a dead worker too, but not always: a worker gone silent is a failure here);
    write `processes` once every worker has started; on a failure, stop the job and free what it held
    (Ray Train's own cleaner needs the dashboard's state API)."""
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    stale_after_s, noun = launch.health_timeout_s / 4, worker_noun(kind)
    groups_before = set(ray.util.placement_group_table())
    fit = ray.remote(num_cpus=0)(_fit).remote(trainer, kind)
    try:
        started = time.time()
        while not ray.wait([fit], timeout=1.0)[0]:
            progress.show(ray.get(heartbeats.position.remote()))
            servers.check()
            silent, stuck, beating = ray.get(heartbeats.health.remote(stale_after_s, launch.health_timeout_s))
            if silent:
                raise JobFailed(f"{kind} failed: {noun} rank {silent[0]} stopped (no heartbeat for "
                                f"{stale_after_s:.0f} s){_out_of_memory(fit)}")
            if stuck:
                rank, at = stuck[0]
                raise JobFailed(f"{kind} failed: {noun} rank {rank} is stuck at {at['desc']}, step {at['step']} of "
                                f"{at['steps']} (alive, but no progress for {launch.health_timeout_s:.0f} s)")
            if beating == world and not processes.exists():
                trainers = ray.get(heartbeats.processes.remote())
                processes.write_text(json.dumps({"trainers": trainers, "graph_servers": servers.processes}))
            if beating < world and time.time() - started > launch.start_timeout_s:
                raise JobFailed(f"{kind} failed: {world - beating} of {world} {noun}s did not start within "
                                f"launch.start_timeout_s={launch.start_timeout_s:.0f} s")
        progress.show()
        failure = ray.get(fit)
        if failure and not failure.restartable and not failure.users:  # a symptom of a server lost meanwhile?
            ray.wait(servers.serving, num_returns=len(servers.serving), timeout=2.0)
            servers.check()
        return failure
    except BaseException:
        ray.kill(heartbeats)
        ray.cancel(fit, force=True)
        for group_id, info in ray.util.placement_group_table().items():
            if group_id not in groups_before and info["state"] != "REMOVED" and group_id != servers.group.id.hex():
                remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(group_id))))
        raise


def _out_of_memory(fit) -> str:
    """What to add to a silent worker's failure when Ray's memory monitor killed it: the monitor kills
    the job's newest tasks together, `fit` among them (or Ray Train says so in `fit`'s error)."""
    if not ray.wait([fit], timeout=2.0)[0]:
        return ""
    try:
        failure = ray.get(fit)
        memory = failure is not None and not failure.users and "memory" in failure.message.lower()
    except ray.exceptions.OutOfMemoryError:
        memory = True
    except Exception:  # noqa: BLE001 - any other end of `fit` says nothing of memory
        memory = False
    return ("; Ray's memory monitor killed the job's processes: the machine ran out of memory (see the plan "
            "line's memory per machine; more partitions or machines, or a smaller train.batch_size)") if memory else ""


def _fit(trainer, kind: str) -> Failure | None:
    """TorchTrainer.fit in a task, so the driver can watch the graph servers meanwhile."""
    # Ray Train's controller polls its workers every 2 s by default, passing on this process's setting:
    # at 0.5 s a 1-epoch job on this machine takes 24-32 s instead of 26-36 s
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    try:
        trainer.fit()
    except Exception as e:  # noqa: BLE001 - reported to the driver as the job's error
        return classify(e, kind)
    return None


def classify(error: Exception, kind: str) -> Failure:
    """What TorchTrainer.fit raised, as one line: the UserError a worker raised, or a write its disk refused
    (full, a quota: the user's); an exception of the workers' own code (not a lost peer's symptom), which a
    restart would raise again; the worker that died, when Ray Train says which; else Ray's error, shortened.
    Only the last two may restart."""
    failures = getattr(error, "worker_failures", None) or {}  # rank -> the exception raised, or Ray's error for a death
    causes = [getattr(f, "cause", f) for f in failures.values()]  # a RayTaskError's cause: the exception alone
    user_error = next((c for c in causes if isinstance(c, UserError)), None)
    if user_error is not None:
        return Failure(str(user_error), restartable=False, users=True)
    refused = next((c for c in causes if isinstance(c, OSError) and c.errno in OUTPUT_ERRORS), None)
    if refused is not None:
        return Failure(f"{refused.filename or kind}: {refused.strerror} (a worker's write; free space or choose "
                       "another output)", restartable=False, users=True)
    if failures and all(_repeats(f) for f in failures.values()):
        rank, raised = min(failures.items())
        return Failure(f"{worker_noun(kind)} rank {rank} raised {type(raised).__name__}: {_short(str(raised))} (not "
                       f"restarted: an exception of the code repeats)", restartable=False)
    text = " ".join(str(error).split())
    rank, pid, ip = (re.search(p, text) for p in (r"Rank (\d+)", r"pid=(\d+)", r"node_ip='([^']+)'"))
    if rank and "died" in text:
        where = f" (pid {pid.group(1)} on {ip.group(1)})" if pid and ip else ""
        return Failure(f"{worker_noun(kind)} rank {rank.group(1)}{where} died", restartable=True)
    return Failure(f"{type(error).__name__}: {_short(text)}", restartable=True)


# what a worker raises when a peer (another trainer, a graph server) is lost: a restart can help
_LOST_PEER = ("connection", "gloo", "nccl", "timed out", "timeout", "socket", "rpc")


def _repeats(error: BaseException) -> bool:
    """Whether a worker's failure is an exception of the code, not its process's death (Ray's errors)
    nor a lost peer's symptom."""
    from_ray, text = type(error).__module__.split(".")[0] == "ray", str(error).lower()
    return not from_ray and not isinstance(error, OSError) and not any(word in text for word in _LOST_PEER)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:200] + " ... " + text[-400:]


@ray.remote(num_cpus=0)
class Heartbeats:
    """Last sign of life of each worker, sent once a second by a thread of the worker process, with
    where the worker is (`WorkerSession.where`, set by its main thread) and its process ({"pid", "ip"})."""

    def __init__(self):
        self.last, self.where, self.moved, self.process = {}, {}, {}, {}

    def beat(self, rank: int, where: dict, process: dict) -> None:
        now = self.last[rank] = time.time()
        self.process[rank] = process
        if where != self.where.get(rank):
            self.where[rank], self.moved[rank] = where, now

    def processes(self) -> list[dict]:
        return [{"rank": rank, **self.process[rank]} for rank in sorted(self.process)]

    def position(self) -> dict | None:
        return self.where.get(0)

    def health(self, silent_s: float, stuck_s: float) -> tuple[list[int], list[tuple[int, dict]], int]:
        """The ranks silent for `silent_s`; the ranks inside a loop of steps (before its last) that have
        not moved for `stuck_s`, with where each is; how many ranks have ever beaten."""
        now = time.time()
        silent = [rank for rank, t in self.last.items() if now - t > silent_s]
        stuck = [(rank, at) for rank, at in self.where.items()
                 if at["step"] < at["steps"] and now - self.moved[rank] > stuck_s]
        return silent, stuck, len(self.last)


class Progress:
    """A bar of the steps of rank 0's current phase on a terminal; elsewhere (a log file, CI) a line
    every `every_s` seconds with the step and the steps per second since the last line. With `metrics`,
    also prints the epochs rank 0 appends to that metrics.jsonl as they come. `seen`: epochs already
    printed."""

    def __init__(self, metrics: Path | None = None, seen: int = 0, every_s: float = 30.0):
        self.metrics, self.seen, self.bar, self.bar_desc = metrics, seen, None, None
        self.every_s, self.line = every_s, None  # (time, desc, step) of the last line printed

    def show(self, where: dict | None = None) -> None:
        if self.metrics is not None and self.metrics.exists():
            lines = self.metrics.read_text().splitlines()
            self.seen = min(self.seen, len(lines))  # a restart rewrote it from its checkpoint
            for line in lines[self.seen:]:
                self._close_bar()
                m = json.loads(line)
                val = "".join(f", {k} {v:.4f}" for k, v in m.items() if k.startswith(("recall@", "ndcg@")))
                print(f"epoch {m['epoch'] + 1}: loss {m['loss']:.4f}{val}, {m['edges_per_s']:,.0f} edges/s per "
                      f"trainer, {m['seconds']:.1f} s", flush=True)
            self.seen = len(lines)
        if where and where.get("steps") and where.get("epoch", self.seen) >= self.seen:  # not an epoch printed
            if self.bar_desc != where["desc"]:
                self._close_bar()
                self.bar_desc = where["desc"]
                self.bar = tqdm(total=where["steps"], desc=where["desc"], unit="step", disable=None, leave=False)
            self.bar.n = where["step"]
            if "loss" in where:
                self.bar.set_postfix(loss=f"{where['loss']:.4f}")
            if self.bar.disable:
                self._print_line(where)
        elif where is None:  # the job has ended
            self._close_bar()

    def _print_line(self, where: dict) -> None:
        now, (desc, step) = time.time(), (where["desc"], where["step"])
        if self.line is None:
            self.line = (now, desc, step)
        elif now - self.line[0] >= self.every_s:
            t, last_desc, last_step = self.line
            rate = f", {(step - last_step) / (now - t):.2f} steps/s" if last_desc == desc else ""
            loss = f", loss {where['loss']:.4f}" if "loss" in where else ""
            print(f"{desc}: step {step} of {where['steps']}{loss}{rate}", flush=True)
            self.line = (now, desc, step)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.bar, self.bar_desc = None, None


# ---------------------------------------------------------------- the worker

@dataclass
class WorkerSession:
    """What a worker of any job kind has: its config, rank and world, device, the DistDGL client
    (`graph`), the partitions, the distributed ID tables ({node type: DistTensor [n, dim]}) and its share
    of this machine's cores (`cores`)."""
    cfg: object
    rank: int
    world: int
    device: torch.device
    partitions: object
    cores: int = 1
    graph: object = None
    tables: dict = field(default_factory=dict)
    where: dict = field(default_factory=lambda: {"desc": "starting", "step": 0, "steps": 0})

    def progress(self, desc: str, step: int, steps: int, **extra) -> None:
        """Where this worker is: shown by the driver's progress bar (rank 0's), and its liveness: a worker
        that has done `step` of `steps` < `steps` must move on within `launch.health_timeout_s`
        (`steps` 0: a phase of no steps, not timed)."""
        self.where.clear()
        self.where.update(desc=desc, step=step, steps=steps, **extra)


def _beat_forever(heartbeats, rank: int, where: dict) -> None:
    process = {"pid": os.getpid(), "ip": ray.util.get_node_ip_address()}
    while True:
        heartbeats.beat.remote(rank, dict(where), process)
        time.sleep(1.0)


@contextlib.contextmanager
def worker_session(context: WorkerContext, dim: int, torch_threads: int | None, seed: int):
    """Open a worker: start its heartbeat, set torch's threads (Ray sets OMP_NUM_THREADS=1; None: the
    cores this machine's workers share, one left to each sampler thread) and seed,
    connect the DistDGL client, create the ID tables of `dim` in the servers; always disconnect."""
    import ray.train
    from ray.train.torch import get_device

    from gnnrec import dgl_adapter
    from gnnrec.data.formats import Partitions
    from gnnrec.launch.graph_servers import connect_client

    ctx = ray.train.get_context()
    w = WorkerSession(context.cfg, ctx.get_world_rank(), ctx.get_world_size(), get_device(),
                      Partitions(context.partitions))
    faults.arm(context.fail_points)
    threading.Thread(target=_beat_forever, args=(context.heartbeats, w.rank, w.where), daemon=True).start()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    w.cores = max(1, cores // ctx.get_local_world_size())
    torch.set_num_threads(torch_threads or max(1, w.cores - 1))
    torch.manual_seed(seed)
    w.graph = connect_client(context.client)
    try:
        w.tables = {n: dgl_adapter.dist_embedding(w.graph, n, dim, f"{n}_id", seed) for n in NODE_TYPES}
        yield w
    finally:
        dgl_adapter.disconnect()
