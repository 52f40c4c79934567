"""LightningTracker and HFTracker with real Trainers: the file they write is one analyze accepts,
and a run killed after a checkpoint resumes without duplicated or missing rows."""
from __future__ import annotations

import importlib
import os
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from sgdbayes.engine import record_grid
from sgdbayes.runs import read_runs
from sgdbayes.sampling import LLCConfig
from sgdbayes.track import read_track_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")
LLC = LLCConfig(step_size=1e-4, num_chains=2, num_draws=10, batch_size=32)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Killed(Exception):
    pass


def _expected_steps(total, every_llc, upto):
    return sorted({int(s) for s in record_grid(total, 10, 100) if s <= upto}
                  | {s for s in range(every_llc, upto + 1, every_llc)} | {upto})


# ------------------------------------------------------------------ Lightning
def _lightning_parts():
    pl = pytest.importorskip("lightning.pytorch")
    from torch.utils.data import DataLoader, TensorDataset

    from sgdbayes.data import load_dataset

    d = load_dataset("digits")
    x, y = d.x_train[:256].reshape(-1, 1, 8, 8), d.y_train[:256]

    class CNN(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                     nn.Flatten(), nn.Linear(4 * 64, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, i):
            xb, yb = batch
            return nn.functional.cross_entropy(self(xb), yb)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.05)

    class Killer(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            if trainer.global_step == 15:
                raise _Killed

    loader = lambda: DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)   # noqa: E731
    return pl, CNN, Killer, loader


def _trainer(pl, callbacks, max_steps, ckpt_dir=None):
    kw = dict(max_steps=max_steps, callbacks=callbacks, logger=False, enable_progress_bar=False,
              enable_model_summary=False, accelerator="cpu", devices=1)
    if ckpt_dir is None:
        kw["enable_checkpointing"] = False
    return pl.Trainer(**kw)


def test_lightning_trainer_writes_a_file_analyze_accepts(tmp_path):
    pl, CNN, _, loader = _lightning_parts()
    from sgdbayes.analyze import analyze_runs
    from sgdbayes.track import LightningTracker

    out = tmp_path / "runs.csv"
    torch.manual_seed(0)
    cb = LightningTracker(run="cnn", out=out, llc_every=8, llc=LLC, covariates={"arch": "cnn"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(pl, [cb], 24).fit(CNN(), loader())
    df = read_track_file(out)
    assert df["step"].tolist() == _expected_steps(24, 8, 24)
    assert df.set_index("step").loc[[8, 16, 24], "llc"].notna().all()
    row = df.iloc[0]
    assert (row["optimizer"], row["lr"], row["batch_size"], row["arch"]) == ("sgd", 0.05, 32, "cnn")
    assert row["n_params"] == sum(p.numel() for p in CNN().parameters())
    res = analyze_runs(read_runs(out), n_boot=19)
    assert res.runs["run"].tolist() == ["cnn"] and np.isfinite(res.runs["alpha"].iloc[0])


def test_lightning_killed_run_resumes_from_checkpoint(tmp_path):
    pl, CNN, Killer, loader = _lightning_parts()
    from lightning.pytorch.callbacks import ModelCheckpoint

    from sgdbayes.track import LightningTracker

    out, ck = tmp_path / "runs.parquet", tmp_path / "ckpt"
    torch.manual_seed(0)
    kw = dict(run="cnn", out=out, llc_every=5, llc=LLC)
    save = lambda: ModelCheckpoint(dirpath=ck, every_n_train_steps=6, save_top_k=-1)   # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(_Killed):
            _trainer(pl, [LightningTracker(**kw), save(), Killer()], 30, ck).fit(CNN(), loader())
        assert read_track_file(out)["step"].max() == 15             # rows flushed on the way down
        (path,) = ck.glob("*step=12*.ckpt")
        cb = LightningTracker(**kw)
        _trainer(pl, [cb, save()], 30, ck).fit(CNN(), loader(), ckpt_path=path)
    assert cb.tracker.snapshot_steps == [5, 10, 15, 20, 25, 30]
    df = read_track_file(out)
    assert df["step"].tolist() == _expected_steps(30, 5, 30)          # each step once, none missing
    assert df["llc"].notna().sum() == 6
    read_runs(out)


# ------------------------------------------------------------------ Hugging Face
def _hf_parts(tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    transformers.logging.set_verbosity_error()
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback

    torch.manual_seed(0)
    ids = torch.randint(0, 64, (48, 12))

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(ids)

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": ids[i]}

    def model():
        torch.manual_seed(1)
        cfg = GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0,
                         eos_token_id=0)
        return GPT2LMHeadModel(cfg)

    class Killer(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 10:
                raise _Killed

    return transformers, model, DS(), {"input_ids": ids, "labels": ids}, Killer


def _hf_args(transformers, out_dir, max_steps, save_steps=None):
    return transformers.TrainingArguments(
        output_dir=str(out_dir), max_steps=max_steps, per_device_train_batch_size=8, learning_rate=1e-3,
        logging_steps=1000, report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
        save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)


def test_hf_trainer_writes_a_file_analyze_accepts(tmp_path):
    transformers, model, ds, llc_data, _ = _hf_parts(tmp_path)
    from sgdbayes.analyze import analyze_runs
    from sgdbayes.track import HFTracker

    out = tmp_path / "runs.parquet"
    cb = HFTracker(run="007", out=out, data=llc_data, llc_every=4, llc=LLC)
    transformers.Trainer(model=model(), args=_hf_args(transformers, tmp_path / "o", 12), train_dataset=ds,
                         callbacks=[cb]).train()
    df = read_track_file(out)
    assert df["run"].unique().tolist() == ["007"]
    assert df["step"].tolist() == list(range(1, 13))
    assert df.set_index("step").loc[[4, 8, 12], "llc"].notna().all()
    assert (df["lr"].iloc[0], df["batch_size"].iloc[0]) == (1e-3, 8)
    assert df["n_params"].iloc[0] == sum(p.numel() for p in model().parameters())
    res = analyze_runs(read_runs(out), n_boot=19)
    assert res.runs["run"].tolist() == ["007"]


def test_hf_killed_run_resumes_from_checkpoint(tmp_path):
    transformers, model, ds, llc_data, Killer = _hf_parts(tmp_path)
    from sgdbayes.track import HFTracker

    out, od = tmp_path / "runs.csv", tmp_path / "o"
    kw = dict(run="lm", out=out, data=llc_data, llc_every=3, llc=LLC)
    args = _hf_args(transformers, od, 14, save_steps=4)
    with pytest.raises(_Killed):
        transformers.Trainer(model=model(), args=args, train_dataset=ds,
                             callbacks=[HFTracker(**kw), Killer()]).train()
    assert (od / "checkpoint-8" / "sgdbayes_tracker-lm.pt").exists()
    cb = HFTracker(**kw)
    transformers.Trainer(model=model(), args=args, train_dataset=ds,
                         callbacks=[cb]).train(resume_from_checkpoint=str(od / "checkpoint-8"))
    assert cb.tracker.snapshot_steps == [3, 6, 9, 12]
    df = read_track_file(out)
    assert df["step"].tolist() == list(range(1, 15))
    assert df["llc"].notna().sum() == 4
    read_runs(out)


def test_hf_tracker_needs_data_for_the_llc(tmp_path):
    pytest.importorskip("transformers")
    from sgdbayes.track import HFTracker

    with pytest.raises(ValueError, match="data="):
        HFTracker(run="x", out=tmp_path / "r.csv", llc_every=10)


@pytest.mark.parametrize("module, extra", [("sgdbayes.track.lightning", "lightning"), ("sgdbayes.track.hf", "hf")])
def test_missing_extra_gives_a_clear_message(monkeypatch, module, extra):
    blocked = {"lightning": ["lightning", "lightning.pytorch"], "hf": ["transformers"]}[extra]
    for name in blocked:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf'pip install "sgdbayes\[{extra}\]"'):
        importlib.import_module(module)


def _doc_example(k):
    from pathlib import Path
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "track.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    cmds = re.findall(r"python -m sgdbayes\.analyze (\S+) --out (\S+)", text)
    return blocks[k], cmds[k]


@pytest.mark.slow  # ~25-40 s each here: the examples' LLCs use the recommended settings
@pytest.mark.parametrize("k, needs", [(1, "lightning.pytorch"), (2, "transformers")])
def test_lightning_and_hf_examples_in_docs_run(tmp_path, monkeypatch, k, needs):
    pytest.importorskip(needs)
    from sgdbayes.analyze import main

    block, (runs, out) = _doc_example(k)
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(block, "docs/track.md", "exec"), {"__name__": "docs_example"})
    assert main([runs, "--out", out, "--n-boot", "19"]) == 0
    df = read_track_file(tmp_path / runs)
    assert df["llc"].notna().sum() >= 2
