"""The README's multi-node recipe as a Ray job, on this machine: `ray start --head`, `ray job submit`.

    python bench/ray_job.py [--workdir /tmp/gnnrec-ray-job]

Starts a Ray head of its own on loopback (`ray start --head --block`: its own ports and temp dir, the
dashboard's job server on 127.0.0.1), prepares a small dataset with `gnnrec run` (synth, ingest,
partition), then submits `gnnrec train workdir=... launch.address=auto` with
`ray job submit --address http://127.0.0.1:<port> -- ...` and a second job with a mistyped key. Checks
that each job's exit code and logs are its command's: the good job exits 0 with the train summary in
its logs; the bad one fails (`ray job submit` exits 1, its status saying the entrypoint's exit code,
the CLI's 2 for bad input) with the one-line error naming the key. Prints JSON (seconds, exit codes;
also bench/results/ray_job.json); the head is stopped at the end (SIGTERM to `ray start --block`
stops what it started).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def submit(dashboard: str, env: dict, *gnnrec_args: str) -> tuple[int, str, float]:
    started = time.perf_counter()
    done = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", dashboard, "--",
                           str(BIN / "gnnrec"), *gnnrec_args], capture_output=True, text=True, timeout=900, env=env)
    return done.returncode, done.stdout + done.stderr, round(time.perf_counter() - started, 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", default="/tmp/gnnrec-ray-job")
    args = p.parse_args()
    work = Path(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run([str(BIN / "gnnrec"), "run", f"workdir={work}", "run.stages=[synth, ingest, partition]"],
                   check=True, capture_output=True, timeout=600)

    temp = tempfile.mkdtemp(prefix="rj-", dir="/tmp")  # short: Ray's socket paths have a length limit
    port, dashboard_port = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    env.pop("RAY_ADDRESS", None)
    if (Path.home() / ".ray" / "auth_token").exists():  # `ray start` then turns token auth on: so must its clients
        env.setdefault("RAY_AUTH_MODE", "token")
    head = subprocess.Popen([str(BIN / "ray"), "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}", "--num-cpus=2",
                             f"--temp-dir={temp}", "--block"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    dashboard = f"http://127.0.0.1:{dashboard_port}"
    try:
        started = time.perf_counter()
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", dashboard], capture_output=True,
                             timeout=60, env=env).returncode:
            if head.poll() is not None or time.perf_counter() - started > 120:
                raise SystemExit(f"the Ray head did not start (its logs: {temp}/session_latest/logs)")
            time.sleep(2)
        head_s = round(time.perf_counter() - started, 1)
        good = submit(dashboard, env, "train", f"workdir={work}", "launch.address=auto", "train.epochs=1")
        bad = submit(dashboard, env, "train", f"workdir={work}", "launch.address=auto", "train.epoch=1")
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        head.wait(timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
    result = {"head_start_s": head_s, "good_job": {"exit": good[0], "seconds": good[2]},
              "bad_job": {"exit": bad[0], "seconds": bad[2]}}
    print(json.dumps(result, indent=2))
    (Path(__file__).resolve().parent / "results" / "ray_job.json").write_text(json.dumps(result, indent=2) + "\n")
    checks = {"the good job exits 0": good[0] == 0,
              "its logs hold the train summary": "train summary" in good[1] and "model_epoch" in good[1],
              "the bad job exits non-zero": bad[0] != 0,
              "its logs name the key": "train.epoch': unknown key" in bad[1] and "Traceback" not in bad[1],
              "its status has the CLI's exit code": "failed with exit code 2" in bad[1]}
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"failed: {', '.join(failed)}\n--- good job ---\n{good[1][-3000:]}\n--- bad job ---\n"
                         f"{bad[1][-3000:]}")


if __name__ == "__main__":
    main()
