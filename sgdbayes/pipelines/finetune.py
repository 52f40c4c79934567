"""finetune: paper §4.1 Table 1, App G.2-G.3 (the fine-tuning protocol; docs/finetune.md).

Two variants, chosen by ``finetune.tasks``: ``"image"`` (the stages below) and ``"lm"`` (App G.3, an
already converged language model trained on: :mod:`sgdbayes.pipelines.finetune_lm`). Image stages
(cached by :mod:`sgdbayes.runner`; skipped when ``"image"`` is not in ``finetune.tasks``):

1. ``pretrain`` the backbone (:mod:`sgdbayes.pipelines.finetune_backbone`): a small CNN trained with
                Adam on the pretraining classes of the built-in digits images, or weights read from
                ``backbone.weights`` (a torch ``state_dict`` of a ConvNet or torchvision ResNet, or a
                Hugging Face model folder); the frozen backbone's features of the fine-tuning images
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
from typing import Any

import numpy as np

from ..runner.orchestrate import Stage, StageContext
from ..runner.typed import StudyConfig
from ..sampling import LLCConfig
from .finetune_backbone import Backbone, load_backbone_weights, stage_pretrain
from .finetune_common import AdamPhase, SGDPhase, Tasks, adam_stop_epoch, epoch_hook, phase_fits, phase_tests, stop_weights
from .finetune_lm import STAGES as LM_STAGES, LMConfig
from ._diffusion_common import llc_training_hook
from .sections import BootstrapConfig, FitConfig, LLCSchedule, ReportConfig

__all__ = ["CONFIG", "FinetuneConfig", "Backbone", "AdamPhase", "SGDPhase", "LMConfig", "Tasks", "STAGES",
           "write_report", "adam_stop_epoch", "load_backbone_weights"]


def _lm_llc() -> LLCConfig:
    """Table 3's estimator on minibatches of 16 sequences (the LM's training batch; ours)."""
    import dataclasses

    return dataclasses.replace(LLCConfig.paper(), batch_size=16)


@dataclass(frozen=True)
class FinetuneConfig(StudyConfig):
    """The sections of ``studies/finetune.toml``."""

    finetune: Tasks = field(default_factory=Tasks)
    backbone: Backbone = field(default_factory=Backbone)
    adam: AdamPhase = field(default_factory=AdamPhase)
    sgd: SGDPhase = field(default_factory=SGDPhase)
    llc: LLCConfig = field(default_factory=LLCConfig.paper)
    lm: LMConfig = field(default_factory=LMConfig)
    lm_pretrain: AdamPhase = field(default_factory=lambda: AdamPhase(lr=3e-3, weight_decay=0.0, batch_size=64,
                                                                     max_epochs=60))
    lm_sgd: SGDPhase = field(default_factory=lambda: SGDPhase(steps=1000, batch_size=16))
    lm_llc: LLCConfig = field(default_factory=_lm_llc)
    llc_schedule: LLCSchedule = field(default_factory=LLCSchedule)
    fit: FitConfig = field(default_factory=FitConfig)
    analysis: BootstrapConfig = field(default_factory=BootstrapConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

    def input_files(self):
        return (self.backbone.input_files() if "image" in self.finetune.tasks else []) + \
            (self.lm.input_files() if "lm" in self.finetune.tasks else [])

    def preflight(self) -> None:
        for task, key, value in (("image", "backbone.weights", self.backbone.weights),
                                 ("lm", "lm.weights", self.lm.weights)):
            if self.finetune.local_weights and task in self.finetune.tasks and not value:
                raise ValueError(f"finetune.local_weights = true (the paper presets) needs {key}=PATH: "
                                 f"see docs/finetune.md#your-own-weights")
        for task, steps, name in (("image", self.sgd.steps, "sgd.steps"), ("lm", self.lm_sgd.steps, "lm_sgd.steps")):
            if task in self.finetune.tasks and self.llc_schedule.every > steps:
                raise ValueError(f"llc_schedule.every = {self.llc_schedule.every} exceeds {name} = {steps}")
        if "image" in self.finetune.tasks:
            self.backbone.preflight()
        if "lm" in self.finetune.tasks:
            self.lm.preflight()


CONFIG = FinetuneConfig


# --------------------------------------------------------------------------- stage 2

def _features(pre: dict, device: str):
    import torch

    from ..data import Dataset

    t = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    y = lambda a: torch.as_tensor(a, dtype=torch.int64)  # noqa: E731
    return Dataset(t(pre["f_train"]), y(pre["y_train"]), t(pre["f_test"]), y(pre["y_test"]), "backbone features",
                   pre["n_classes"]).to(device)


def _origin_hook(every: int, origin: dict):
    """‖w_t − w_origin‖ per seed (origin = the head's initialization before Adam)."""
    import torch

    from ..engine import Hook

    def fn(state):
        o = torch.stack([origin[int(s)] for s in state.seeds]).to(state.w)
        return {"R_total": torch.linalg.vector_norm((state.w - o).double(), dim=1)}

    return Hook(every=every, fn=fn, name="origin")


def stage_finetune(ctx: StageContext) -> dict[str, Any]:
    from ..engine import EnsembleConfig, train_ensemble

    c = ctx.config
    data = _features(ctx["pretrain"], ctx.device)
    spe = data.n_train // c.adam.batch_size
    seeds = tuple(range(c.sgd.seeds))
    head = (data.n_features, data.n_classes)
    acfg = EnsembleConfig(widths=head, optimizer="adam", lr=c.adam.lr, weight_decay=c.adam.weight_decay,
                          batch_size=c.adam.batch_size, epochs=c.adam.max_epochs, seeds=seeds, device=ctx.device,
                          record_every=1, record_log_points=0, progress=False)
    hook, snaps = epoch_hook(spe, data)
    ares = train_ensemble(acfg, data=data, hooks=[hook])
    loss, stop_epoch, stop_step, w_stop = stop_weights(ares, snaps, seeds, spe, c.adam.tol, c.adam.patience)
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
    return {"seeds": np.asarray(seeds), "spe": int(spe), "adam_loss": loss, "stop_epoch": stop_epoch,
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
    from ..paper import load_table

    ft, c = ctx["finetune"], ctx.config
    runs, summary, fitted = phase_fits(ft["sgd_steps"], ft["sgd_R"], ft["llc"], ft["seeds"], c.llc_schedule.last,
                                       c.fit, c.analysis)
    trans = _transition(ft, c.fit.level)
    tests = phase_tests(fitted, c.fit.level, c.analysis, ("H1-finetune", "H2"), "the SGD phase after fine-tuning",
                        "Table 1: α ≈ 0.004, d_s ≪ λ")
    return {"runs": runs, "summary": summary, "transition": trans, "hypotheses": tests,
            "transition_coverage": float(np.mean([t["covers"] for t in trans])),
            "paper_table1": load_table(1).to_dict("records")}


def _skip_image(ctx):
    return None if "image" in ctx.config.finetune.tasks else "the image variant is not in finetune.tasks"


STAGES = [
    Stage("pretrain", stage_pretrain, "pretrain (or load) the CNN backbone and extract frozen features",
          skip=_skip_image),
    Stage("finetune", stage_finetune, "new heads: Adam until the loss stops improving, then SGD with LLC",
          skip=_skip_image),
    Stage("analysis", stage_analysis, "alpha, r2, d_s = 2 lambda alpha on the SGD phase; Adam->SGD transition",
          skip=_skip_image),
    *LM_STAGES,
]


def write_report(ctx: StageContext):
    from ..reporting.finetune import write_report as write

    return write(ctx)
