"""One typed config for every stage: YAML file + `key.sub=value` overrides, validated by pydantic.

    cfg = load_config("configs/quickstart.yaml", ["synth.edges=1000000", "split.method=temporal"])

The sections are in launch/sections.py and launch/train_sections.py. Unknown keys and bad values raise
`UserError` naming the dotted key. Paths may contain `{workdir}`, which is replaced by `workdir` after the
overrides are applied.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from gnnrec import UserError
from gnnrec.launch.sections import (EvaluateConfig, InferConfig, IngestConfig, LaunchConfig, MineConfig,
                                    PartitionConfig, PlanConfig, RecommendConfig, RunConfig, Section, SplitConfig,
                                    SynthConfig)
from gnnrec.launch.train_sections import TrainConfig

QUICKSTART = Path(__file__).resolve().parent.parent / "configs" / "quickstart.yaml"


class Config(Section):
    workdir: str = Field("runs/quickstart", description="the directory `{workdir}` stands for in every path")
    synth: SynthConfig = SynthConfig()
    ingest: IngestConfig = IngestConfig()
    split: SplitConfig = SplitConfig()
    partition: PartitionConfig = PartitionConfig()
    launch: LaunchConfig = LaunchConfig()
    train: TrainConfig = TrainConfig()
    infer: InferConfig = InferConfig()
    mine: MineConfig = MineConfig()
    recommend: RecommendConfig = RecommendConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    plan: PlanConfig = PlanConfig()
    run: RunConfig = RunConfig()

    def path(self, template: str) -> Path | str:
        """A config path with `{workdir}` filled in: a Path, or the string itself for a filesystem
        URI (s3://b/k, file:///x), which Path would mangle into s3:/b/k."""
        filled = template.replace("{workdir}", self.workdir)
        return filled if "://" in filled else Path(filled)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, directory) -> None:
        """Write the resolved config beside an output."""
        (Path(directory) / "config.yaml").write_text(self.to_yaml())


def load_config(path=None, overrides=()) -> Config:
    """Load YAML (the quickstart default when `path` is None), apply `key=value` overrides, validate."""
    path = Path(path) if path else QUICKSTART
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except OSError as e:
        raise UserError(f"config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise UserError(f"config {path}: expected a mapping at the top level")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"override {item!r}: expected key.sub=value")
        _set(data, Config().model_dump(), key.strip().split("."), _parse_value(value), key)
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "<top>"
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        raise UserError(f"config key '{key}': {msg}") from None


def _parse_value(value: str):
    """An override's value as YAML (typed: 3, 0.5, true, [a, b], null); empty is null. A path
    template containing `{workdir}`, or text that is not valid YAML, is kept as the string itself."""
    if not value.strip():
        return None
    if "{workdir}" in value:
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def _set(data: dict, defaults, keys: list[str], value, full_key: str) -> None:
    """Set data[k1][k2]... = value; a section the file leaves out starts from its defaults."""
    for k in keys[:-1]:
        defaults = defaults.get(k) if isinstance(defaults, dict) else None
        if data.get(k) is None:
            data[k] = dict(defaults) if isinstance(defaults, dict) else {}
        if not isinstance(data[k], dict):
            raise UserError(f"override '{full_key}': '{k}' is not a section")
        data = data[k]
    data[keys[-1]] = value
