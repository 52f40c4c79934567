"""finetune: paper §4.1 Table 1, App G.2 (the fine-tuning protocol; docs/finetune.md).

Stages (cached by :mod:`sgdbayes.runner`):

1. ``pretrain`` the backbone: a small CNN (:class:`sgdbayes.models.ConvNet`) trained with Adam on the
                pretraining classes of the built-in digits images, or weights read from
                ``backbone.weights`` (a torch ``state_dict`` file of the same ConvNet); the
                frozen backbone's features of the fine-tuning images
2. ``finetune`` a seed ensemble of new linear heads on those features (one batched computation):
                Adam until the full training loss improves by less than ``adam.tol`` over
                ``adam.patience`` epochs (at most ``adam.max_epochs``), then SGD lr ``sgd.lr`` for
                ``sgd.steps`` steps from each seed's stopping weights, λ̂ every ``llc_schedule.every``
3. ``analysis`` eq 17 on the SGD phase only: α, r², d_s = 2 λ α (λ = mean of the last
                ``llc_schedule.last`` estimates); the Adam → SGD transition located on the whole
                displacement curve by the two-segment (hinge) crossover with its interval

Report: :mod:`sgdbayes.reporting.finetune`. This study declares no sharding (one small ensemble).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._validation import check_float, check_int, check_seed
from ..runner.orchestrate import Stage, StageContext
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from ..stats.summaries import llc_summaries, summarize
from ._diffusion_common import fit_runs, llc_training_hook
from .sections import BootstrapConfig, FitConfig, LLCSchedule, ReportConfig

__all__ = ["CONFIG", "FinetuneConfig", "Backbone", "AdamPhase", "SGDPhase", "STAGES", "write_report",
           "adam_stop_epoch", "load_backbone_weights"]


@dataclass(frozen=True)
class Backbone:
    """``[backbone]``: ConvNet ``channels``; pretraining on digits classes ``< split_class`` with Adam
    (``pretrain_steps``, ``lr``, batch ``batch_size``, ``seed``), or ``weights`` = a local torch
    state_dict of this ConvNet (``""``: pretrain here). Fine-tuning uses classes ``>= split_class``."""

    channels: tuple[int, ...] = (16, 32)
    split_class: int = 5
    pretrain_steps: int = 600
    lr: float = 0.003
    batch_size: int = 64
    seed: int = 0
    weights: str = ""

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(check_int(f"channels[{i}]", c, 1) for i, c in enumerate(self.channels)))
        check_int("split_class", self.split_class, 1, 9)
        check_int("pretrain_steps", self.pretrain_steps, 1)
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_int("batch_size", self.batch_size, 1)
        check_seed(self.seed, "seed")

    def input_files(self) -> list[str]:
        return [self.weights] if self.weights else []


@dataclass(frozen=True)
class AdamPhase:
    """``[adam]``: the new head with Adam (App G.2: lr 1e-3, wd 1e-4, batch 128, <= 20 epochs, stop when
    the loss improves by < 1e-4 over 3 epochs)."""

    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    max_epochs: int = 20
    tol: float = 1e-4
    patience: int = 3

    def __post_init__(self):
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_int("batch_size", self.batch_size, 1)
        check_int("max_epochs", self.max_epochs, 1)
        check_float("tol", self.tol, 0.0)
        check_int("patience", self.patience, 1)


@dataclass(frozen=True)
class SGDPhase:
    """``[sgd]``: plain SGD from each seed's Adam stopping point (App G.2: lr 1e-5, 2000 steps, batch 128)."""

    seeds: int = 8
    lr: float = 1e-5
    steps: int = 2000
    batch_size: int = 128
    record_every: int = 10

    def __post_init__(self):
        check_int("seeds", self.seeds, 1)
        check_float("lr", self.lr, 0.0, strict_min=True)
        check_int("steps", self.steps, 1)
        check_int("batch_size", self.batch_size, 1)
        check_int("record_every", self.record_every, 1)


@dataclass(frozen=True)
class FinetuneConfig(StudyConfig):
    """The sections of ``studies/finetune.toml``."""

    backbone: Backbone = field(default_factory=Backbone)
    adam: AdamPhase = field(default_factory=AdamPhase)
    sgd: SGDPhase = field(default_factory=SGDPhase)
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    llc_schedule: LLCSchedule = field(default_factory=LLCSchedule)
    fit: FitConfig = field(default_factory=FitConfig)
    analysis: BootstrapConfig = field(default_factory=BootstrapConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def input_files(self):
        return self.backbone.input_files()

    def preflight(self) -> None:
        if self.backbone.weights and not Path(self.backbone.weights).is_file():
            raise ValueError(f"backbone.weights = {self.backbone.weights!r}: no such file (a torch state_dict of "
                             f"ConvNet(channels={list(self.backbone.channels)}); \"\" pretrains the backbone here)")
        if self.llc_schedule.every > self.sgd.steps:
            raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} exceeds sgd.steps = {self.sgd.steps}")


CONFIG = FinetuneConfig


def adam_stop_epoch(losses: np.ndarray, tol: float, patience: int) -> np.ndarray:
    """Per row of full-training-loss curves ``[K, E]`` (after epochs 1..E), the first epoch e > patience
    with loss[e - patience] - loss[e] < tol (1-based), else E."""
    L = np.asarray(losses, float)
    K, E = L.shape
    out = np.full(K, E, np.int64)
    for e in range(patience, E):
        stop = (L[:, e - patience] - L[:, e] < tol) & (out == E)
        out[stop] = e + 1
    return out


def load_backbone_weights(path: str, channels, n_classes: int):
    """A ConvNet with the state_dict at ``path`` (``torch.load(weights_only=True)``); errors name the path."""
    import torch

    from ..models.cnn import ConvNet

    net = ConvNet(channels, in_channels=1, n_classes=n_classes)
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"backbone.weights = {path!r}: no such file") from None
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"backbone.weights = {path!r} is not a torch state_dict file: {e}") from None
    if not isinstance(sd, dict):
        raise ValueError(f"backbone.weights = {path!r} holds a {type(sd).__name__}, not a state_dict")
    head = f"{len(net) - 1}."                                    # the old head is replaced: its keys are dropped
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in sd.items()}
    sd = {k: v for k, v in sd.items() if not k.startswith(head)}
    try:
        missing, unexpected = net.load_state_dict(sd, strict=False)
    except RuntimeError as e:
        raise ValueError(f"backbone.weights = {path!r} does not fit ConvNet(channels={list(channels)}): "
                         f"{str(e).splitlines()[-1].strip()}") from None
    missing = [m for m in missing if not m.startswith(head)]
    if missing or unexpected:
        raise ValueError(f"backbone.weights = {path!r} does not fit ConvNet(channels={list(channels)}): missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    return net


# --------------------------------------------------------------------------- stage 1

def _split_digits(split: int):
    from ..data import load_dataset

    d = load_dataset("digits", images=True, device="cpu")
    pre = (d.y_train < split, d.y_test < split)
    fine = (d.y_train >= split, d.y_test >= split)
    return d, pre, fine


def stage_pretrain(ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..data import Dataset
    from ..engine import EnsembleConfig, train_ensemble
    from ..models.cnn import ConvNet

    b = ctx.config.backbone
    d, (ptr, pte), (ftr, fte) = _split_digits(b.split_class)
    info: dict[str, Any] = {}
    if b.weights:
        net = load_backbone_weights(b.weights, b.channels, b.split_class)
        info["source"] = f"state_dict {b.weights}"
    else:
        pre = Dataset(d.x_train[ptr], d.y_train[ptr], d.x_test[pte], d.y_test[pte], "digits<split", b.split_class)
        cfg = EnsembleConfig(model=lambda: ConvNet(b.channels, 1, b.split_class), optimizer="adam", lr=b.lr,
                             batch_size=b.batch_size, steps=b.pretrain_steps, seeds=(b.seed,), device="cpu",
                             progress=False, record_every=max(1, b.pretrain_steps // 20), record_log_points=0)
        res = train_ensemble(cfg, data=pre)
        net = res.module(0)
        info = {"source": "pretrained here", "pretrain_test_acc": float(res.final["test_acc"].iloc[0]),
                "pretrain_train_acc": float(res.final["train_acc"].iloc[0])}
    body = torch.nn.Sequential(*list(net)[:-1]).eval()
    with torch.no_grad():
        f_tr, f_te = body(d.x_train[ftr]).double(), body(d.x_test[fte]).double()
    ctx.log(f"    backbone: {info['source']}; {f_tr.shape[1]} features")
    return {"f_train": f_tr.numpy(), "y_train": (d.y_train[ftr] - b.split_class).numpy(),
            "f_test": f_te.numpy(), "y_test": (d.y_test[fte] - b.split_class).numpy(),
            "n_classes": int(10 - b.split_class), "backbone_params": int(sum(p.numel() for p in body.parameters())),
            **info}


# --------------------------------------------------------------------------- stage 2

def _features(pre: dict, device: str):
    import torch

    from ..data import Dataset

    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset(t(pre["f_train"]), y(pre["y_train"]), t(pre["f_test"]), y(pre["y_test"]), "backbone features",
                   pre["n_classes"]).to(device)


def _epoch_hook(every: int, data, K: int, max_epochs: int):
    """Full training loss after every epoch and a copy of the weights (to restart SGD at the stop)."""
    from ..engine import Hook
    from ..engine.train import evaluate

    snaps: dict = {}

    def fn(state):
        loss, _ = evaluate(state.spec, state.w, data.x_train, data.y_train, state.model_state)
        for row, s in enumerate(state.seeds):
            snaps[(int(s), int(state.step))] = state.w[row].detach().cpu().clone()
        return {"loss": loss}

    return Hook(every=every, fn=fn, name="epoch"), snaps


def _origin_hook(every: int, origin: dict):
    """‖w_t − w_origin‖ per seed (origin = the head's initialization before Adam)."""
    import torch

    from ..engine import Hook

    def fn(state):
        o = torch.stack([origin[int(s)] for s in state.seeds]).to(state.w)
        return {"R_total": torch.linalg.vector_norm((state.w - o).double(), dim=1)}

    return Hook(every=every, fn=fn, name="origin")


def stage_finetune(ctx: StageContext) -> dict[str, Any]:
    import torch

    from ..engine import EnsembleConfig, train_ensemble

    c = ctx.config
    data = _features(ctx["pretrain"], ctx.device)
    spe = data.n_train // c.adam.batch_size
    seeds = tuple(range(c.sgd.seeds))
    head = (data.n_features, data.n_classes)
    acfg = EnsembleConfig(widths=head, optimizer="adam", lr=c.adam.lr, weight_decay=c.adam.weight_decay,
                          batch_size=c.adam.batch_size, epochs=c.adam.max_epochs, seeds=seeds, device=ctx.device,
                          record_every=1, record_log_points=0, progress=False)
    hook, snaps = _epoch_hook(spe, data, len(seeds), c.adam.max_epochs)
    ares = train_ensemble(acfg, data=data, hooks=[hook])
    loss = ares.hooks["epoch"].pivot(index="seed", columns="step", values="loss").reindex(index=list(seeds))
    stop_epoch = adam_stop_epoch(loss.to_numpy(float), c.adam.tol, c.adam.patience)
    stop_step = stop_epoch * spe
    w_stop = torch.stack([snaps[(s, int(t))] for s, t in zip(seeds, stop_step)])
    origin = {s: ares.w_init[k] for k, s in enumerate(seeds)}
    scfg = EnsembleConfig(widths=head, optimizer="sgd", lr=c.sgd.lr, batch_size=c.sgd.batch_size, steps=c.sgd.steps,
                          seeds=seeds, device=ctx.device, record_every=c.sgd.record_every, record_log_points=0,
                          batch_stream=1, progress=False)
    sres = train_ensemble(scfg, data=data, init=w_stop,
                          hooks=[llc_training_hook(c.llc, c.llc_schedule.every)[0],
                                 _origin_hook(c.sgd.record_every, origin)])
    llc = sres.hooks["llc"].pivot(index="seed", columns="step", values="llc").reindex(index=list(seeds))
    R_total = sres.hooks["origin"].pivot(index="seed", columns="step", values="R_total").reindex(index=list(seeds))
    adam_R = np.asarray(ares.displacement, float)
    ctx.log(f"    Adam stopped at epochs {stop_epoch.tolist()}; SGD {c.sgd.steps} steps, final test acc "
            f"{sres.final['test_acc'].mean():.3f}")
    return {"seeds": np.asarray(seeds), "spe": int(spe), "adam_loss": loss.to_numpy(float), "stop_epoch": stop_epoch,
            "stop_step": stop_step, "adam_steps": np.asarray(ares.steps), "adam_R": adam_R,
            "sgd_steps": np.asarray(sres.steps), "sgd_R": np.asarray(sres.displacement, float),
            "R_total_steps": np.asarray(R_total.columns), "R_total": R_total.to_numpy(float),
            "llc_steps": np.asarray(llc.columns), "llc": llc.to_numpy(float),
            "head_params": int(np.prod(head) + head[1]), "n_train": int(data.n_train),
            "adam_final_test_acc": ares.final["test_acc"].to_numpy(float),
            "final_test_acc": sres.final["test_acc"].to_numpy(float),
            "final_train_loss": sres.final["train_loss"].to_numpy(float)}


# --------------------------------------------------------------------------- stage 3

def _transition(ft: dict, level: float) -> list[dict]:
    """Per seed: the hinge crossover of log R on log t over the whole run (Adam to its stop, then SGD,
    R measured from the head's initialization), t_c with its interval, and the true switch step."""
    from ..stats.crossover import fit_crossover

    out = []
    for k, s in enumerate(ft["seeds"]):
        stop = int(ft["stop_step"][k])
        a_t, a_R = np.asarray(ft["adam_steps"]), np.asarray(ft["adam_R"][k])
        m = a_t <= stop
        t = np.concatenate([a_t[m], stop + np.asarray(ft["R_total_steps"])]).astype(float)
        R = np.concatenate([a_R[m], np.asarray(ft["R_total"][k])])
        ok = np.isfinite(R) & (R > 0)
        row = {"seed": int(s), "switch_step": stop}
        try:
            cx = fit_crossover(np.log(t[ok]), np.log(R[ok]), level=level, min_segment=4)
            ci = cx.conf_int(level).loc["t_c"]
            row.update(t_c=float(cx.t_c), t_c_ci_low=float(ci["ci_low"]), t_c_ci_high=float(ci["ci_high"]),
                       covers=bool(ci["ci_low"] <= stop <= ci["ci_high"]), error="")
        except (ValueError, np.linalg.LinAlgError) as e:
            row.update(t_c=np.nan, t_c_ci_low=np.nan, t_c_ci_high=np.nan, covers=False, error=str(e))
        out.append(row)
    return out


def stage_analysis(ctx: StageContext) -> dict[str, Any]:
    ft, c = ctx["finetune"], ctx.config
    fs, an = c.fit, c.analysis
    summ = llc_summaries(ft["llc"], c.llc_schedule.last)
    runs = fit_runs(np.asarray(ft["sgd_steps"], float), np.asarray(ft["sgd_R"], float), fs,
                    [f"seed {int(s)}" for s in ft["seeds"]], llc=summ.llc_final, llc_se=summ.llc_final_se,
                    llc_df=summ.llc_final_df)
    fitted = runs[runs["fit_error"] == ""]

    def s(col):
        return summarize(fitted[col].to_numpy(float), fs.level, an.seed, n_boot=an.n_boot)

    summary = {"alpha": s("alpha"), "r2": s("r2"), "llc": s("llc"), "d_s": s("d_s"),
               "n_runs": int(len(runs)), "n_fitted": int(len(fitted)),
               "fit_errors": sorted(set(runs.loc[runs["fit_error"] != "", "fit_error"]))}
    trans = _transition(ft, fs.level)
    from ..paper import load_table

    t1 = load_table(1)
    return {"runs": runs, "summary": summary, "transition": trans, "hypotheses": _tests(fitted, fs.level, an),
            "transition_coverage": float(np.mean([t["covers"] for t in trans])),
            "paper_table1": t1.to_dict("records")}


def _tests(fitted, level: float, an: BootstrapConfig) -> list:
    """H1-finetune (median α of the SGD phase < 1/2) and H2 (median d_s − λ < 0), by the one rule."""
    from ..stats.results import HypothesisTest

    out = []
    for id_, claim, stat, v, thr in (
            ("H1-finetune", "the SGD phase after fine-tuning is sub-diffusive, α < 1/2 (Table 1: α ≈ 0.004)",
             "median over heads of α", fitted["alpha"].to_numpy(float), 0.5),
            ("H2", "d_s ≤ λ (Lemma 3.4; Table 1: d_s ≪ λ)", "median over heads of d_s − λ",
             (fitted["d_s"] - fitted["llc"]).to_numpy(float), 0.0)):
        sm = summarize(v, level, an.seed, n_boot=an.n_boot)
        out.append(HypothesisTest.decided(id_, claim, stat, sm.median, sm.median_ci_low, sm.median_ci_high, None,
                                          "interval only (percentile bootstrap of the median over heads)", level,
                                          threshold=thr, direction="less", n_tested=int(sm.n)))
    return out


STAGES = [
    Stage("pretrain", stage_pretrain, "pretrain (or load) the CNN backbone and extract frozen features"),
    Stage("finetune", stage_finetune, "new heads: Adam until the loss stops improving, then SGD with LLC"),
    Stage("analysis", stage_analysis, "alpha, r2, d_s = 2 lambda alpha on the SGD phase; Adam->SGD transition"),
]


def write_report(ctx: StageContext):
    from ..reporting.finetune import write_report as write

    return write(ctx)
