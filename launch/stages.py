"""The stage registry: name -> plain function of the config returning a summary dict."""
from __future__ import annotations

from gnnrec import UserError

ORDER = ("synth", "ingest", "partition", "train", "mine", "infer", "evaluate")
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


def synth(cfg):
    from gnnrec.partition.synth import synth
    return synth(cfg)


def ingest(cfg):
    from gnnrec.partition.ingest import ingest
    return ingest(cfg)


def partition(cfg):
    from gnnrec.partition.partitioning import partition
    return partition(cfg)


def train(cfg):
    from gnnrec.trainer.train import train
    return train(cfg)


def mine(cfg):
    from gnnrec.trainer.mine import mine_stage
    return mine_stage(cfg)


def infer(cfg):
    from gnnrec.trainer.infer import infer_stage
    return infer_stage(cfg)


def evaluate(cfg):
    from gnnrec.trainer.evaluate import evaluate_stage
    return evaluate_stage(cfg)


def recommend(cfg):
    from gnnrec.trainer.recommend import recommend_stage
    return recommend_stage(cfg)


STAGES = {"synth": synth, "ingest": ingest, "partition": partition, "train": train, "mine": mine, "infer": infer,
          "evaluate": evaluate, "recommend": recommend}


def run_stage(name: str, cfg) -> dict:
    if name not in STAGES:
        raise UserError(f"unknown stage '{name}'")
    return STAGES[name](cfg)


def run(cfg) -> dict[str, dict]:
    """Run cfg.run.stages in pipeline order; every stage's summary, by stage name.

    With `mine` listed, training runs in `run.rounds` rounds: after the first, each round mines hard
    negatives from the model so far, then resumes training for `run.round_epochs` more epochs with them
    (train.hard_negatives = mine.out). With one round, mine just runs after train.
    """
    stages, summaries = cfg.run.stages, {}
    for name in ORDER:
        if name not in stages or name == "mine":
            continue
        summaries[name] = run_stage(name, cfg)
        if name == "train" and "mine" in stages:
            for r in range(2, cfg.run.rounds + 1):
                summaries[f"mine (round {r})"] = run_stage("mine", cfg)
                cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
                    "resume": True, "hard_negatives": cfg.mine.out, "epochs": cfg.train.epochs + cfg.run.round_epochs})})
                summaries[f"train (round {r})"] = run_stage("train", cfg)
            if cfg.run.rounds == 1:
                summaries["mine"] = run_stage("mine", cfg)
    return summaries
