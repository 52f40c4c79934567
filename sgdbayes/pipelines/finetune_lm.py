"""The language-model variant of the finetune study (paper App G.3, Table 1's language rows, Table 4;
docs/finetune.md): continue training an already converged LM, λ̂ along the way, eq 17 on that phase.

Stages (skipped unless ``"lm"`` is in ``finetune.tasks``):

1. ``lm_pretrain``  the converged starting point: a :class:`sgdbayes.models.TinyTransformer` trained here
                    with Adam on generated modular-Fibonacci sequences (``sgdbayes.data`` ``sequences``)
                    until the full training loss improves by less than ``lm_pretrain.tol`` over
                    ``lm_pretrain.patience`` epochs (the image variant's rule), or a Hugging Face causal
                    LM read from ``lm.weights`` (a model folder) with its token file ``lm.tokens``
2. ``lm_continue``  ``lm_sgd.seeds`` continuations from that one point (the seeds choose the minibatch
                    orders), ``lm.optimizer`` (SGD, App G.3; Adam for Table 4) lr ``lm_sgd.lr``, batch
                    ``lm_sgd.batch_size``, ``lm_sgd.steps`` steps, one batched engine run with λ̂
                    (``[lm_llc]``) every ``llc_schedule.every`` steps
3. ``lm_analysis``  α, r², d_s = 2 λ α per seed (λ = mean of the last ``llc_schedule.last`` estimates)
                    and the tests ``H1-lm`` / ``H2-lm``, beside Table 1's language rows and Table 4
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .._validation import check_float, check_int, check_seed
from ..runner.orchestrate import Stage
from ..stats.summaries import summarize
from .finetune_common import phase_fits, phase_tests

__all__ = ["LMConfig", "load_tokens", "lm_model", "STAGES"]

KEY_W, KEY_T = "lm.weights", "lm.tokens"


@dataclass(frozen=True)
class LMConfig:
    """``[lm]``: the model and its data. ``weights = ""``: a TinyTransformer (``d_model``, ``n_heads``,
    ``n_layers``, ``d_ff``; init seed ``seed``) pretrained here on generated sequences (``vocab`` = the
    modulus p, ``length``, ``n`` training and ``n_test`` test sequences, ``data_seed``); else a Hugging
    Face model folder, and ``tokens`` a ``.npy`` / ``.npz`` (key ``tokens``) of token ids ``[n, T + 1]``
    of which a ``test_fraction`` is held out. ``optimizer``: of the continued phase."""

    weights: str = ""
    tokens: str = ""
    test_fraction: float = 0.2
    vocab: int = 7
    length: int = 16
    n: int = 1024
    n_test: int = 256
    data_seed: int = 0
    d_model: int = 32
    n_heads: int = 2
    n_layers: int = 1
    d_ff: int = 64
    seed: int = 0
    optimizer: Literal["sgd", "adam"] = "sgd"

    def __post_init__(self):
        check_float("test_fraction", self.test_fraction, 0.0, 1.0, strict_min=True, strict_max=True)
        for k, lo in (("vocab", 2), ("length", 2), ("n", 1), ("n_test", 1), ("d_model", 1), ("n_heads", 1),
                      ("n_layers", 1), ("d_ff", 1)):
            check_int(k, getattr(self, k), lo)
        check_seed(self.data_seed, "data_seed")
        check_seed(self.seed, "seed")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model = {self.d_model} must be a multiple of lm.n_heads = {self.n_heads}")

    def input_files(self) -> list:
        from ..models.pretrained import hf_folder_files

        return hf_folder_files(self.weights) + hf_folder_files(self.tokens)

    def preflight(self) -> None:
        """Read the model and the tokens once, so a wrong path or format stops the run before any stage."""
        if self.tokens and not self.weights:
            raise ValueError(f"{KEY_T} is set but {KEY_W} is not: a token file goes with a Hugging Face model "
                             f"folder (without one the study pretrains its own LM on generated sequences)")
        if self.weights:
            if not self.tokens:
                raise ValueError(f"{KEY_W} = {self.weights!r} needs {KEY_T}=PATH (a .npy/.npz of token ids "
                                 f"[n, T+1] from that model's tokenizer, the data training continues on)")
            _, vocab, max_len = lm_model(self)
            load_tokens(self.tokens, vocab, max_len, self.test_fraction, self.data_seed)


def load_tokens(path: str, vocab: int, max_len: int, test_fraction: float, seed: int):
    """Token ids ``[n, T + 1]`` from ``path`` as a next-token :class:`~sgdbayes.data.Dataset` (inputs
    ``[:, :-1]``, targets ``[:, 1:]``), a random ``test_fraction`` of the rows held out."""
    import torch

    from ..data import Dataset

    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"{KEY_T} = {path!r}: no such file")
    try:
        a = np.load(p, allow_pickle=False)
        if isinstance(a, np.lib.npyio.NpzFile):
            if "tokens" not in a.files:
                raise ValueError(f"no array 'tokens' (arrays: {a.files})")
            a = a["tokens"]
    except Exception as e:  # noqa: BLE001 - any unreadable file is the same user error
        raise ValueError(f"{KEY_T} = {path!r} is not a .npy/.npz of token ids: {e}") from None
    if a.ndim != 2 or a.shape[1] < 2 or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{KEY_T} = {path!r}: expected integer token ids [n, T+1] with T >= 1, got {a.dtype} "
                         f"{list(a.shape)}")
    if a.min() < 0 or a.max() >= vocab:
        raise ValueError(f"{KEY_T} = {path!r}: token ids span {a.min()}..{a.max()}, outside the model's "
                         f"vocabulary 0..{vocab - 1}")
    if a.shape[1] - 1 > max_len:
        raise ValueError(f"{KEY_T} = {path!r}: sequences of {a.shape[1] - 1} inputs exceed the model's "
                         f"{max_len} positions")
    perm = np.random.default_rng(seed).permutation(len(a))
    n_te = int(round(test_fraction * len(a)))
    if not 0 < n_te < len(a):
        raise ValueError(f"{KEY_T} = {path!r}: {len(a)} sequences leave no training or test rows at "
                         f"lm.test_fraction = {test_fraction}")
    t = torch.as_tensor(a.astype(np.int64))
    tr, te = t[perm[n_te:]], t[perm[:n_te]]
    return Dataset(tr[:, :-1], tr[:, 1:], te[:, :-1], te[:, 1:], f"tokens {p.name}", int(vocab),
                   {"source": str(p), "n": int(len(a)), "T": int(a.shape[1] - 1)})


def lm_model(c: LMConfig):
    """``(model family, vocabulary, positions)``: the HF model of ``lm.weights`` (as
    :class:`~sgdbayes.models.pretrained.CausalLMLogits` in a :class:`~sgdbayes.models.ModuleSpec`)
    or the built-in ``transformer`` family of ``[lm]``'s sizes."""
    from ..models import ModuleSpec, build_model
    from ..models.pretrained import CausalLMLogits, load_hf

    if not c.weights:
        return (build_model("transformer", vocab=c.vocab, d_model=c.d_model, n_heads=c.n_heads,
                            n_layers=c.n_layers, d_ff=c.d_ff, max_len=c.length), c.vocab, c.length)
    lm = CausalLMLogits(load_hf(c.weights, KEY_W, "causal-lm"))
    cfg = lm.lm.config
    vocab = int(getattr(cfg, "vocab_size"))
    max_len = int(getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None) or 1 << 30)
    return ModuleSpec(lambda: copy.deepcopy(lm)), vocab, max_len


def _data(c: LMConfig, vocab: int, max_len: int):
    from ..data import load_dataset

    if c.weights:
        return load_tokens(c.tokens, vocab, max_len, c.test_fraction, c.data_seed)
    return load_dataset("sequences", p=c.vocab, length=c.length, n=c.n, n_test=c.n_test, seed=c.data_seed)


def _skip(ctx):
    return None if "lm" in ctx.config.finetune.tasks else "the language-model variant is not in finetune.tasks"


def stage_lm_pretrain(ctx) -> dict[str, Any]:
    from ..engine import EnsembleConfig, train_ensemble
    from .finetune_common import epoch_hook, stop_weights

    c, a = ctx.config.lm, ctx.config.lm_pretrain
    spec, vocab, max_len = lm_model(c)
    data = _data(c, vocab, max_len)
    out: dict[str, Any] = {"n_params": int(spec.n_params), "n_train": int(data.n_train), "vocab": vocab,
                           "positions": int(data.y_train.shape[1])}
    if c.weights:
        w, _ = spec.initialize([0])
        ctx.log(f"    LM: {c.weights} ({spec.n_params} parameters), {data.n_train} training sequences")
        return {**out, "source": f"Hugging Face {type(spec.template.lm).__name__} from {c.weights}",
                "w_start": w[0].double().numpy()}
    spe = data.n_train // a.batch_size
    cfg = EnsembleConfig(model=spec, optimizer="adam", lr=a.lr, weight_decay=a.weight_decay, batch_size=a.batch_size,
                         epochs=a.max_epochs, seeds=(c.seed,), device=ctx.device, record_every=spe,
                         record_log_points=0, progress=False)
    hook, snaps = epoch_hook(spe, data)
    res = train_ensemble(cfg, data=data, hooks=[hook])
    loss, stop_epoch, _, w_stop = stop_weights(res, snaps, (c.seed,), spe, a.tol, a.patience)
    floor = float(np.log(c.vocab) / c.length)   # the first target is uniform, every later one determined
    e = int(stop_epoch[0])
    ctx.log(f"    LM pretrained here: Adam stopped at epoch {e}, loss {loss[0, e - 1]:.4f} (floor {floor:.4f})")
    return {**out, "source": "pretrained here", "w_start": w_stop[0].double().numpy(), "pretrain_loss": loss[0],
            "stop_epoch": e, "loss_at_stop": float(loss[0, e - 1]), "loss_floor": floor, "steps_per_epoch": int(spe)}


def stage_lm_continue(ctx) -> dict[str, Any]:
    import torch

    from ..engine import EnsembleConfig, train_ensemble
    from ._diffusion_common import llc_training_hook

    c, s, pre = ctx.config.lm, ctx.config.lm_sgd, ctx["lm_pretrain"]
    spec, vocab, max_len = lm_model(c)
    data = _data(c, vocab, max_len).to(ctx.device)
    seeds = tuple(range(s.seeds))
    _, state = spec.initialize(seeds, device=ctx.device)        # buffers (constants) of the model
    w = torch.as_tensor(pre["w_start"], dtype=torch.float32).to(ctx.device).repeat(len(seeds), 1)
    cfg = EnsembleConfig(model=spec, optimizer=c.optimizer, lr=s.lr, batch_size=s.batch_size, steps=s.steps,
                         seeds=seeds, device=ctx.device, record_every=s.record_every, record_log_points=0,
                         batch_stream=1, progress=False)
    res = train_ensemble(cfg, data=data, init=(w, state),
                         hooks=[llc_training_hook(ctx.config.lm_llc, ctx.config.llc_schedule.every)[0]])
    llc = res.hooks["llc"].pivot(index="seed", columns="step", values="llc").reindex(index=list(seeds))
    ctx.log(f"    {c.optimizer.upper()} {s.steps} steps x {len(seeds)} seeds; final train loss "
            f"{res.final['train_loss'].mean():.4f}")
    return {"seeds": np.asarray(seeds), "steps": np.asarray(res.steps), "R": np.asarray(res.displacement, float),
            "llc_steps": np.asarray(llc.columns), "llc": llc.to_numpy(float),
            "final_train_loss": res.final["train_loss"].to_numpy(float),
            "final_test_loss": res.final["test_loss"].to_numpy(float),
            "nbeta": float(ctx.config.lm_llc.resolve_nbeta(data.n_train))}


def stage_lm_analysis(ctx) -> dict[str, Any]:
    from ..paper import load_table

    ct, c, an = ctx["lm_continue"], ctx.config, ctx.config.analysis
    runs, summary, fitted = phase_fits(ct["steps"], ct["R"], ct["llc"], ct["seeds"], c.llc_schedule.last, c.fit, an)
    tests = phase_tests(fitted, c.fit.level, an, ("H1-lm", "H2-lm"), "continued training of a converged LM",
                        "Table 1, TinyStories rows: α 0.32–0.49")
    t1 = load_table(1)
    lm_rows = t1[~t1["model"].str.match(r"ResNet|VGG")]
    loss = {k: summarize(ct[f"final_{k}_loss"], c.fit.level, an.seed, n_boot=an.n_boot) for k in ("train", "test")}
    return {"runs": runs, "summary": summary, "hypotheses": tests, "final_loss": loss,
            "paper_table1_lm": lm_rows.to_dict("records"), "paper_table4": load_table(4).to_dict("records")}


STAGES = [Stage("lm_pretrain", stage_lm_pretrain, "the converged LM: pretrain a tiny transformer (or load one)",
                skip=_skip),
          Stage("lm_continue", stage_lm_continue, "continue training the converged LM with LLC", skip=_skip),
          Stage("lm_analysis", stage_lm_analysis, "alpha, r2, d_s = 2 lambda alpha of the continued phase",
                skip=_skip)]
