"""Run a declared study end to end and write its report.

    python -m sgdbayes.study posterior_concentration            # paper preset, 500 seeds
    python -m sgdbayes.study posterior_concentration --preset quick
    python -m sgdbayes.study posterior_concentration --preset paper --preset chains4
    python -m sgdbayes.study posterior_concentration --set llc.num_draws=2000 --seeds 100
    python -m sgdbayes.study --list

Exit status: 0 on success, 2 for a usage/configuration error (unknown study,
preset or key, wrong value type or range, unusable --out), 1 if a stage fails
or another process keeps the output locked (finished stages stay cached;
rerunning resumes from the first unfinished stage), 130 on Ctrl-C.

    python -m sgdbayes.study posterior_concentration --executor ray --shard-size 50
    python -m sgdbayes.study ablations --executor slurm --set executor.partition=gpu --set executor.gpus_per_worker=1

See docs/run_a_study.md.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
import threading

from .runner.config import ConfigError, list_studies, load_study

_EPILOG = """\
configuration:
  Each study is declared in studies/NAME.toml (shipped as sgdbayes/studies/NAME.toml):
  [base.SECTION] tables, one per section of the study's typed configuration, whose keys
  are the field names of that section's dataclass (e.g. [llc] = sgdbayes.sampling.LLCConfig:
  llc.step_size, llc.num_draws, ...), and [presets.*] tables that override them.
  Resolution: base <- --preset (in order) <- --seeds <- --set (in order). Unknown keys,
  wrong types and out-of-range values are errors naming the key (exit status 2).

cache:
  Finished stages are saved atomically under <cache>/<hash>/<stage>/, where <hash> is a
  sha256 of the resolved configuration without presentational keys (report.*) and without
  the device. With the default output the cache is reports/NAME/cache/ (git-ignored); with
  --out DIR it is DIR/cache/. Rerunning loads finished stages (seconds); an interrupted run
  resumes at the first unfinished stage; --force recomputes every stage. A cached stage is
  reused only if it was computed from the same earlier stages, configuration, input files
  and sgdbayes version; an unreadable cache entry is recomputed.

output folder:
  --out DIR must be a new or empty folder or an earlier study output (it holds
  .sgdbayes-outputs.json); any other folder needs --force. Only sgdbayes' own files are
  written there (report.md, results.json, figures/, cache/); nothing else is removed. While a
  run writes DIR it holds an OS file lock; a second run into DIR waits (see --lock-timeout).
  Details: docs/run_a_study.md.

executors:
  Training ensembles and estimating λ̂ of solutions run as shards of seeds, each one batched
  computation: --executor local (this process), ray or slurm; --shard-size N seeds per shard.
  Settings: the [executor] section (--set executor.retries=3, executor.address=auto,
  executor.partition=..., executor.time_min=..., executor.gpus_per_worker=1, ...), never part of
  the cache key. A failed shard is retried (executor.retries, default 2); finished shards are
  cached, so a rerun computes only the missing ones. Details: docs/scale_out.md.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m sgdbayes.study",
        description="Run an sgdbayes study (train -> llc -> cluster -> sgld -> analysis) and write "
                    "its report (report.md, results.json, figures/).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", nargs="?", help="study name, e.g. posterior_concentration (see --list)")
    p.add_argument("--list", action="store_true", help="list the studies and their presets, then exit")
    p.add_argument("--preset", action="append", metavar="NAME", default=None,
                   help="preset to apply over the base table (default: the study's default, 'paper'). "
                        "Repeat or comma-separate to stack presets, applied in order "
                        "(e.g. --preset paper,chains4)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], dest="sets",
                   help="override one configuration key; VALUE uses TOML syntax "
                        "(0.1, 100, true, [64,64], \"text\"; a bare word is read as a string). Repeatable")
    p.add_argument("--seeds", type=int, metavar="N", default=None,
                   help="number of SGD seeds in the ensemble (sets the study's seeds key, e.g. train.seeds)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where to compute: auto = cuda when available, else cpu (default: auto). "
                        "Not part of the cache key; recorded in the report")
    p.add_argument("--threads", type=int, metavar="N", default=0,
                   help="torch CPU intra-op threads; 0 (default) = automatic: 1, because sgdbayes already "
                        "runs seeds and SGLD chains in one worker thread per core. Not part of the cache "
                        "key; recorded in the report")
    p.add_argument("--executor", choices=["local", "ray", "slurm"], default=None,
                   help="where the sharded stages (training, λ̂ of solutions) run: local = this process "
                        "(default), ray = a Ray cluster (pip install 'sgdbayes[ray]'), slurm = submitit jobs "
                        "(pip install 'sgdbayes[slurm]'); options: --set executor.KEY=VALUE. Numbers are "
                        "identical on every executor; not part of the cache key. See docs/scale_out.md")
    p.add_argument("--shard-size", type=int, metavar="N", default=None,
                   help="seeds per shard of a sharded stage (default 0 = one shard per cell, i.e. the whole "
                        "ensemble as one batched computation); finished shards are cached, so a rerun "
                        "computes only the missing ones")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="output directory for report.md, results.json and figures/ "
                        "(default: reports/NAME/ for the default preset, reports/NAME/variants/<label>/ "
                        "otherwise); the cache goes to DIR/cache/ when --out is given")
    p.add_argument("--force", action="store_true",
                   help="recompute every stage, ignoring the cache; also allows --out to name a non-empty folder "
                        "that is not an earlier sgdbayes output (only sgdbayes' files are written there)")
    p.add_argument("--lock-timeout", type=float, metavar="S", default=-1,
                   help="when another sgdbayes process is writing the same output folder or cache entry, "
                        "wait at most S seconds, then fail (default: wait until it finishes)")
    return p


def _list_text() -> str:
    lines = []
    for name in list_studies():
        try:
            decl = load_study(name)
        except ConfigError as exc:  # one broken declaration must not hide the others
            lines.append(f"{name}: (invalid declaration: {exc})")
            continue
        lines.append(f"{name}: {decl.title}")
        for pname in sorted(decl.presets, key=lambda n: (n != decl.default_preset, n)):
            pre = decl.presets[pname]
            mark = " (default)" if pname == decl.default_preset else ""
            lines.append(textwrap.fill(f"--preset {pname}{mark}: {pre.description or '-'}", width=100,
                                       initial_indent="  ", subsequent_indent="      "))
    return "\n".join(lines)


def _install_interrupt_handler() -> None:
    """First Ctrl-C: stop now. The engine's worker threads finish their chunk before a plain
    KeyboardInterrupt can end the process (minutes), so after a short grace period (in which
    the main thread unwinds and releases its locks) the process exits with status 130.
    Cache entries and outputs are written atomically, so nothing half-written is left
    behind for the next run to read (temporaries are removed by it). A second Ctrl-C exits at once."""
    state = {"n": 0}

    def handler(signum, frame):
        state["n"] += 1
        if state["n"] > 1:
            os._exit(130)
        print("\ninterrupted: stopping; finished stages are cached, rerun to resume", file=sys.stderr, flush=True)
        timer = threading.Timer(3.0, lambda: os._exit(130))
        timer.daemon = True
        timer.start()
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> int:
    from .outdir import BusyError, OutputDirError
    from .runner.executors import ShardFailed

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.list:
            print(_list_text())
            return 0
        if args.threads < 0:
            raise ConfigError(f"--threads must be >= 0 (0 = automatic), got {args.threads}")
        if not args.study:
            raise ConfigError(f"no study given; valid studies: {', '.join(list_studies())}")
        presets = None
        if args.preset:
            presets = [p.strip() for chunk in args.preset for p in chunk.split(",") if p.strip()]
        from .runner.orchestrate import resolve_device, run_study

        try:
            resolve_device(args.device)
        except RuntimeError as exc:
            raise ConfigError(str(exc)) from None
        _install_interrupt_handler()
        result = run_study(args.study, presets=presets, sets=args.sets, seeds=args.seeds, device=args.device,
                           out=args.out, force=args.force, threads=args.threads, lock_timeout=args.lock_timeout,
                           executor=args.executor, shard_size=args.shard_size)
    except (ConfigError, OutputDirError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ShardFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BusyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; finished stages are cached, rerun to resume", file=sys.stderr)
        return 130
    print(f"Report: {result.report}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
