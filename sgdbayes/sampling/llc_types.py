"""LLC settings and results (paper eq 25; docs/methods.md, "LLC").

Estimator (devinterp 1.x convention)::

    λ̂(w*) = nβ · ( mean over draws of L_B(w_draw) − L(w*) )

with draws from localized SGLD started at w* (:mod:`sgdbayes.sampling.sgld`), ``L_B`` the
minibatch mean loss at the pre-update weights of each draw step, ``L(w*)`` the full
training-set mean loss. nβ: ``"batch"`` → B / log B (devinterp 1.x ``default_nbeta``, what the
paper's numbers used), ``"n"`` → n / log n (the WBIC temperature), or a number; always stored.

Per model: λ̂ = mean over valid chains of the per-chain λ̂; chain std (ddof 1); diverged
chains are excluded and counted; a model with every chain diverged gets NaN **and**
``all_diverged=True``; a model skipped because its training diverged gets NaN and
``excluded=True``. Negative λ̂ are kept and flagged.

Checks (:mod:`sgdbayes.sampling.llc_checks`; docs/estimates.md#trend-check-per-chain): per chain
z-test of the second-half vs first-half mean draw loss
(:func:`sgdbayes.sampling.diagnostics.trend_test`); a model is ``trend_flag`` ged when any
chain's |z| exceeds the Bonferroni threshold for its C chains (``trend_z`` for one chain);
the Stouffer combination Σz/√C is kept as ``trend_z``. MALA acceptance
(:mod:`sgdbayes.sampling.mala`) per chain; ``mala_flag`` when a chain's mean acceptance is
further than ``mala_tol`` from ``mala_target``. :meth:`LLCResult.advice` names the setting to
change; :func:`sgdbayes.sampling.estimate_llc` warns with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional, Union

import numpy as np
import pandas as pd
from scipy import stats as _st

from .._validation import check_choice, check_float, check_int
from ..stats.results import Result, decode, estimate_row, register
from .chains import DrawSchedule
from .mala import MALA_BATCHES
from .sgld import SGLDConfig, default_nbeta

__all__ = ["LLCConfig", "LLCResult", "finalize", "model_ids_of"]


@register
@dataclass(frozen=True)
class LLCConfig:
    """Settings of an LLC estimate (validated on construction).

    step_size ε, localization γ, nbeta ("batch" | "n" | number), noise_level σ,
    weight_decay ω, batch_size B of SGLD minibatches (None = full batch; a DataLoader given as
    data supplies its own), num_chains, num_draws, num_burnin_steps, num_steps_bw_draws, seed
    (base of the per-chain seeds), trend_z (|z| threshold of the trend flag for one chain;
    Bonferroni-corrected for several), mala_transitions (transitions per chain whose MALA
    acceptance is measured, evenly spread over the draws; 0 = not measured), mala_target and
    mala_tol (a chain is flagged when its mean acceptance is further than mala_tol from
    mala_target), mala_batch (``"same"``: both ends of a measured transition on the minibatch
    the step used, the discretization error only; ``"devinterp"``: each end on its own step's
    minibatch, as devinterp 1.x, which adds minibatch noise; docs/estimates.md).

    Presets: :meth:`paper` (Table 3: ε 1e-5, γ 100, 1 chain, 400 draws, 0 burn-in, 1 step
    between draws; batch 128), :meth:`equilibrating` (ε 1e-4, γ 100 → relaxation time
    2/(εγ) = 200 steps; 1000 burn-in steps; 4 chains). The default is the paper's kernel with
    4 chains, so a chain std exists. Settings must be calibrated per model family.
    """

    step_size: float = 1e-5
    localization: float = 100.0
    nbeta: Union[float, str] = "batch"
    noise_level: float = 1.0
    weight_decay: float = 0.0
    batch_size: Optional[int] = 128
    num_chains: int = 4
    num_draws: int = 400
    num_burnin_steps: int = 0
    num_steps_bw_draws: int = 1
    seed: int = 0
    trend_z: float = 3.0
    mala_transitions: int = 50
    mala_target: float = 0.9
    mala_tol: float = 0.1
    mala_batch: str = "same"

    def __post_init__(self):
        check_float("step_size (epsilon)", self.step_size, 0.0, strict_min=True)
        check_float("localization (gamma)", self.localization, 0.0)
        check_float("noise_level", self.noise_level, 0.0, strict_min=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        check_float("trend_z", self.trend_z, 0.0, strict_min=True)
        object.__setattr__(self, "mala_transitions", check_int("mala_transitions", self.mala_transitions, 0))
        check_float("mala_target", self.mala_target, 0.0, 1.0, strict_min=True)
        check_float("mala_tol", self.mala_tol, 0.0, 1.0, strict_min=True)
        check_choice("mala_batch", self.mala_batch, MALA_BATCHES)
        if isinstance(self.nbeta, str):
            if self.nbeta not in ("batch", "n"):
                raise ValueError(f"nbeta must be 'batch' (B/log B), 'n' (n/log n) or a number > 0, got {self.nbeta!r}")
        else:
            check_float("nbeta", self.nbeta, 0.0, strict_min=True)
        if self.batch_size is not None:
            object.__setattr__(self, "batch_size", check_int("batch_size", self.batch_size, 1))
        object.__setattr__(self, "num_chains", check_int("num_chains", self.num_chains, 1))
        object.__setattr__(self, "seed", check_int("seed", self.seed, 0))
        DrawSchedule(self.num_draws, self.num_burnin_steps, self.num_steps_bw_draws)

    @classmethod
    def paper(cls, **overrides) -> "LLCConfig":
        base = dict(step_size=1e-5, localization=100.0, nbeta="batch", batch_size=128, num_chains=1,
                    num_draws=400, num_burnin_steps=0, num_steps_bw_draws=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def equilibrating(cls, **overrides) -> "LLCConfig":
        base = dict(step_size=1e-4, localization=100.0, nbeta="batch", batch_size=128, num_chains=4,
                    num_draws=400, num_burnin_steps=1000, num_steps_bw_draws=1)
        base.update(overrides)
        return cls(**base)

    @classmethod
    def from_dict(cls, d) -> "LLCConfig":
        fields = d["fields"] if "fields" in d else d
        return cls(**{k: decode(v) for k, v in fields.items()})

    def effective_batch(self, n: int) -> int:
        return n if self.batch_size is None else min(self.batch_size, n)

    def resolve_nbeta(self, n: int) -> float:
        """nβ as a number for training-set size n."""
        if self.nbeta == "batch":
            return default_nbeta(self.effective_batch(n))
        if self.nbeta == "n":
            return default_nbeta(n)
        return float(self.nbeta)

    def nbeta_rule(self) -> str:
        return {"batch": "B/log B", "n": "n/log n"}.get(self.nbeta, "fixed") if isinstance(self.nbeta, str) else "fixed"

    def kernel(self, n: int) -> SGLDConfig:
        return SGLDConfig(step_size=self.step_size, nbeta=self.resolve_nbeta(n), localization=self.localization,
                          weight_decay=self.weight_decay, noise_level=self.noise_level)

    @property
    def schedule(self) -> DrawSchedule:
        return DrawSchedule(self.num_draws, self.num_burnin_steps, self.num_steps_bw_draws)


@dataclass
class LLCResult(Result):
    """LLC estimates of K models (eq 25), with everything needed to audit them.

    ``llc [K]`` (mean over valid chains; NaN iff ``all_diverged`` or ``excluded``),
    ``llc_std [K]`` (chain std, ddof 1; NaN with < 2 valid chains), ``llc_se`` (Monte-Carlo
    standard error: chain std / √valid chains), ``llc_per_chain [K, C]``, ``loss_traces
    [K, C, D]`` (minibatch loss at each draw), ``init_loss [K]`` (full-data L(w*)), ``diverged
    [K, C]``, ``trend_z [K]`` (Stouffer), ``trend_z_chain [K, C]``, ``trend_rel [K]`` (drift in
    λ units over |λ̂|), ``mala_chain [K, C]`` (mean MALA acceptance of each chain; NaN when not
    measured), ``excluded [K]`` (skipped: the model's training diverged), ``mode`` (train/eval
    mode the models were evaluated in). Intervals (:meth:`conf_int`) are normal: λ̂ ± z·se over
    chains.
    """

    model_ids: np.ndarray
    llc: np.ndarray
    llc_std: np.ndarray
    llc_per_chain: np.ndarray
    loss_traces: np.ndarray
    init_loss: np.ndarray
    diverged: np.ndarray
    trend_z: np.ndarray
    trend_rel: np.ndarray
    nbeta: float
    n_train: int
    config: LLCConfig
    backend: str = "batched"
    wall_s: float = float("nan")
    excluded: Optional[np.ndarray] = None
    mode: str = "n/a"
    trend_z_chain: Optional[np.ndarray] = None
    mala_chain: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.excluded is None:
            self.excluded = np.zeros(len(self.llc), dtype=bool)
        shape = self.llc_per_chain.shape
        if self.trend_z_chain is None:
            self.trend_z_chain = np.full(shape, np.nan)
        if self.mala_chain is None:
            self.mala_chain = np.full(shape, np.nan)

    @property
    def n_models(self) -> int:
        return int(self.llc.shape[0])

    @property
    def n_valid_chains(self) -> np.ndarray:
        return (~self.diverged).sum(axis=1)

    @property
    def n_diverged(self) -> np.ndarray:
        return self.diverged.sum(axis=1)

    @property
    def all_diverged(self) -> np.ndarray:
        return (self.n_valid_chains == 0) & ~self.excluded

    @property
    def negative(self) -> np.ndarray:
        return np.isfinite(self.llc) & (self.llc < 0)

    @property
    def trend_threshold(self) -> float:
        """|z| a single chain must exceed: ``trend_z`` Bonferroni-corrected for the C chains."""
        from .llc_checks import bonferroni_z

        return bonferroni_z(self.config.trend_z, self.llc_per_chain.shape[1])

    @property
    def trend_flag_chain(self) -> np.ndarray:
        """``[K, C]``: the chain's |z| exceeds :attr:`trend_threshold`."""
        z = self.trend_z_chain
        return np.isfinite(z) & (np.abs(z) > self.trend_threshold)

    @property
    def trend_flag(self) -> np.ndarray:
        """``[K]``: some chain of the model drifts (:attr:`trend_flag_chain`); chains drifting in
        opposite directions do not cancel."""
        return self.trend_flag_chain.any(axis=1)

    @property
    def mala_accept(self) -> np.ndarray:
        """``[K]`` mean over valid chains of the chains' mean MALA acceptance."""
        out = np.full(self.n_models, np.nan)
        m = np.where(self.diverged, np.nan, self.mala_chain)
        ok = np.isfinite(m).any(axis=1)
        out[ok] = np.nanmean(m[ok], axis=1)
        return out

    @property
    def mala_flag_chain(self) -> np.ndarray:
        """``[K, C]``: the chain's mean acceptance is further than ``mala_tol`` from ``mala_target``."""
        m = self.mala_chain
        return np.isfinite(m) & (np.abs(m - self.config.mala_target) > self.config.mala_tol)

    @property
    def mala_flag(self) -> np.ndarray:
        return self.mala_flag_chain.any(axis=1)

    def advice(self) -> list[str]:
        """One sentence per problem found, naming the setting to change (empty when none)."""
        from .llc_checks import advice

        return advice(self)

    @property
    def llc_se(self) -> np.ndarray:
        """Monte-Carlo standard error over chains: chain std / sqrt(valid chains)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.llc_std / np.sqrt(self.n_valid_chains)

    @property
    def mean_draw_loss(self) -> np.ndarray:
        t = np.where(self.diverged[:, :, None], np.nan, self.loss_traces)
        out = np.full(self.n_models, np.nan)
        ok = self.n_valid_chains > 0
        with np.errstate(invalid="ignore"):
            out[ok] = np.nanmean(t[ok].reshape(ok.sum(), -1), axis=1)
        return out

    def _estimate_rows(self, level: float) -> list[dict]:
        z = float(_st.norm.ppf(0.5 + level / 2))
        se = self.llc_se
        return [estimate_row(f"llc[{int(m)}]", v, s, v - z * s, v + z * s)
                for m, v, s in zip(self.model_ids, self.llc, se)]

    def settings(self) -> dict:
        d = asdict(self.config)
        d.update(nbeta_value=self.nbeta, nbeta_rule=self.config.nbeta_rule(), n_train=self.n_train,
                 sgld_batch=self.config.effective_batch(self.n_train), backend=self.backend, mode=self.mode)
        return d

    def to_frame(self, per_chain: bool = False, level: float = 0.95) -> pd.DataFrame:
        """One row per model (or per model x chain with ``per_chain=True``); ``llc_ci_low`` /
        ``llc_ci_high`` at coverage ``level``."""
        if per_chain:
            K, C = self.llc_per_chain.shape
            return pd.DataFrame({
                "model_id": np.repeat(self.model_ids, C), "chain": np.tile(np.arange(C), K),
                "llc": self.llc_per_chain.ravel(), "diverged": self.diverged.ravel(),
                "mean_draw_loss": self.loss_traces.mean(axis=2).ravel(),
                "trend_z": self.trend_z_chain.ravel(), "trend_flag": self.trend_flag_chain.ravel(),
                "mala_accept": self.mala_chain.ravel(), "mala_flag": self.mala_flag_chain.ravel(),
            })
        ci = self.conf_int(level)
        return pd.DataFrame({
            "model_id": self.model_ids, "llc": self.llc, "llc_std": self.llc_std, "llc_se": self.llc_se,
            "llc_ci_low": ci["ci_low"].to_numpy(), "llc_ci_high": ci["ci_high"].to_numpy(),
            "n_chains_valid": self.n_valid_chains, "n_diverged": self.n_diverged,
            "all_diverged": self.all_diverged, "excluded": self.excluded, "negative": self.negative,
            "trend_z": self.trend_z, "trend_z_max": _max_abs(self.trend_z_chain), "trend_rel": self.trend_rel,
            "trend_flag": self.trend_flag, "mala_accept": self.mala_accept, "mala_flag": self.mala_flag,
            "init_loss": self.init_loss, "mean_draw_loss": self.mean_draw_loss,
            "nbeta": np.full(self.n_models, self.nbeta),
        })

    def summary(self, max_rows: int = 20) -> str:
        from .llc_summary import llc_summary

        return llc_summary(self, max_rows)

    def __repr__(self) -> str:  # keep repr short; summary() is the table
        return (f"LLCResult(models={self.n_models}, chains={self.llc_per_chain.shape[1]}, "
                f"nbeta={self.nbeta:.4g}, backend={self.backend!r})")


def finalize(model_ids, losses: np.ndarray, init_loss: np.ndarray, diverged: np.ndarray, nbeta: float,
             n_train: int, config: LLCConfig, backend: str, wall_s: float, mode: str = "n/a",
             mala: Optional[np.ndarray] = None) -> LLCResult:
    """Turn draw-loss traces ``[K, C, D]`` (and MALA acceptances ``[K, C, D]``, NaN where not
    measured) into an :class:`LLCResult` (shared by both backends)."""
    from .llc_checks import chain_trends

    losses = np.asarray(losses, dtype=np.float64)
    init_loss = np.asarray(init_loss, dtype=np.float64)
    diverged = np.asarray(diverged, dtype=bool) | ~np.isfinite(losses).all(axis=2)
    K, C, D = losses.shape
    per_chain = np.where(diverged, np.nan, nbeta * (losses.mean(axis=2) - init_loss[:, None]))
    n_valid = (~diverged).sum(axis=1)
    llc, std = np.full(K, np.nan), np.full(K, np.nan)
    ok, ok2 = n_valid > 0, n_valid > 1
    with np.errstate(invalid="ignore"):
        llc[ok] = np.nanmean(per_chain[ok], axis=1)
        std[ok2] = np.nanstd(per_chain[ok2], axis=1, ddof=1)
    z_chain, diff_chain = chain_trends(losses, diverged)
    trend_z, trend_rel = np.full(K, np.nan), np.full(K, np.nan)
    fin = np.isfinite(z_chain)
    for k in np.flatnonzero(fin.any(axis=1)):
        trend_z[k] = float(z_chain[k, fin[k]].sum() / np.sqrt(fin[k].sum()))
        with np.errstate(divide="ignore", invalid="ignore"):
            d = nbeta * float(diff_chain[k, fin[k]].mean())
            trend_rel[k] = d / abs(llc[k]) if llc[k] != 0 else np.inf
    mala_chain = np.full((K, C), np.nan)
    if mala is not None:
        m = np.asarray(mala, dtype=np.float64)
        has = np.isfinite(m).any(axis=2) & ~diverged
        with np.errstate(invalid="ignore"):
            mala_chain[has] = np.nanmean(m[has], axis=1)
    return LLCResult(model_ids=np.asarray(model_ids), llc=llc, llc_std=std, llc_per_chain=per_chain,
                     loss_traces=losses, init_loss=init_loss, diverged=diverged, trend_z=trend_z,
                     trend_rel=trend_rel, nbeta=float(nbeta), n_train=int(n_train), config=config,
                     backend=backend, wall_s=float(wall_s), mode=mode, trend_z_chain=z_chain,
                     mala_chain=mala_chain)


def _max_abs(z: np.ndarray) -> np.ndarray:
    """Per row, the entry of largest |z| (signed; NaN when none is finite)."""
    out = np.full(z.shape[0], np.nan)
    a = np.where(np.isfinite(z), np.abs(z), -1.0)
    ok = a.max(axis=1) >= 0
    out[ok] = z[ok, a[ok].argmax(axis=1)]
    return out


def model_ids_of(model_ids, K: int) -> list[int]:
    if model_ids is None:
        return list(range(K))
    ids = [int(m) for m in model_ids]
    if len(ids) != K:
        raise ValueError(f"model_ids has {len(ids)} entries but there are {K} models")
    if any(m < 0 for m in ids):
        raise ValueError("model_ids must be non-negative integers")
    return ids
