"""`gnnrec STAGE [--config FILE] [key.sub=value ...]`: a thin shell over the stage functions."""
from __future__ import annotations

import argparse
import sys

from gnnrec import OUTPUT_ERRORS, JobFailed, UserError
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
    p = parser()
    args, later = p.parse_known_args(argv)  # overrides may also follow --checkpoint and the other flags
    if any(word.startswith("-") or "=" not in word for word in later):
        p.error(f"unrecognized arguments: {' '.join(later)}")
    args.overrides = [*args.overrides, *later]
    try:
        from gnnrec.launch.config import load_config
        flags = [f"recommend.{key}={value}" for key in ("checkpoint", "k") if (value := getattr(args, key, None))]
        if getattr(args, "items", None):
            flags.append(f"recommend.items=[{', '.join(repr(i.strip()) for i in args.items.split(','))}]")
        cfg = load_config(args.config, [*args.overrides, *flags])
        if args.stage == "run":
            run(cfg, report=lambda name, summary: print(format_table(f"{name} summary", summary), end="\n\n", flush=True))
        else:
            print(format_table(f"{args.stage} summary", run_stage(args.stage, cfg)))
    except (UserError, JobFailed) as e:
        return _report(args.stage, e)
    except KeyboardInterrupt as e:  # SIGINT, or SIGTERM during a Ray session (launch/cluster.ray_session)
        print(f"gnnrec {args.stage}: stopped{f' by {e}' if str(e) else ''}", file=sys.stderr)
        return 130
    except OSError as e:  # what the user can fix about where outputs go is theirs, not a traceback
        if e.errno not in OUTPUT_ERRORS:
            raise
        return _report(args.stage, UserError(f"{e.filename}: {e.strerror}" if e.filename else str(e)))
    return 0


def _report(stage: str, e: Exception) -> int:
    """The error on one line; exit status 2 for the user's (bad input, config, disk), 1 for a failed job."""
    print(f"gnnrec {stage}: {'error' if isinstance(e, UserError) else 'failed'}: {' '.join(str(e).split())}",
          file=sys.stderr)
    return 2 if isinstance(e, UserError) else 1


if __name__ == "__main__":
    sys.exit(main())
