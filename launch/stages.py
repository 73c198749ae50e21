"""The stage registry: name -> plain function of the config returning a summary dict."""
from __future__ import annotations

import importlib
from contextlib import nullcontext

from gnnrec import UserError

ORDER = ("synth", "ingest", "partition", "train", "mine", "infer", "evaluate")
RAY_STAGES = {"train", "mine", "infer", "evaluate"}  # the stages that run on Ray
HELP = {
    "synth": "generate a synthetic interaction log (power-law degrees, planted communities)",
    "ingest": "Parquet edge lists -> validated dataset (ID maps, dedup, splits, stats)",
    "partition": "dataset -> K partitions in DGL's format (metis, random, random-walk)",
    "train": "mini-batch training across Ray workers with DDP and DistDGL",
    "mine": "hard-negative mining from a checkpoint",
    "infer": "embeddings and top-K recommendations over the full catalog",
    "evaluate": "full-ranking metrics on held-out edges",
    "recommend": "cold start: top-K for a new user from a few of their items",
    "run": "run the stages listed in run.stages, in order",
}


# stage -> "module:function", imported when the stage runs (so `gnnrec --help` stays fast)
STAGES = {
    "synth": "gnnrec.partition.synth:synth",
    "ingest": "gnnrec.partition.ingest:ingest",
    "partition": "gnnrec.partition.partitioning:partition",
    "train": "gnnrec.trainer.train:train",
    "mine": "gnnrec.trainer.mine:mine_stage",
    "infer": "gnnrec.trainer.infer:infer_stage",
    "evaluate": "gnnrec.trainer.evaluate:evaluate_stage",
    "recommend": "gnnrec.trainer.recommend:recommend_stage",
}


def run_stage(name: str, cfg) -> dict:
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'")
    module, function = STAGES[name].split(":")
    return getattr(importlib.import_module(module), function)(cfg)


def run(cfg) -> dict[str, dict]:
    """Run cfg.run.stages in pipeline order; every stage's summary, by stage name.

    With `mine` listed, training runs in `run.rounds` rounds: after the first, each round mines hard
    negatives from the model so far, then resumes training for `run.round_epochs` more epochs with them
    (train.hard_negatives = mine.out). With one round, mine just runs after train.
    """
    from gnnrec.launch.cluster import ray_session

    stages, summaries = cfg.run.stages, {}
    with ray_session(cfg.launch) if RAY_STAGES & set(stages) else nullcontext():
        for name in ORDER:
            if name not in stages or name == "mine":
                continue
            summaries[name] = run_stage(name, cfg)
            if name == "train" and "mine" in stages:
                for r in range(2, cfg.run.rounds + 1):
                    summaries[f"mine (round {r})"] = run_stage("mine", cfg)
                    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
                        "resume": True, "hard_negatives": cfg.mine.out,
                        "epochs": cfg.train.epochs + cfg.run.round_epochs})})
                    summaries[f"train (round {r})"] = run_stage("train", cfg)
                if cfg.run.rounds == 1:
                    summaries["mine"] = run_stage("mine", cfg)
    return summaries
