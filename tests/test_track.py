"""sgdbayes.track: displacement, LLC snapshots, the runs file, resume, analyze on the output."""
from __future__ import annotations

import copy
import multiprocessing as mp
import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sgdbayes.engine import record_grid
from sgdbayes.runs import read_runs
from sgdbayes.sampling import LLCConfig, chain_seeds, estimate_llc
from sgdbayes.track import (Tracker, TrackGrid, ensemble_frame, read_track_file, snapshot_model_id,
                            write_ensemble, write_runs)

ROOT = Path(__file__).resolve().parents[1]
LLC = LLCConfig(step_size=1e-4, num_chains=2, num_draws=15, batch_size=32)


def _data(n=160, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return x, y


def _mlp(seed=0, d=5, h=12):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Linear(h, 2))


def _train(model, x, y, steps, tracker=None, start=0, opt=None, lr=0.1, on_step=None):
    """SGD whose minibatch at step t depends on t only (so a resumed run repeats it exactly)."""
    opt = opt if opt is not None else torch.optim.SGD(model.parameters(), lr=lr, momentum=0.5)
    for t in range(start + 1, steps + 1):
        idx = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(t))[:32]
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if tracker is not None:
            tracker.step()
        if on_step is not None:
            on_step(t, model, opt)
    return opt


def _flat(model, names=None):
    return torch.cat([p.detach().reshape(-1).double() for n, p in model.named_parameters()
                      if names is None or n in names])


# ------------------------------------------------------------------ displacement
@pytest.mark.parametrize("total_steps", [60, None])
def test_displacement_equals_independent_norm_on_the_grid(tmp_path, total_steps):
    x, y = _data()
    model = _mlp()
    w0 = _flat(model)
    ref = {}
    tr = Tracker(model, run="a", out=tmp_path / "runs.csv", total_steps=total_steps, record_every=7,
                 record_log_points=12)
    _train(model, x, y, 60, tr, on_step=lambda t, m, o: ref.__setitem__(t, float((_flat(m) - w0).norm())))
    df = tr.close()
    horizon = total_steps or 100_000
    grid = [int(s) for s in record_grid(horizon, 7, 12) if s <= 60]
    assert df["step"].tolist() == sorted(set(grid) | {60})          # the engine's grid + the last step
    got = read_track_file(tmp_path / "runs.csv").set_index("step")["displacement"]
    np.testing.assert_allclose(got.to_numpy(), [ref[s] for s in got.index], rtol=1e-6)
    assert (read_track_file(tmp_path / "runs.csv")["n_params"] == w0.numel()).all()


def test_params_subset_tracks_only_those(tmp_path):
    x, y = _data()
    model = _mlp()
    head = ["2.weight", "2.bias"]
    w0 = _flat(model, head)
    ref = {}
    tr = Tracker(model, run="head", out=tmp_path / "r.csv", params=["2"], total_steps=30)
    _train(model, x, y, 30, tr, on_step=lambda t, m, o: ref.__setitem__(t, float((_flat(m, head) - w0).norm())))
    df = tr.close()
    np.testing.assert_allclose(df["displacement"], [ref[s] for s in df["step"]], rtol=1e-6)
    assert df["n_params"].iloc[0] == 12 * 2 + 2
    tr2 = Tracker(_mlp(), run="p", out=tmp_path / "r2.csv", params=lambda n, p: n.endswith("bias"))
    assert tr2.names == ["0.bias", "2.bias"]


def test_grid_past_total_steps_and_unknown_horizon():
    g = TrackGrid(total_steps=50, every=10, log_points=5)
    assert {1, 50} <= {s for s in range(1, 51) if s in g}
    assert 60 in g and 65 not in g                       # past the horizon: every k steps
    u = TrackGrid(None, every=10, log_points=20)
    assert 1 in u and 30 in u and 250_000 in u


def test_divergence_recorded_and_file_stays_valid(tmp_path):
    x, y = _data()
    model = _mlp()

    def poison(t, m, o):
        if t == 23:
            with torch.no_grad():
                m[0].weight[0, 0] = float("nan")

    tr = Tracker(model, run="div", out=tmp_path / "r.csv", data=(x, y), llc_every=10, llc=LLC, total_steps=40)
    _train(model, x, y, 40, tr, on_step=poison)
    df = tr.close()
    assert tr.diverged_step == 24                       # poisoned after step 23 was recorded
    assert df["step"].max() == 23 and np.isfinite(df["displacement"]).all()
    assert tr.snapshot_steps == [10, 20]
    assert (df["diverged_step"] == 24).all()
    read_runs(tmp_path / "r.csv")                        # analyze accepts the file


# ------------------------------------------------------------------ LLC
def test_llc_snapshots_equal_estimate_llc_on_copies(tmp_path):
    x, y = _data()
    model = _mlp()
    copies = {}
    tr = Tracker(model, run="r1", out=tmp_path / "r.csv", data=(x, y), llc_every=10, llc=LLC, total_steps=40)
    _train(model, x, y, 40, tr, on_step=lambda t, m, o: copies.__setitem__(t, copy.deepcopy(m)) if t % 10 == 0
           else None)
    df = tr.close().set_index("step")
    assert tr.snapshot_steps == [10, 20, 30, 40]
    for t in tr.snapshot_steps:
        ref = estimate_llc([copies[t]], (x, y), config=LLC, model_ids=[snapshot_model_id("r1", t)])
        np.testing.assert_allclose(df.loc[t, "llc"], ref.llc[0], rtol=1e-5, atol=1e-7)
    assert df["llc"].notna().sum() == 4
    details = tr.llc_frame()
    assert details["step"].tolist() == [10, 20, 30, 40] and "llc_std" in details
    np.testing.assert_array_equal(details["llc"], df.loc[[10, 20, 30, 40], "llc"])
    # no two snapshots (of this run or another) share chain seeds
    ids = [snapshot_model_id(r, t) for r in ("r1", "r2") for t in (10, 20, 30, 40)]
    seeds = chain_seeds(LLC.seed, ids, LLC.num_chains)
    assert len(set(seeds)) == len(seeds)


def test_llc_of_a_snapshot_does_not_depend_on_the_other_snapshots(tmp_path):
    x, y = _data()
    out = {}
    for every in (10, 20):
        model = _mlp(seed=3)
        tr = Tracker(model, run="same", out=tmp_path / f"r{every}.csv", data=(x, y), llc_every=every, llc=LLC,
                     total_steps=40)
        _train(model, x, y, 40, tr)
        out[every] = tr.close().set_index("step")["llc"]
    np.testing.assert_allclose(out[10].loc[[20, 40]], out[20].loc[[20, 40]], rtol=1e-6)


def test_llc_over_a_head_with_frozen_body_equals_llc_of_the_head_alone(tmp_path):
    """Fine-tuning: params=None tracks the trainable head; SGLD moves only the head."""
    x, y = _data()
    torch.manual_seed(1)
    body = nn.Sequential(nn.Linear(5, 8), nn.ReLU())
    head = nn.Linear(8, 2)
    model = nn.Sequential(body, head)
    body.requires_grad_(False)
    tr = Tracker(model, run="ft", out=tmp_path / "r.csv", data=(x, y), llc_every=15, llc=LLC, total_steps=30)
    opt = torch.optim.SGD(head.parameters(), lr=0.1)
    heads = {}
    _train(model, x, y, 30, tr, opt=opt, on_step=lambda t, m, o: heads.__setitem__(t, copy.deepcopy(head)))
    assert tr.names == ["1.weight", "1.bias"]
    df = tr.close().set_index("step")
    with torch.no_grad():
        feats = body(x)
    for t in (15, 30):
        ref = estimate_llc([heads[t]], (feats, y), config=LLC, model_ids=[snapshot_model_id("ft", t)])
        np.testing.assert_allclose(df.loc[t, "llc"], ref.llc[0], rtol=1e-4, atol=1e-6)
    assert len(tr._pool) == 2                            # the frozen body is stored once, shared


def test_row_shards_of_snapshots_with_their_own_constants_equal_the_whole(tmp_path):
    """The snapshot potential split into row shards (as two threads run it): a shard that cuts
    through a snapshot's chains, or holds whole snapshots, evaluates every row with that
    snapshot's own untracked tensors (here a body that differs per snapshot), on its own module
    copy; the tracker on one torch thread (row shards) equals it on two (no shards)."""
    from sgdbayes.sampling import ModulePotential, sampling_data
    from sgdbayes.track import CriterionLoss

    x, y = _data()
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    body = {n: [p.detach() + 0.1 * k for k in range(3)] for n, p in model[0].named_parameters()}
    fixed = [{f"0.{n}": v[k] for n, v in body.items()} for k in range(3)]
    names = ["2.weight", "2.bias"]
    pot = ModulePotential.of_snapshots(model, names, [(2, 8), (2,)], fixed, sampling_data((x, y)), CriterionLoss())
    w = torch.randn(9, 18, generator=torch.Generator().manual_seed(0)) * 0.3     # 3 snapshots x 3 chains
    idx = torch.randint(0, len(x), (9, 16), generator=torch.Generator().manual_seed(1))
    full, full_b = pot(w, None), pot(w, idx)
    for a, b in ((0, 4), (4, 9), (3, 6), (0, 9)):
        part = pot.rows(a, b, 9)
        assert part._bound is not pot._bound                  # its own module copy
        torch.testing.assert_close(part(w[a:b], None), full[a:b])
        torch.testing.assert_close(part(w[a:b], idx[a:b]), full_b[a:b])
    # snapshot 1's rows by hand: body shifted by 0.1, head = the row
    with torch.no_grad():
        h = torch.relu(x @ (model[0].weight + 0.1).T + model[0].bias + 0.1)
        ref = nn.functional.cross_entropy(h @ w[4, :16].reshape(2, 8).T + w[4, 16:], y)
    torch.testing.assert_close(full[4], ref)

    # cache-sized row blocks on the CPU (whole snapshots, or chains of one snapshot) change nothing
    wd, xd = w.double(), (x.double(), y)
    potd = ModulePotential.of_snapshots(model.double(), names, [(2, 8), (2,)],
                                        [{k: v.double() for k, v in f.items()} for f in fixed], sampling_data(xd),
                                        CriterionLoss())
    whole = potd.loss_and_grad(wd, idx)
    eb = potd.example_bytes()
    assert eb == 8 * (8 + 8 + 2)                 # float64 outputs of Linear(5, 8), ReLU, Linear(8, 2)
    for rows, blocks in ((3, 3), (1, 9), (10**6, 1)):   # one snapshot, one row, no blocking
        potd.cpu_block_bytes = rows * 16 * eb
        assert len(potd._blocks(3, 16, wd.device)) == blocks
        got = potd.loss_and_grad(wd, idx)
        torch.testing.assert_close(got[0], whole[0], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got[1], whole[1], rtol=1e-12, atol=1e-14)

    out = {}
    cfg = LLCConfig(step_size=1e-4, num_chains=3, num_draws=10, batch_size=32)
    threads = torch.get_num_threads()
    for n_threads in (1, 2):
        torch.set_num_threads(n_threads)
        try:
            m = _mlp(seed=4)
            tr = Tracker(m, run="th", out=tmp_path / f"t{n_threads}.csv", data=(x, y), llc_every=10, llc=cfg,
                         total_steps=30, params=["2.weight", "2.bias"])
            _train(m, x, y, 30, tr)
            out[n_threads] = tr.close().set_index("step")["llc"].dropna()
        finally:
            torch.set_num_threads(threads)
    assert len(out[1]) == 3
    np.testing.assert_allclose(out[1], out[2], rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ file, resume
def test_resume_from_checkpoint_has_no_duplicate_or_missing_rows(tmp_path):
    x, y = _data()
    out = tmp_path / "runs.csv"
    # another run already in the file stays untouched
    write_runs(out, pd.DataFrame({"run": "other", "step": [1, 2, 3], "displacement": [0.1, 0.2, 0.3]}))
    kw = dict(run="res", out=out, data=(x, y), llc_every=10, llc=LLC, total_steps=80, record_every=5,
              record_log_points=10)
    # uninterrupted reference, to another file
    ref_model = _mlp(seed=7)
    ref = Tracker(ref_model, **{**kw, "out": tmp_path / "ref.csv"})
    _train(ref_model, x, y, 80, ref)
    ref_df = ref.close()
    # the run to be killed: checkpoint every 20 steps (tracker state with the model's), killed at step 47
    ckpt = tmp_path / "ckpt.pt"
    model = _mlp(seed=7)
    tr = Tracker(model, **kw)

    def save(t, m, o):
        if t % 20 == 0:
            torch.save({"model": m.state_dict(), "opt": o.state_dict(), "tracker": tr.state_dict(), "step": t}, ckpt)
            tr.flush()

    class Killed(Exception):
        pass

    def run_until_killed(t, m, o):
        save(t, m, o)
        if t == 47:
            raise Killed

    with pytest.raises(Killed):
        _train(model, x, y, 80, tr, on_step=run_until_killed)
    partial = read_track_file(out)
    assert partial[partial["run"] == "res"]["step"].max() == 40          # flushed at the step-40 checkpoint
    # resume: fresh objects, restored from the checkpoint
    state = torch.load(ckpt, weights_only=True)
    model = _mlp(seed=99)
    model.load_state_dict(state["model"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    opt.load_state_dict(state["opt"])
    tr = Tracker(model, **kw)
    tr.load_state_dict(state["tracker"])
    assert tr.last_step == 40 and tr.snapshot_steps == [10, 20, 30, 40]
    _train(model, x, y, 80, tr, start=state["step"], opt=opt)
    tr.close()
    df = read_track_file(out)
    res = df[df["run"] == "res"].reset_index(drop=True)
    assert not res.duplicated(["run", "step"]).any()
    assert res["step"].tolist() == ref_df["step"].tolist()
    np.testing.assert_allclose(res["displacement"], ref_df["displacement"], rtol=1e-6)
    np.testing.assert_allclose(res["llc"], ref_df["llc"], rtol=1e-5, atol=1e-7, equal_nan=True)
    assert df[df["run"] == "other"]["step"].tolist() == [1, 2, 3]
    read_runs(out)                                                      # no duplicate rows for analyze


def test_new_tracker_refuses_a_run_already_in_the_file(tmp_path):
    x, y = _data()
    out = tmp_path / "r.csv"
    model = _mlp()
    with Tracker(model, run="x", out=out) as tr:
        _train(model, x, y, 12, tr)
    tr2 = Tracker(_mlp(), run="x", out=out)
    with pytest.raises(ValueError, match="already in the file"):
        tr2.step()
    tr3 = Tracker(_mlp(), run="x", out=out, overwrite=True)
    tr3.step()
    tr3.close()
    assert read_track_file(out)["step"].tolist() == [1]


def test_killed_process_resumes_without_duplicates(tmp_path):
    """A training process is really killed (SIGKILL) at step 45, after its step-40 checkpoint had
    flushed rows; the run resumes here from that checkpoint; each (run, step) is then in the file once."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_track import _data, _mlp, _train, LLC
        from sgdbayes.track import Tracker
        torch.set_num_threads(1)
        out, ckpt = sys.argv[1], sys.argv[2]
        x, y = _data()
        model = _mlp(seed=5)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
        tr = Tracker(model, run="killed", out=out, data=(x, y), llc_every=20, llc=LLC, total_steps=60)
        def hook(t, m, o):
            if t % 20 == 0:
                torch.save({{"model": m.state_dict(), "opt": o.state_dict(), "tracker": tr.state_dict(),
                            "step": t}}, ckpt)
                tr.flush()
            if t == 45:
                tr.flush()          # rows past the checkpoint reach the file too
                os.kill(os.getpid(), signal.SIGKILL)
        _train(model, x, y, 60, tr, opt=opt, on_step=hook)
    """))
    out, ckpt = tmp_path / "runs.parquet", tmp_path / "ck.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, str(script), str(out), str(ckpt)], env=env, capture_output=True)
    assert p.returncode == -signal.SIGKILL, p.stderr.decode()[-2000:]
    assert read_track_file(out)["step"].max() == 45
    x, y = _data()
    model = _mlp(seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)
    st = torch.load(ckpt, weights_only=True)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["opt"])
    tr = Tracker(model, run="killed", out=out, data=(x, y), llc_every=20, llc=LLC, total_steps=60)
    tr.load_state_dict(st["tracker"])
    _train(model, x, y, 60, tr, start=st["step"], opt=opt)
    tr.close()
    df = read_track_file(out)
    expected = sorted({int(s) for s in record_grid(60, 10, 100)} | {20, 40, 60})
    assert df["step"].tolist() == expected
    assert df.set_index("step").loc[[20, 40, 60], "llc"].notna().all()


def _append_many(path, worker, n):
    for i in range(n):
        write_runs(path, pd.DataFrame({"run": f"w{worker}-{i}", "step": [1, 2], "displacement": [0.5, 1.0]}))


def test_concurrent_appends_never_lose_rows(tmp_path):
    out = tmp_path / "shared.parquet"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_append_many, args=(out, w, 8)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    df = read_track_file(out)
    assert len(df) == 3 * 8 * 2 and df["run"].nunique() == 24


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".tsv"])
def test_run_ids_are_text(tmp_path, suffix):
    out = tmp_path / f"r{suffix}"
    for run in ("007", "NA", "1e3"):
        write_runs(out, pd.DataFrame({"run": run, "step": [1, 2], "displacement": [0.1, 0.2], "lr": 0.1}))
    assert sorted(read_track_file(out)["run"].unique()) == ["007", "1e3", "NA"]
    write_runs(out, pd.DataFrame({"run": "007", "step": [1, 2, 3], "displacement": [0.1, 0.2, 0.3]}))
    df = read_track_file(out)
    assert len(df) == 7 and (df["run"] == "007").sum() == 3


def test_runs_with_different_covariates_share_a_file(tmp_path):
    out = tmp_path / "mix.parquet"
    write_runs(out, pd.DataFrame({"run": "a", "step": [1, 2], "displacement": [0.1, 0.2], "arch": "cnn"}))
    write_runs(out, pd.DataFrame({"run": "b", "step": [1, 2], "displacement": [0.1, 0.2], "lr": 0.1}))
    assert read_runs(out).covariate_names == ["arch", "lr"]
    with pytest.raises(ValueError, match="column 'arch' holds text in runs \\['a'\\] and numbers"):
        write_runs(out, pd.DataFrame({"run": "c", "step": [1], "displacement": [0.1], "arch": 3}))
    assert sorted(read_track_file(out)["run"].unique()) == ["a", "b"]     # nothing written


def test_state_dict_survives_torch_save_weights_only(tmp_path):
    x, y = _data()
    model = _mlp()
    tr = Tracker(model, run="s", out=tmp_path / "r.csv", data=(x, y), llc_every=5, llc=LLC)
    _train(model, x, y, 12, tr)
    torch.save(tr.state_dict(), tmp_path / "st.pt")
    tr2 = Tracker(model, run="s", out=tmp_path / "r.csv", data=(x, y), llc_every=5, llc=LLC)
    tr2.load_state_dict(torch.load(tmp_path / "st.pt", weights_only=True))
    pd.testing.assert_frame_equal(tr.frame(), tr2.frame())
    assert tr2.snapshot_steps == [5, 10]
    with pytest.raises(ValueError, match="'run'"):
        Tracker(model, run="other", out=tmp_path / "r.csv", data=(x, y), llc_every=5,
                llc=LLC).load_state_dict(tr.state_dict())
    with pytest.raises(ValueError, match="'names'"):
        Tracker(model, run="s", out=tmp_path / "r.csv", params=["0"]).load_state_dict(tr.state_dict())


def test_context_manager_writes_rows_when_the_loop_fails(tmp_path):
    x, y = _data()
    model = _mlp()
    with pytest.raises(RuntimeError, match="boom"):
        with Tracker(model, run="f", out=tmp_path / "r.csv", data=(x, y), llc_every=5, llc=LLC) as tr:
            _train(model, x, y, 8, tr)
            raise RuntimeError("boom")
    df = read_track_file(tmp_path / "r.csv")
    assert df["step"].max() == 8 and df["llc"].isna().all()   # rows kept, no LLC estimated


def test_bad_input_is_named(tmp_path):
    m = _mlp()
    with pytest.raises(ValueError, match="suffix"):
        Tracker(m, run="a", out=tmp_path / "r.txt")
    with pytest.raises(ValueError, match="'nope'"):
        Tracker(m, run="a", out=tmp_path / "r.csv", params=["nope"])
    with pytest.raises(ValueError, match="data="):
        Tracker(m, run="a", out=tmp_path / "r.csv", llc_every=10)
    with pytest.raises(ValueError, match="'llc'"):
        Tracker(m, run="a", out=tmp_path / "r.csv", covariates={"llc": 1})
    with pytest.raises(ValueError, match="covariates\\['opt'\\]"):
        Tracker(m, run="a", out=tmp_path / "r.csv", covariates={"opt": [1]})
    with pytest.raises(ValueError, match="run"):
        Tracker(m, run="", out=tmp_path / "r.csv")
    tr = Tracker(m, run="a", out=tmp_path / "r.csv")
    tr.step(5)
    with pytest.raises(ValueError, match="step"):
        tr.step(5)


# ------------------------------------------------------------------ analyze, ensemble, docs
def test_analyze_gives_the_same_alpha_as_a_hand_written_file(tmp_path):
    from sgdbayes.analyze import analyze_runs

    x, y = _data()
    out = tmp_path / "tracked.csv"
    for seed in (0, 1):
        model = _mlp(seed=seed)
        tr = Tracker(model, run=f"s{seed}", out=out, data=(x, y), llc_every=25, llc=LLC, total_steps=100,
                     covariates={"lr": 0.1, "optimizer": "sgd"})
        _train(model, x, y, 100, tr)
        tr.close()
    df = read_track_file(out)
    hand = tmp_path / "hand.csv"
    with open(hand, "w") as f:
        f.write("run,step,displacement,llc,lr,optimizer\n")
        for r in df.itertuples():
            llc = "" if np.isnan(r.llc) else repr(float(r.llc))
            f.write(f"{r.run},{int(r.step)},{float(r.displacement)!r},{llc},0.1,sgd\n")
    a1 = analyze_runs(read_runs(out), n_boot=49).runs       # what `python -m sgdbayes.analyze` fits
    a2 = analyze_runs(read_runs(hand), n_boot=49).runs
    for col in ("alpha", "alpha_lo", "alpha_hi", "llc", "d_s"):
        np.testing.assert_allclose(a1[col], a2[col], rtol=1e-10)
    assert a1["run"].tolist() == ["s0", "s1"]


def test_engine_ensemble_in_the_same_layout(tmp_path):
    from sgdbayes.engine import EnsembleConfig, train_ensemble
    from sgdbayes.sampling import LLCTrainingHook

    cfg = EnsembleConfig(dataset="moons", dataset_options=dict(n=128, n_test=16), widths=(None, 8, None),
                         seeds=(3, 4), steps=40, batch_size=32, lr=0.05, record_every=10, record_log_points=8,
                         progress=False)
    hook = LLCTrainingHook(LLCConfig(step_size=1e-4, num_chains=2, num_draws=10, batch_size=32), every=20)
    res = train_ensemble(cfg, hooks=[hook.as_engine_hook()])
    df = ensemble_frame(res, covariates={"study": "x"})
    x, y = _data()
    model = _mlp()
    tr = Tracker(model, run="t", out=tmp_path / "t.csv")
    _train(model, x, y, 3, tr)
    assert list(df.columns[:6]) == list(tr.frame().columns[:6])
    for i, seed in enumerate(res.seeds):
        g = df[df["run"] == f"seed{seed}"]
        np.testing.assert_allclose(g["displacement"], res.displacement[i])
        want = hook.to_frame().query("model_id == @seed").set_index("step")["llc"]
        np.testing.assert_allclose(g.set_index("step").loc[[20, 40], "llc"], want.loc[[20, 40]])
    path = write_ensemble(res, tmp_path / "ens.parquet")
    assert read_runs(path).covariates["seed"].tolist() == [3, 4]


def test_plain_loop_example_in_docs_runs(tmp_path, monkeypatch):
    text = (ROOT / "docs" / "track.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 22
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/track.md", "exec"), {})
    cmd = re.search(r"python -m sgdbayes\.analyze (\S+) --out (\S+)", text)
    from sgdbayes.analyze import main

    assert main([cmd.group(1), "--out", cmd.group(2), "--n-boot", "49"]) == 0
    assert (tmp_path / cmd.group(2) / "runs.csv").exists()


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: on this shared 2-core machine two OpenMP threads of a tiny model
    spin-wait on each other (10x slower runs seen); restored after each test."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
