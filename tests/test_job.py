"""The job runtime's decisions without a cluster: how a failure is classified, the steps trainers agree
on, early stopping."""
import datetime
import os
import tempfile

import pytest
import ray
import torch
import torch.multiprocessing as mp
from ray.train.v2.api.exceptions import ControllerError, WorkerGroupError

from gnnrec import UserError
from gnnrec.launch.job import Failure, classify
from gnnrec.trainer.checkpoint import TrainState
from gnnrec.trainer.recipe import _agreed_steps, _early_stopping

DIED = ("Training failed due to worker errors: Rank 1 worker raised an error: The actor died unexpectedly "
        "before finishing this task. class_name: RayTrainWorker actor_id: 5f0e pid=4242 name: "
        "node_ip='10.0.0.2' The actor is dead because its worker process has died.")


def _task_error(cause: Exception) -> Exception:
    """A worker's exception as Ray hands it to the driver: a RayTaskError that is also its cause's type."""
    return ray.exceptions.RayTaskError("train_fn", "Traceback (most recent call last): ...", cause).as_instanceof_cause()


CASES = [  # what TorchTrainer.fit raised -> the job's failure
    (WorkerGroupError("bad", {0: UserError("x.parquet: column y is null")}),
     Failure("x.parquet: column y is null", restartable=False, users=True)),
    (WorkerGroupError("bad", {1: _task_error(UserError("train.hard_negatives=m: unreadable"))}),
     Failure("train.hard_negatives=m: unreadable", restartable=False, users=True)),
    (WorkerGroupError("boom", {1: ValueError("boom"), 0: KeyError("k")}),
     Failure("trainer rank 0 raised KeyError: 'k' (not restarted: an exception of the code repeats)", False)),
    (WorkerGroupError("peer", {0: RuntimeError("[Gloo] Connection closed by peer [10.0.0.3]:4242")}),
     Failure("WorkerGroupError: Training failed due to worker errors: peer", True)),
    (WorkerGroupError("disk", {0: OSError(5, "Input/output error")}),
     Failure("WorkerGroupError: Training failed due to worker errors: disk", True)),
    (WorkerGroupError("full", {1: _task_error(OSError(28, "No space left on device", "/w/train/metrics.jsonl"))}),
     Failure("/w/train/metrics.jsonl: No space left on device (a worker's write; free space or choose another "
             "output)", restartable=False, users=True)),
    (WorkerGroupError(DIED.removeprefix("Training failed due to worker errors: "), {1: ray.exceptions.ActorDiedError()}),
     Failure("trainer rank 1 (pid 4242 on 10.0.0.2) died", True)),
    (ControllerError(RuntimeError("the controller lost its placement group")),
     Failure("ControllerError: Training failed due to controller error: the controller lost its placement group", True)),
]


@pytest.mark.parametrize("raised, failure", CASES, ids=[f.message[:30] for _, f in CASES])
def test_classify(raised, failure):
    assert classify(raised, "train") == failure


def test_a_failure_is_the_users_error_or_a_failed_job():
    assert type(Failure("bad input", False, users=True).error("train")) is UserError
    failed = Failure("trainer rank 0 died", True).error("infer")
    assert str(failed) == "infer failed: trainer rank 0 died" and failed.restartable


SHARES = [([95, 31], 10), ([95, 7], 7), ([0, 50], 1)]  # each trainer's training edges -> the agreed steps


def _steps_of_rank(rank: int, store: str, out) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                                         timeout=datetime.timedelta(seconds=60))  # a lost peer fails, never hangs
    out[rank] = [_agreed_steps(shares[rank], batch_size=10) for shares, _ in SHARES]
    torch.distributed.destroy_process_group()


def test_trainers_agree_on_the_steps_of_an_epoch():
    """Enough batches for the largest share, never more than the smallest share has edges (at least 1)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = mp.Manager().dict()
        mp.spawn(_steps_of_rank, args=(os.path.join(tmp, "store"), out), nprocs=2, join=True)
        assert out[0] == out[1] == [steps for _, steps in SHARES]


def test_early_stopping_keeps_the_best_checkpoint_and_stops_after_patience():
    train_cfg = type("TrainConfig", (), {"validate_k": 20, "patience": 2})
    state = TrainState()
    for step, ndcg, best, stopped in [(10, 0.1, "step-000000010", False), (20, 0.3, "step-000000020", False),
                                      (30, 0.2, "step-000000020", False), (40, 0.3, "step-000000020", True)]:
        state.global_step = step
        _early_stopping(state, {"ndcg@20": ndcg}, train_cfg)
        assert (state.best_checkpoint, state.stopped) == (best, stopped)
    assert state.best_score == 0.3 and state.bad_epochs == 2
