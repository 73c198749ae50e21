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
    "run": "run the stages listed in run.stages, in order",
}
NOT_BUILT = {"mine": 6, "infer": 6}


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


def evaluate(cfg):
    from gnnrec.trainer.evaluate import evaluate_stage
    return evaluate_stage(cfg)


STAGES = {"synth": synth, "ingest": ingest, "partition": partition, "train": train, "evaluate": evaluate}


def run_stage(name: str, cfg) -> dict:
    if name not in STAGES:
        raise UserError(f"stage '{name}' is not built yet (issue #{NOT_BUILT[name]})")
    return STAGES[name](cfg)


def run(cfg) -> dict[str, dict]:
    """Run cfg.run.stages in pipeline order; every stage's summary, by stage name."""
    missing = [s for s in cfg.run.stages if s not in STAGES]
    if missing:
        raise UserError(f"run.stages: {', '.join(missing)} not built yet")
    return {name: run_stage(name, cfg) for name in ORDER if name in cfg.run.stages}
