"""Two simulated hosts on one machine, for multi-host tests of the distributed runtime.

    with TwoHosts() as hosts:                   # root + network namespace, a Ray node on each
        cfg = ...launch.address=hosts.address...

Host 0 is the root network namespace with 10.77.0.1 on a veth; host 1 is the network namespace
`gnnrec-h1` with 10.77.0.2 on the peer veth (and its own loopback). Each host runs one Ray node
(`ray start`, the head on host 0) inside its own mount namespace with a private tmpfs on /dev/shm:
DistDGL's servers publish their partition in shared memory under the graph name and the clients on
the same host attach to it, so each host needs its own /dev/shm (as real hosts have), and host 0's
must not meet other Ray/DistDGL runs on this machine either. Each node gets GLOO_SOCKET_IFNAME=its
veth (its workers inherit it): gloo otherwise takes its address from the hostname, which resolves
to 127.0.0.1 here (checked: without it a cross-host gloo all_reduce fails in connectFullMesh). The
nodes use their own Ray temp dirs and explicit free ports, RAY_AUTH_MODE=disabled (`ray start` turns
token auth on when ~/.ray/auth_token exists, and a plain `ray.init(address=...)` is then refused) and
RAY_ADDRESS=the head (Ray's helpers inside workers call `ray.init()` and would otherwise find every
Ray instance running on the machine).

Only loopback and 10.77.0.1/10.77.0.2 are ever used. Teardown kills every process left in either
host's mount namespace (host 1's network namespace too), deletes the namespace and the veth and
removes the temp dirs — it never runs `ray stop` (that would stop other people's Ray on this machine).
The names and addresses are fixed, so simulations take turns (a file lock); one that starts after a
killed run first removes what that run left (its namespace, veth and processes).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NETNS = "gnnrec-h1"
VETH = ("gnr-h0", "gnr-h1")
IPS = ("10.77.0.1", "10.77.0.2")
RAY = str(Path(sys.executable).with_name("ray"))
PREFIX = "gnnrec-hosts-"
LOCK = Path(tempfile.gettempdir()) / "gnnrec-two-hosts.lock"  # one simulation at a time: fixed names/addresses


def unavailable() -> str | None:
    """Why two hosts cannot be simulated here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, mount namespaces)"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` not found"
    probe = "gnnrec-probe"
    try:
        _sh(f"ip netns add {probe}")
        _sh(f"ip netns exec {probe} unshare -m sh -c 'mount -t tmpfs tmpfs /dev/shm'")
    except subprocess.CalledProcessError as e:
        return f"network/mount namespaces unavailable: {e.stderr.strip() or e}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if not Path(RAY).exists():
        return f"{RAY} not found"
    return None


def _sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True, timeout=60)


def _free_port(ip: str, netns: str | None = None) -> int:
    if netns is None:
        with socket.socket() as s:
            s.bind((ip, 0))
            return s.getsockname()[1]
    code = f"import socket; s=socket.socket(); s.bind(('{ip}', 0)); print(s.getsockname()[1])"
    return int(_sh(f"ip netns exec {netns} {sys.executable} -c \"{code}\"").stdout)


def _mount_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _zombie(pid: int) -> bool:
    """Exited, waiting for its parent to reap it: nothing is left to stop."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


class TwoHosts:
    def __init__(self, cpus_per_host: int = 3, start_timeout_s: float = 90):
        self.cpus, self.start_timeout_s = cpus_per_host, start_timeout_s
        self.procs: list[subprocess.Popen] = []  # `ray start` of host 0, host 1
        self.mount_namespaces: list[str] = []  # of every `ray start`, restarts included
        self.restarted = [False, False]
        self.tmp = Path(tempfile.gettempdir()) / f"{PREFIX}unused"
        self.port, self._lock = None, None

    @property
    def address(self) -> str:
        return f"{IPS[0]}:{self.port}"

    def __enter__(self) -> "TwoHosts":
        self._lock = open(LOCK, "w")
        deadline = time.time() + 600
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.time() > deadline:
                    self._lock.close()
                    raise TimeoutError(f"another two-host simulation holds {LOCK} for over 10 min")
                time.sleep(1)
        try:
            self.tmp = Path(tempfile.mkdtemp(prefix=PREFIX))
            self._remove_leftovers()
            self._network()
            self._ray()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------ setup

    def _remove_leftovers(self) -> None:
        """What an earlier simulation killed before its teardown left (we hold the lock: none is live)."""
        out = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True, text=True)
        stale = {int(p) for p in out.stdout.split()}
        marker = f"{tempfile.gettempdir()}/{PREFIX}"
        for entry in Path("/proc").iterdir():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace") if entry.name.isdigit() else ""
            except OSError:
                continue
            if marker in cmdline and str(self.tmp) not in cmdline:
                stale.add(int(entry.name))
        stale.discard(os.getpid())
        for pid in stale:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._remove_network()
        for old in Path(tempfile.gettempdir()).glob(f"{PREFIX}*"):
            if old != self.tmp:
                shutil.rmtree(old, ignore_errors=True)

    def _network(self) -> None:
        _sh(f"ip netns add {NETNS}")
        _sh(f"ip link add {VETH[0]} type veth peer name {VETH[1]}")
        _sh(f"ip link set {VETH[1]} netns {NETNS}")
        _sh(f"ip addr add {IPS[0]}/24 dev {VETH[0]} && ip link set {VETH[0]} up")
        _sh(f"ip netns exec {NETNS} sh -c 'ip addr add {IPS[1]}/24 dev {VETH[1]} && ip link set {VETH[1]} up "
            f"&& ip link set lo up'")

    def _ray_args(self, host: int) -> str:
        ip, netns = IPS[host], (None, NETNS)[host]
        ports = {p: _free_port(ip, netns) for p in ("node-manager-port", "object-manager-port",
                                                     "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                     "metrics-export-port", "runtime-env-agent-port")}
        args = [f"--node-ip-address={ip}", f"--num-cpus={self.cpus}", "--num-gpus=0", "--disable-usage-stats",
                f"--temp-dir={self.tmp / f'h{host}'}", "--min-worker-port=0", "--max-worker-port=0",
                *(f"--{k}={v}" for k, v in ports.items()), "--block"]
        if host == 0:
            args = ["--head", f"--port={self.port}", "--include-dashboard=false", *args]
        else:
            args = [f"--address={self.address}", *args]
        return " ".join(args)

    def _start_node(self, host: int) -> None:
        env = dict(os.environ, GLOO_SOCKET_IFNAME=VETH[host], RAY_USAGE_STATS_ENABLED="0",
                   RAY_AUTH_MODE="disabled")  # `ray start` turns token auth on when ~/.ray/auth_token exists
        # Ray's own helpers in workers call ray.init() without an address; on a machine shared with other
        # Ray instances (other tests, other users) they would find several: name this cluster
        env["RAY_ADDRESS"] = self.address
        inner = f"mount -t tmpfs -o size=4g tmpfs /dev/shm && exec {RAY} start {self._ray_args(host)}"
        cmd = ["unshare", "-m", "--propagation", "private", "sh", "-c", inner]
        if host == 1:
            cmd = ["ip", "netns", "exec", NETNS, *cmd]
        log = open(self.tmp / f"ray-start-h{host}.log", "w")
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[host:host + 1] = [proc]
        deadline = time.time() + 10
        while time.time() < deadline and proc.poll() is None:  # wait for `exec ray` in the new namespace
            ns = _mount_ns(proc.pid)
            if ns and ns != _mount_ns(os.getpid()):
                self.mount_namespaces.append(ns)
                return
            time.sleep(0.05)
        raise RuntimeError(f"host {host}: ray start did not enter its mount namespace: {self.log(host)}")

    def _ray(self) -> None:
        self.port = _free_port(IPS[0])
        self._start_node(0)
        self._wait(lambda: _connectable(IPS[0], self.port), "the Ray head (GCS)")
        self._start_node(1)

    def _wait(self, ready, what: str) -> None:
        deadline = time.time() + self.start_timeout_s
        while time.time() < deadline:
            if ready():
                return
            for host, proc in enumerate(self.procs):
                if proc.poll() is not None and not self._restart_after_a_slow_start(host):
                    raise RuntimeError(f"host {host}: ray start exited ({proc.returncode}): {self.log(host)}")
            time.sleep(0.5)
        raise TimeoutError(f"{what} not up within {self.start_timeout_s:.0f} s")

    def _restart_after_a_slow_start(self, host: int) -> bool:
        """Ray gives a new node's raylet a fixed 30 s to register (ray/_private/node.py); on a loaded
        machine that can pass (seen with both cores busy). Once per host: what that `ray start` left in
        its mount namespace is killed, and the host starts again."""
        if self.restarted[host] or "timed out during startup" not in self.log(host):
            return False
        self.restarted[host] = True
        failed = self.mount_namespaces[host]  # its first start's (one restart per host)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _mount_ns(int(entry.name)) == failed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(entry.name), signal.SIGKILL)
        self._start_node(host)
        return True

    def wait_for_nodes(self, ray_module) -> list[dict]:
        """After ray.init(address=self.address): wait until both nodes are alive; return them."""
        def alive():
            return [n for n in ray_module.nodes() if n["Alive"]]
        self._wait(lambda: len(alive()) >= 2, "two alive Ray nodes")
        return alive()

    def log(self, host: int) -> str:
        try:
            return (self.tmp / f"ray-start-h{host}.log").read_text()[-3000:]
        except OSError:
            return ""

    # ------------------------------------------------------------ teardown

    def host_pids(self) -> set[int]:
        """Every process of the simulated hosts: in their mount namespaces or host 1's network namespace."""
        pids = set()
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and _mount_ns(int(entry.name)) in self.mount_namespaces:
                pids.add(int(entry.name))
        out = subprocess.run(["ip", "netns", "pids", NETNS], capture_output=True, text=True)
        pids.update(int(p) for p in out.stdout.split())
        pids.update(p.pid for p in self.procs if p.poll() is None)
        pids.discard(os.getpid())
        return {pid for pid in pids if not _zombie(pid)}

    def close(self) -> None:
        # Ray's gcs_server and two of its Python helpers outlive SIGTERM here (seen): a short grace, then SIGKILL
        for sig, wait_s in ((signal.SIGTERM, 2), (signal.SIGKILL, 10)):
            pids = self.host_pids()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait_s
            while time.time() < deadline and self.host_pids():
                time.sleep(0.2)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self._remove_network()
        shutil.rmtree(self.tmp, ignore_errors=True)
        if getattr(self, "_lock", None) is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    @staticmethod
    def _remove_network() -> None:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        subprocess.run(["ip", "link", "del", VETH[0]], capture_output=True)


def _connectable(ip: str, port: int) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=1):
            return True
    except OSError:
        return False
