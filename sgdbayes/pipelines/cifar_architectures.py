"""cifar_conv and cifar_residual: paper App I.3, Tables 5-6, Figs 22-23 (docs/methods.md).

One pipeline for both studies, parameterised by ``[arch]`` (the model family and the paper
table whose rows are trained): ``studies/cifar_conv.toml`` trains the four convolutional
architectures of Table 5, ``studies/cifar_residual.toml`` the five residual ones of Table 6.

Stages (cached by :mod:`sgdbayes.runner`):

1. ``train``    per architecture (one cell of the sharded stage), ``train.seeds`` seeds as one batched ensemble (Xavier init, zero
                bias, ReLU: :class:`sgdbayes.models.ConvNet` / :class:`sgdbayes.models.ResNet`), with
                λ̂ every ``llc_schedule.every`` steps (LLC hook of the engine)
2. ``analysis`` per run: final λ, λ̄, eq-17 fits (whole range = the paper's d_s, late window after
                the crossover t_c, early slope α_early of the two-segment fit); H1-H3 over every run;
                the size claim of App I.3 ("larger models exhibit more super-diffusive behaviour"):
                Spearman ρ(α_early, log10 P) > 0 across runs, with t_c and α vs log10 P beside it

Report: :mod:`sgdbayes.reporting.cifar_architectures`.
"""
from __future__ import annotations

import re

from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from .._validation import check_choice, check_float, check_int, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.shards import Partial, Sharding, ShardTask
from ..runner.typed import ConfigError, StudyConfig
from ..sampling import LLCConfig
from ..stats.summaries import llc_summaries, summarize
from ..stats.verdicts import test_h1_h3
from ._diffusion_common import cell_partial, fit_runs, train_cell
from ._ensemble_arrays import divergence_summary
from .sections import BootstrapConfig, CurvesReport, FitConfig, LLCSchedule, TrainConfig

__all__ = ["CONFIG", "CifarStudyConfig", "ImageData", "ArchConfig", "STAGES", "write_report", "architectures",
           "SIZE_CLAIM"]

SIZE_CLAIM = "larger models are more super-diffusive early (App I.3, Figs 22-23)"
PAPER_TABLE = {"cnn": 5, "resnet": 6}


@lru_cache(maxsize=4)
def _load_images(data: "ImageData"):
    from ..data import load_dataset

    if data.name == "digits":
        return load_dataset("digits", images=True, test_fraction=data.test_fraction, seed=data.seed)
    return load_dataset("cifar10", path=data.path, n=data.n or None, n_test=data.n_test or None, seed=data.seed)


@dataclass(frozen=True)
class ImageData:
    """``[data]``: ``cifar10`` reads the local ``cifar-10-batches-py`` folder at ``path`` (a random
    subset of ``n`` training and ``n_test`` test images, seed ``seed``; 0 = all); ``digits`` is
    scikit-learn's bundled 8x8 digits as 1-channel images (``test_fraction`` held out)."""

    name: Literal["cifar10", "digits"] = "cifar10"
    path: str = ""
    n: int = 10000
    n_test: int = 2000
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_int("n", self.n, 0)
        check_int("n_test", self.n_test, 0)
        check_float("test_fraction", self.test_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
        check_seed(self.seed, "seed")

    def _folder(self) -> Path:
        p = Path(self.path).expanduser()
        return p / "cifar-10-batches-py" if (p / "cifar-10-batches-py").is_dir() else p

    def input_files(self) -> tuple[Path, ...]:
        """The CIFAR batch files read (their content is part of the cache key); a missing folder
        or batch is a configuration error naming ``data.path``."""
        if self.name == "digits":
            return ()
        if not self.path:
            raise ConfigError("data.path is empty: data.name = 'cifar10' reads the local CIFAR-10 python batches; "
                              "give --set data.path=DIR (the cifar-10-batches-py folder or its parent)")
        p = self._folder()
        if not p.is_dir():
            raise ConfigError(f"data.path = {self.path!r}: no such folder; give the cifar-10-batches-py folder "
                              f"(data_batch_1..5, test_batch) or its parent")
        files = sorted(p.glob("data_batch_*"))
        if not files or not (p / "test_batch").is_file():
            raise ConfigError(f"data.path = {self.path!r}: {p} lacks data_batch_* or test_batch (present: "
                              f"{sorted(f.name for f in p.iterdir())})")
        return (*files, p / "test_batch")

    def load(self, device: str = "cpu"):
        return _load_images(self).to(device)


@dataclass(frozen=True)
class ArchConfig:
    """``[arch]``: the ``family`` (``cnn`` = Table 5, ``resnet`` = Table 6), the 0-based ``rows`` of
    that table to train (() = all), every channel count divided by ``channel_divisor`` (rounded,
    at least 1; 1 = the paper's), ``blocks`` residual blocks per later stage (resnet only; 2
    reproduces Table 6's parameter counts)."""

    family: Literal["cnn", "resnet"] = "cnn"
    rows: tuple[int, ...] = ()
    channel_divisor: int = 1
    blocks: int = 2

    def __post_init__(self):
        check_choice("family", self.family, tuple(PAPER_TABLE))
        for i, r in enumerate(self.rows):
            check_int(f"rows[{i}]", r, 0)
        check_int("channel_divisor", self.channel_divisor, 1)
        check_int("blocks", self.blocks, 1)


def architectures(arch: ArchConfig) -> pd.DataFrame:
    """The paper table's rows (``num_params``, ``d_s``, ``llc``, ``llc_sd``, ``channels`` as printed)
    with ``row`` (0-based) and ``channels_here`` (the channel lists trained)."""
    from ..paper import load_table

    t = load_table(PAPER_TABLE[arch.family]).reset_index(drop=True).rename(columns={"llc_final": "llc"})
    t["row"] = np.arange(len(t))
    if arch.rows:
        bad = [r for r in arch.rows if not 0 <= r < len(t)]
        if bad:
            raise ValueError(f"arch.rows {bad} outside the {len(t)} rows (0..{len(t) - 1}) of Table "
                             f"{PAPER_TABLE[arch.family]}")
        t = t.iloc[list(arch.rows)].reset_index(drop=True)
    t["channels_here"] = [[max(1, round(c / arch.channel_divisor)) for c in map(int, re.findall(r"\d+", s))]
                          for s in t["channels"].astype(str)]
    return t


@dataclass(frozen=True)
class CifarStudyConfig(StudyConfig):
    """The sections of ``studies/cifar_conv.toml`` and ``studies/cifar_residual.toml``."""

    data: ImageData = field(default_factory=ImageData)
    arch: ArchConfig = field(default_factory=ArchConfig)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(seeds=1, lr=0.001, batch_size=64, epochs=50))
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    llc_schedule: LLCSchedule = field(default_factory=LLCSchedule)
    fit: FitConfig = field(default_factory=FitConfig)
    analysis: BootstrapConfig = field(default_factory=BootstrapConfig)
    report: CurvesReport = field(default_factory=lambda: CurvesReport(max_curves=8))

    def input_files(self):
        return self.data.input_files()

    def preflight(self) -> None:
        n = self.data.load().n_train
        self.train.check_data(n, f"data.name = {self.data.name!r}")
        architectures(self.arch)
        k = self.train.n_steps(n)
        if k < self.llc_schedule.every:
            raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} exceeds the {k} training steps: "
                             f"no λ̂ would be estimated; lower it or train longer")


CONFIG = CifarStudyConfig


def _ensemble(c: CifarStudyConfig, channels: list[int], data, device: str, seeds):
    from ..engine import EnsembleConfig

    sizes: dict[str, Any] = {"kind": c.arch.family, "channels": tuple(channels),
                             "in_channels": int(data.x_train.shape[1]), "n_classes": int(data.n_classes)}
    if c.arch.family == "resnet":
        sizes["blocks"] = c.arch.blocks
    t = c.train
    opts = ({"images": True, "test_fraction": c.data.test_fraction, "seed": c.data.seed} if c.data.name == "digits"
            else {"path": c.data.path, "n": c.data.n, "n_test": c.data.n_test, "seed": c.data.seed})
    return EnsembleConfig(dataset=c.data.name, dataset_options=opts, model=sizes, optimizer="sgd", lr=t.lr,
                          momentum=t.momentum, batch_size=t.batch_size, steps=t.n_steps(data.n_train),
                          seeds=tuple(seeds), record_every=t.record_every, record_log_points=t.record_log_points,
                          device=device, progress=False)


def train_cells(ctx: StageContext):
    """One cell per architecture, ``train.seeds`` seeds each."""
    c = ctx.config
    return [(a, c.train.seed_list()) for a in range(len(architectures(c.arch)))]


def train_shard(task: ShardTask) -> Partial:
    """Some seeds of one architecture with λ̂ along training, as one batched computation."""
    c = task.config
    data = c.data.load(task.device)
    channels = architectures(c.arch)["channels_here"].iloc[task.cell]
    ecfg = replace(_ensemble(c, channels, data, task.device, task.seeds), workers=task.engine_workers(hooks=True))
    return cell_partial(train_cell(data, ecfg, c.llc, c.llc_schedule.every))


def train_merge(ctx: StageContext, parts: list[Partial]) -> dict[str, Any]:
    """Every architecture's ensemble, stacked ``[architecture, seed, ...]``."""
    c = ctx.config
    data = c.data.load()
    tab = architectures(c.arch)
    cells = [p.flat() for p in parts]
    for r, cell in zip(tab.itertuples(index=False), cells):
        ctx.log(f"    Table {PAPER_TABLE[c.arch.family]} row {r.row}: channels {r.channels_here} "
                f"({cell['n_params']} params), test acc {np.nanmean(cell['final_test_acc']):.3f}, {cell['wall_s']:.1f} s")
    G = min(x["displacement"].shape[1] for x in cells)
    seeds = [int(s) for s in c.train.seed_list()]
    div = np.stack([x["diverged"] for x in cells])
    return {
        "rows": tab["row"].to_numpy(np.int64), "channels_paper": list(tab["channels"].astype(str)),
        "channels": [list(x) for x in tab["channels_here"]], "paper_params": tab["num_params"].to_numpy(np.int64),
        "paper_d_s": tab["d_s"].to_numpy(float), "paper_llc": tab["llc"].to_numpy(float),
        "paper_llc_sd": tab["llc_sd"].to_numpy(float), "seeds": np.asarray(seeds, np.int64),
        "n_params": np.asarray([x["n_params"] for x in cells], np.int64), "models": [x["model"] for x in cells],
        "steps": cells[0]["steps"][:G], "displacement": np.stack([x["displacement"][:, :G] for x in cells]),
        "llc_steps": cells[0]["llc_steps"], "llc": np.stack([x["llc"] for x in cells]),
        "final_test_acc": np.stack([x["final_test_acc"] for x in cells]),
        "final_train_acc": np.stack([x["final_train_acc"] for x in cells]),
        "diverged": div, "diverged_step": np.stack([x["diverged_step"] for x in cells]),
        "wall_s_per_arch": np.asarray([x["wall_s"] for x in cells]), "nbeta": float(cells[0]["nbeta"]),
        "llc_trend_flags": int(sum(x["llc_trend_flags"] for x in cells)),
        "llc_n_estimates": int(sum(x["llc_n_estimates"] for x in cells)),
        "total_steps": int(c.train.n_steps(data.n_train)), "n_train": int(data.n_train),
        "n_test": int(data.x_test.shape[0]), "input_shape": list(data.x_train.shape[1:]),
        "data_meta": {k: v for k, v in data.meta.items() if isinstance(v, (int, float, str, bool))},
        "divergence": divergence_summary(div.ravel(), np.stack([x["diverged_step"] for x in cells]).ravel(),
                                         [f"row {r}/seed {s}" for r in tab["row"] for s in seeds]),
    }


# --------------------------------------------------------------------------- analysis

def _runs(tr: dict, c: CifarStudyConfig) -> pd.DataFrame:
    """Per-run eq-17 fits of every architecture (diverged runs left out), with ``arch``, ``row``,
    ``n_params``, ``log10_params``, ``test_acc``."""
    steps = np.asarray(tr["steps"], float)
    parts = []
    for a in range(len(tr["rows"])):
        keep = ~np.asarray(tr["diverged"][a], bool)
        if not keep.any():
            continue
        summ = llc_summaries(np.asarray(tr["llc"][a], float)[keep], c.llc_schedule.last)
        pos = np.flatnonzero(keep)
        r = fit_runs(steps, np.asarray(tr["displacement"][a], float)[keep], c.fit,
                     [f"row{int(tr['rows'][a])}/s{int(tr['seeds'][k])}" for k in pos], llc=summ.llc_final,
                     llc_se=summ.llc_final_se, llc_df=summ.llc_final_df, llc_mean=summ.llc_mean,
                     llc_mean_se=summ.llc_mean_se, positions=pos + a * len(tr["seeds"]))
        r["arch"], r["row"], r["n_params"] = a, int(tr["rows"][a]), int(tr["n_params"][a])
        r["test_acc"] = np.asarray(tr["final_test_acc"][a])[keep]
        parts.append(r)
    runs = pd.concat(parts, ignore_index=True)
    runs["log10_params"] = np.log10(runs["n_params"].astype(float))
    if "alpha_early" not in runs:
        runs["alpha_early"] = np.nan
    runs["alpha_early"] = pd.to_numeric(runs["alpha_early"], errors="coerce")
    runs["t_c"] = pd.to_numeric(runs.get("t_c"), errors="coerce")
    return runs


def _arch_rows(tr: dict, fitted: pd.DataFrame, level: float, seed: int, n_boot: int) -> list[dict]:
    """One row per architecture: summaries over its seeds beside the paper's numbers."""
    out = []
    for a in range(len(tr["rows"])):
        g = fitted[fitted["arch"] == a]

        def s(col):
            return summarize(g[col].to_numpy(float) if len(g) else np.array([]), level, seed + a, n_boot=n_boot)

        out.append({"row": int(tr["rows"][a]), "channels_paper": tr["channels_paper"][a],
                    "channels": tr["channels"][a], "n_params": int(tr["n_params"][a]),
                    "paper_params": int(tr["paper_params"][a]), "paper_d_s": float(tr["paper_d_s"][a]),
                    "paper_llc": float(tr["paper_llc"][a]), "paper_llc_sd": float(tr["paper_llc_sd"][a]),
                    "n_runs": int(len(g)), "d_s": s("d_s"), "llc": s("llc"), "llc_mean": s("llc_mean"),
                    "alpha": s("alpha"), "alpha_early": s("alpha_early"), "late_alpha": s("late_alpha"),
                    "t_c": s("t_c"), "test_acc": s("test_acc"), "wall_s": float(tr["wall_s_per_arch"][a])})
    return out


def size_test(fitted: pd.DataFrame, level: float, seed: int, n_boot: int):
    """The size claim as a :class:`~sgdbayes.stats.results.HypothesisTest` (id ``size-early``): the
    Spearman ρ(α_early, log10 P) across runs with a bootstrap interval, claim ρ > 0, decided by the
    interval and the one-sided p-value; plus the regressions of α_early, t_c and α on log10 P."""
    from ..stats.regression import cross_run_regressions
    from ..stats.results import HypothesisTest

    reg = cross_run_regressions(fitted, [("alpha_early", "log10_params"), ("t_c", "log10_params"),
                                         ("alpha", "log10_params")], n_boot=n_boot, level=level, seed=seed)
    row = reg.frame[(reg.frame["kind"] == "spearman") & (reg.frame["y"] == "alpha_early")].iloc[0]
    rho = float(row["estimate"])
    p_two = float(row["pvalue"])
    # one-sided p of H0 ρ <= 0 from the two-sided p (symmetric null distribution)
    p_one = (p_two / 2 if rho > 0 else 1 - p_two / 2) if np.isfinite(p_two) else None
    test = HypothesisTest.decided(
        "size-early", SIZE_CLAIM, "Spearman ρ(α_early, log10 parameters) over runs", rho, float(row["ci_low"]),
        float(row["ci_high"]), p_one, f"bootstrap interval over runs; {row['p_method']} p halved (one-sided)",
        level, threshold=0.0, direction="greater", n_tested=int(row["n"]))
    return test, reg


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    """Per-run fits, H1-H3 over every run, the size claim, per-architecture summaries."""
    tr, c = ctx["train"], ctx.config
    level, seed, n_boot = c.fit.level, c.analysis.seed, c.analysis.n_boot
    runs = _runs(tr, c)
    fitted = runs[runs["fit_error"] == ""].reset_index(drop=True)
    hyps, _ = test_h1_h3(fitted, level, seed, n_boot)
    size, reg = size_test(fitted, level, seed + 20, n_boot)
    hyps.append(size)
    notes = []
    n_div = int(np.asarray(tr["diverged"], bool).sum())
    if n_div:
        notes.append(f"{n_div} diverged runs left out of every analysis")
    if len(fitted) < len(runs):
        notes.append(f"{len(runs) - len(fitted)} runs could not be fitted: "
                     + "; ".join(sorted(set(runs.loc[runs['fit_error'] != '', 'fit_error']))))
    n_early = int(fitted["alpha_early"].notna().sum())
    notes.append(f"{n_early} of {len(fitted)} fitted runs have a two-segment crossover (α_early, t_c); the "
                 f"size claim uses those runs only")
    disp = np.asarray(tr["displacement"], float)  # [A, K, G]
    a, late = fitted["alpha"].to_numpy(float), fitted["late_alpha"].to_numpy(float)
    return {"runs": fitted, "hypotheses": hyps, "size_regressions": reg,
            "curves": {"disp_median": np.nanmedian(disp, 1), "disp_min": np.nanmin(disp, 1),
                       "disp_max": np.nanmax(disp, 1), "llc_median": np.nanmedian(np.asarray(tr["llc"], float), 1)},
            "bottom_line": {"alpha": summarize(a, level, seed, n_boot=n_boot), "n_alpha_below_half": int(np.sum(a < 0.5)),
                            "n_late": int(np.isfinite(late).sum()), "n_late_below_half": int(np.sum(late < 0.5))},
            "arch": _arch_rows(tr, fitted, level, seed, n_boot), "notes": notes,
            "n_llc_nonpositive": int((~(fitted["llc"] > 0)).sum()),
            "relaxation_steps": 2.0 / (c.llc.step_size * c.llc.localization)}


def _no_run_left(ctx: StageContext):
    d = ctx["train"]["divergence"]
    return f"all {d['n_runs']} runs diverged" if d["all_diverged"] else None


STAGES = [
    Stage("train", description="train every architecture's ensemble with λ̂ along training",
          shard=Sharding(train_cells, train_shard, train_merge)),
    Stage("analysis", stage_analysis, "per-run d_s, λ, λ̄, α_early; H1-H3; the size claim", skip=_no_run_left),
]


def write_report(ctx: StageContext):
    from ..reporting.cifar_architectures import write_report as write

    return write(ctx)
