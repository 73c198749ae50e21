"""`gnnrec STAGE [--config FILE] [key.sub=value ...]`: a thin shell over the stage functions."""
from __future__ import annotations

import argparse
import sys

from gnnrec import JobFailed, UserError
from gnnrec.launch.stages import HELP, run, run_stage


def format_table(title: str, summary: dict) -> str:
    rows = [(str(k), f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else str(v))
            for k, v in summary.items()]
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join([title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gnnrec", description="Distributed GNN recommendation trainer.")
    sub = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in HELP.items():
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("--config", help="YAML config (default: configs/quickstart.yaml)")
        s.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
        if name == "recommend":
            s.add_argument("--checkpoint", help="a `gnnrec train` output (recommend.checkpoint)")
            s.add_argument("--items", help="comma-separated raw item IDs (recommend.items)")
            s.add_argument("--k", help="recommendations (recommend.k)")
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        from gnnrec.launch.config import load_config
        flags = [f"recommend.{key}={value}" for key in ("checkpoint", "k") if (value := getattr(args, key, None))]
        if getattr(args, "items", None):
            flags.append(f"recommend.items=[{', '.join(repr(i.strip()) for i in args.items.split(','))}]")
        cfg = load_config(args.config, [*args.overrides, *flags])
        if args.stage == "run":
            for name, summary in run(cfg).items():
                print(format_table(f"{name} summary", summary), end="\n\n")
        else:
            print(format_table(f"{args.stage} summary", run_stage(args.stage, cfg)))
    except (UserError, JobFailed) as e:
        print(f"gnnrec {args.stage}: {'error' if isinstance(e, UserError) else 'failed'}: "
              f"{' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2 if isinstance(e, UserError) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
