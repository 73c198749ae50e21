"""The table of stages, from which the CLI, `gnnrec run` and the config's list of stage names are derived.

Each stage is a module whose `run(cfg)` returns a summary dict, imported when it runs (so `gnnrec
--help` stays fast).
"""
from __future__ import annotations

import importlib
from contextlib import nullcontext
from typing import NamedTuple

from gnnrec import UserError


class Stage(NamedTuple):
    name: str
    module: str  # its entry point is `run(cfg)`
    help: str
    needs_ray: bool = False
    in_pipeline: bool = True  # may be listed in run.stages (recommend takes a new user's items instead)


STAGES = (
    Stage("synth", "gnnrec.data.synth",
          "generate a synthetic interaction log (power-law degrees, planted communities)"),
    Stage("ingest", "gnnrec.data.ingest", "Parquet edge lists -> validated dataset (ID maps, dedup, splits, stats)"),
    Stage("partition", "gnnrec.partition.stage",
          "dataset -> K partitions in DGL's format (metis, random, random-walk)"),
    Stage("train", "gnnrec.trainer.train", "mini-batch training across Ray workers with DDP and DistDGL",
          needs_ray=True),
    Stage("mine", "gnnrec.inference.mine", "hard-negative mining from a checkpoint", needs_ray=True),
    Stage("infer", "gnnrec.inference.infer", "embeddings and top-K recommendations over the full catalog",
          needs_ray=True),
    Stage("evaluate", "gnnrec.inference.evaluate", "full-ranking metrics on held-out edges"),
    Stage("plan", "gnnrec.launch.sizing",
          "machines, memory and hours of a job of plan.edges rows, before its data exists", in_pipeline=False),
    Stage("recommend", "gnnrec.inference.recommend",
          "cold start: top-K for a new user from a few of their items", in_pipeline=False),
)
BY_NAME = {s.name: s for s in STAGES}
PIPELINE = tuple(s.name for s in STAGES if s.in_pipeline)  # the order `run` keeps
HELP = {**{s.name: s.help for s in STAGES}, "run": "run the stages listed in run.stages, in order"}


def run_stage(name: str, cfg) -> dict:
    if name not in BY_NAME:
        raise UserError(f"unknown stage '{name}'")
    return importlib.import_module(BY_NAME[name].module).run(cfg)


def run(cfg, report=None) -> dict[str, dict]:
    """Run cfg.run.stages in pipeline order; every stage's summary, by stage name, each also given to
    `report(name, summary)` as soon as its stage ends.

    With `mine` listed, training runs in `run.rounds` rounds: after the first, each round mines hard
    negatives from the model so far, then resumes training for `run.round_epochs` more epochs with them
    (train.hard_negatives = mine.out). With one round, mine just runs after train. With `run.refit`,
    train is followed by ingest, partition and train again, as `refitted` says.
    """
    from gnnrec.launch.cluster import ray_session

    stages, summaries = cfg.run.stages, {}
    if cfg.run.refit and ("train" not in stages or cfg.train.validate_split != "val" or cfg.run.rounds > 1):
        raise UserError("run.refit needs train in run.stages, train.validate_split=val (where the epochs are "
                        "chosen) and run.rounds=1")

    def stage(name: str, label: str | None = None) -> None:
        summaries[label or name] = run_stage(name, cfg)
        if report is not None:
            report(label or name, summaries[label or name])

    with ray_session(cfg.launch) if any(BY_NAME[s].needs_ray for s in stages) else nullcontext():
        for name in PIPELINE:
            if name not in stages or name == "mine":
                continue
            stage(name)
            if name == "train" and cfg.run.refit:
                cfg = refitted(cfg, summaries["train"]["model_epoch"])
                for again in ("ingest", "partition", "train"):
                    stage(again, f"{again} (refit)")
            if name == "train" and "mine" in stages:
                for r in range(2, cfg.run.rounds + 1):
                    stage("mine", f"mine (round {r})")
                    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={
                        "resume": True, "hard_negatives": cfg.mine.out,
                        "epochs": cfg.train.epochs + cfg.run.round_epochs})})
                    stage("train", f"train (round {r})")
                if cfg.run.rounds == 1:
                    stage("mine")
    return summaries


def refitted(cfg, epochs: int):
    """The refit of a model whose `epochs` were chosen on validation: trained from scratch for as many
    epochs on the training and validation edges (split.refit: the same test edges), no validation; its
    dataset, partitions and train output beside the first's (`<path>-refit`), and the stages after train
    (mine, infer, evaluate, recommend) reading its model."""
    refit = {"ingest": {"out": f"{cfg.ingest.out}-refit"}, "split": {"refit": True},
             "partition": {"dataset": f"{cfg.ingest.out}-refit", "out": f"{cfg.partition.out}-refit"},
             "train": {"partitions": f"{cfg.partition.out}-refit", "out": f"{cfg.train.out}-refit",
                       "checkpoints": f"{cfg.train.checkpoints}-refit", "epochs": epochs, "validate_split": "none",
                       "resume": False},
             **{stage: {"checkpoint": f"{cfg.train.out}-refit"} for stage in ("mine", "infer", "evaluate", "recommend")}}
    return cfg.model_copy(update={name: getattr(cfg, name).model_copy(update=update) for name, update in refit.items()})
