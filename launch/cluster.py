"""The Ray cluster: attach to one or start an embedded one, and plan a job on it before it starts.

The plan answers what DistDGL users ask for before a long job: which machines, how many partitions,
trainers and GPUs, and the memory each machine will need (estimated from the partition stats and the batch),
and refuses a job that cannot fit.
"""
from __future__ import annotations

import dataclasses
import os
import signal
import socket
import threading
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import psutil
import ray

from gnnrec import JobFailed, UserError
from gnnrec.launch.sizing import machine_bytes


def start_ray(launch) -> bool:
    """Attach to `launch.address` (or $RAY_ADDRESS), or start an embedded local Ray (dashboard off);
    False when this process was already connected (the caller then leaves Ray as it found it)."""
    if ray.is_initialized():
        return False
    address = launch.address or os.environ.get("RAY_ADDRESS")
    key = f"launch.address={address}" if launch.address else f"RAY_ADDRESS={address}"
    try:
        if address:
            _answers(address, key)
            ray.init(address=address, log_to_driver=True)
        else:
            start_embedded(launch.num_cpus)
    except ConnectionError as e:
        raise UserError(f"{key}: cannot connect to Ray ({e})") from None
    return True


def start_embedded(num_cpus) -> None:
    """A local Ray (workers' logs stay in its session directory; errors still reach the driver). If it
    fails to start (on a loaded machine: "The current node timed out during startup"), the processes
    it had started are stopped and the failure is one line. Its workers' gloo listens on the loopback
    interface (GLOO_SOCKET_IFNAME, unless set: Ray's processes inherit the driver's environment):
    by default gloo binds the address the host name resolves to, often a public one."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    pinned = "GLOO_SOCKET_IFNAME" not in os.environ
    if pinned:
        os.environ["GLOO_SOCKET_IFNAME"] = loopback_interface()
    try:
        # no dashboard, and no metrics: the dashboard agent's Prometheus port would answer on every interface
        # without Ray's token
        ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False, log_to_driver=False,
                 _system_config={"enable_metrics_collection": False})
    except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for its start-up failures
        ray.shutdown()
        for p in psutil.Process().children(recursive=True):
            if p.pid not in before:
                with suppress(psutil.Error):
                    p.kill()
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise JobFailed(f"the embedded Ray did not start ({first}); on a loaded machine retry, or give it "
                        "fewer CPUs (launch.num_cpus)") from None
    finally:
        if pinned:
            del os.environ["GLOO_SOCKET_IFNAME"]


def loopback_interface() -> str:
    """The name of the network interface that holds 127.0.0.1 ("lo" on Linux, "lo0" on macOS)."""
    return next(name for name, addresses in psutil.net_if_addrs().items()
                if any(a.address == "127.0.0.1" for a in addresses))


def _answers(address: str, key: str, timeout_s: float = 10) -> None:
    """A head (host:port) that takes no connection is one line within `timeout_s`, not Ray's minutes of
    retries ("auto" and ray:// addresses are Ray's to resolve)."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address:
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as e:
        raise UserError(f"{key}: no Ray head answers there ({e}); start one with `ray start --head`, "
                        "or leave launch.address empty for an embedded Ray") from None


@contextmanager
def ray_session(launch):
    """Ray for the duration of the block: attached to or started, and an embedded one stopped after;
    nothing to do when this process is already connected (an enclosing session's Ray is used).
    SIGTERM stops the block as SIGINT does (Ray's own handler would abort the process and leave the
    job's files behind)."""
    started = start_ray(launch)
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if main else None
    try:
        yield
    finally:
        if main:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)  # None: set outside Python
        if started:
            ray.shutdown()


def _interrupt(signum, frame):
    raise KeyboardInterrupt(signal.Signals(signum).name)


@dataclass(frozen=True)
class JobPlan:
    """Where a job runs and what it needs: printed before it starts, followed by the job runtime."""
    machines: int
    partitions: int
    trainers: int
    trainers_per_machine: int
    gpus: int
    backend: str  # of the process group: nccl with GPUs, gloo without
    est_memory_per_machine_gb: float
    ray_memory_per_machine_gb: float

    def summary(self) -> dict:
        """What a stage's summary shows of it."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "backend"}

    def line(self) -> str:
        return "plan: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


def plan(partitions, trainers_per_partition: int, dim: int, use_gpu, batch_rows: int = 0,
         full_graph: bool = False) -> JobPlan:
    """Machines, trainers, GPUs and estimated memory per machine of a job on `partitions`
    (data/formats.Partitions); UserError when it cannot fit.
    batch_rows: embedding rows one training batch scores (batch_size x (2 + num_negatives)); full_graph:
    train.sampler=full_graph (sizing.machine_bytes)."""
    parts, stats = partitions.meta["num_parts"], partitions.stats
    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) != parts:  # a trainer on a node without a server finds no partition in shared memory
        raise UserError(f"{parts} partitions need exactly {parts} Ray nodes (one graph server and its trainers "
                        f"per node); the cluster has {len(nodes)}: partition again with partition.parts={len(nodes)}")
    cpus = min(n["Resources"].get("CPU", 0) for n in nodes)
    if cpus < 1 + trainers_per_partition:  # Ray would wait for them, not refuse
        raise UserError(f"the job needs {1 + trainers_per_partition} CPUs per Ray node (a graph server and "
                        f"{trainers_per_partition} trainer(s)), a node has {cpus:g}: raise launch.num_cpus (or the "
                        "nodes' --num-cpus), or lower train.trainers_per_partition")
    gpus = int(sum(n["Resources"].get("GPU", 0) for n in nodes))
    use_gpu = gpus > 0 if use_gpu is None else use_gpu
    if use_gpu and gpus < parts * trainers_per_partition:
        raise UserError(f"train.use_gpu: {parts * trainers_per_partition} trainers need as many GPUs; "
                        f"the cluster has {gpus}")
    need = max(machine_bytes(p["edges"], p["nodes"], dim, batch_rows, trainers_per_partition, full_graph)
               for p in stats["per_part"])
    # Ray's memory resource is a scheduling quota (~70% of the machine); its object store's share lies
    # unused by these jobs, and Ray's monitor kills only at 95% of the machine
    have = min(n["Resources"].get("memory", 0) + n["Resources"].get("object_store_memory", 0) for n in nodes)
    job = JobPlan(machines=len(nodes), partitions=parts, trainers=parts * trainers_per_partition,
                  trainers_per_machine=trainers_per_partition, gpus=gpus if use_gpu else 0,
                  backend="nccl" if use_gpu else "gloo", est_memory_per_machine_gb=round(need / 2**30, 2),
                  ray_memory_per_machine_gb=round(have / 2**30, 2))
    if have and need > have:
        raise UserError(f"the job needs ~{need / 2**30:.1f} GB per machine but Ray offers {have / 2**30:.1f} GB: "
                        "use more partitions, fewer trainers per partition, a smaller train.batch_size, "
                        "train.num_negatives or train.dim")
    return job
