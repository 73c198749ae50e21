"""Jobs over a trained model (infer, mine): the partitions it was trained on served again, its ID tables
restored into the servers, and layer-wise inference in one worker per trainer of the training job.

    driver:  with model_job("infer", cfg, trained, out, infer_loop) as tmp:  ... finish tmp ...
    worker:  infer_loop(config): context = config["context"]  (launch/job.WorkerContext; its job: ModelArgs)
             with model_session(context) as (w, inference):  ... inference.run(w.progress) ... context.out ...
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from gnnrec import atomic_dir
from gnnrec.inference.trained import TrainOutput


@dataclass
class ModelArgs:
    """What a job over a trained model hands its workers (WorkerContext.job): absolute paths, since a Ray
    worker's working directory is not the driver's."""
    trained: str  # the `gnnrec train` output
    dataset: str  # its dataset


@contextlib.contextmanager
def model_job(kind: str, cfg, trained: TrainOutput, out: Path, loop):
    """Start (or attach to) Ray, serve the partitions `trained` was trained on, run `loop` in its workers
    writing into a temporary `out`, then yield that temporary directory for the caller to finish.
    `out` appears complete or not at all."""
    from gnnrec.launch.cluster import plan, ray_session
    from gnnrec.launch.job import run_workers

    train_cfg = trained.config.train
    with ray_session(cfg.launch):
        job = plan(trained.partitions, train_cfg.trainers_per_partition, train_cfg.dim, train_cfg.use_gpu)
        print(job.line())
        with atomic_dir(out) as tmp:
            run_workers(kind, cfg, trained.partitions, job, loop,
                        ModelArgs(str(trained.path.resolve()), str(trained.dataset.path.resolve())), tmp)
            yield tmp
            cfg.save(tmp)


@contextlib.contextmanager
def model_session(context):
    """Worker side of model_job: a worker session (launch/job.py) with the model's ID tables restored
    into the servers, and a LayerwiseInference of its GNN (in eval mode)."""
    from gnnrec.launch.job import worker_session
    from gnnrec.trainer import checkpoint
    from gnnrec.trainer.batches import node_inputs, time_decay
    from gnnrec.inference.layerwise import LayerwiseInference

    trained = TrainOutput(context.job.trained)
    train_cfg = trained.config.train
    with worker_session(context, train_cfg.dim, train_cfg.torch_threads, train_cfg.seed) as w:
        checkpoint.restore(trained.model_dir, w.tables, None, w.rank, w.world)
        model = trained.model(w.partitions).eval()
        yield w, LayerwiseInference(w, model.gnn, train_cfg, w.cfg.infer.batch_size,
                                    time_decay=time_decay(train_cfg, w.partitions), inputs=node_inputs(model, w.graph))
