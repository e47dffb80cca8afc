"""`fastattr audit` end to end: default run, data and model loading paths,
bad input, resume after SIGKILL, torchrun with two processes."""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from fastattr.cli import main
from fastattr.cli.audit import check_model_fits
from fastattr.cli.data import load_dataset
from fastattr.cli.measures import BatchContext, available_groups, metric_names
from fastattr.cli.methods import METHOD_SETTINGS, explain, explainer_for, make_context
from fastattr.cli.options import resolve

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--methods", "saliency,smoothgrad", "--metrics", "max_sensitivity,infidelity,pgd_accuracy"]

FACTORY = '''
import torch
from torch import nn

def cnn(in_channels=1, classes=10):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, classes))

def rgb():
    return cnn(3, 2)

def mlp():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))

def batchnorm_cnn():
    """BatchNorm in eval mode: a 0-d integer buffer (num_batches_tracked)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * 8 * 8, 10)).eval()
'''


@pytest.fixture(scope="session")
def env(tmp_path_factory):
    """A cache dir for the default model and a folder with the test's model factories and data."""
    root = tmp_path_factory.mktemp("audit")
    (root / "audit_models.py").write_text(FACTORY)
    x = load_dataset(None, 24).x
    y = load_dataset(None, 24).y
    np.savez(root / "digits.npz", x=x, y=y)
    old = dict(os.environ)
    os.environ["FASTATTR_CACHE_DIR"] = str(root / "cache")
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))
    os.environ.clear()
    os.environ.update(old)


def audit(*args, cwd=None):
    """Run the CLI in this process; (exit status, stderr text)."""
    return main(["audit", "--quiet", *map(str, args)])


def read(out):
    frame = pd.read_parquet(os.path.join(out, "results.parquet"))
    with open(os.path.join(out, "summary.json")) as f:
        return frame, json.load(f)


def snapshot(folder):
    """Every file under ``folder`` -> (bytes, mtime_ns, inode)."""
    result = {}
    for root, _, files in os.walk(folder):
        for name in files:
            p = os.path.join(root, name)
            st = os.stat(p)
            with open(p, "rb") as f:
                result[os.path.relpath(p, folder)] = (f.read(), st.st_mtime_ns, st.st_ino)
    return result


def test_default_run_end_to_end(env, tmp_path):
    out = tmp_path / "out"
    assert audit("--limit", 8, "--batch-size", 4, "--out", out) == 0
    frame, summary = read(out)
    names = metric_names(available_groups(), defaults_only=True)
    methods = summary["configuration"]["methods"]
    assert len(frame) == 8 * len(methods) and len(methods) >= 5
    assert list(frame["index"][:len(methods)]) == [0] * len(methods)
    assert set(names) <= set(frame.columns) and {"label", "pred", "correct", "method"} <= set(frame.columns)
    csv = pd.read_csv(out / "results.csv")
    pd.testing.assert_frame_equal(csv, frame, check_dtype=False)
    for m in methods:
        for name in summary["methods"][m]:
            s = summary["methods"][m][name]
            vals = frame.loc[frame["method"] == m, name].to_numpy()
            vals = vals[np.isfinite(vals)]
            if not len(vals):  # a measure the method does not have (explanation_error of saliency)
                assert s["mean"] is None and s["median"] is None
                continue
            assert s["mean"] == pytest.approx(vals.mean()) and s["median"] == pytest.approx(np.median(vals))
            assert s["p5"] <= s["median"] <= s["p95"]
    assert set(summary["accuracy"]) >= {"clean", "fgsm", "pgd"}
    assert summary["accuracy"]["clean"] == pytest.approx(frame["correct"].mean())
    assert summary["seed"] == 0 and summary["versions"]["torch"] == torch.__version__
    assert summary["command"]["limit"] == 8
    assert "deletion_auc" not in names or summary["mean_curves"]["deletion"]
    page = (out / "report.html").read_text()
    assert page.count("<img") >= 3 and "data:image/png;base64," in page and "http" not in page


def test_default_model_is_deterministic_and_accurate(env):
    from fastattr.cli.default_model import train_digits_cnn
    from fastattr.cli.models import load_model, state_hash

    cached, identity = load_model(None, None, False)
    assert identity["sha256"] == state_hash(train_digits_cnn())
    data = load_dataset(None, None)
    with torch.no_grad():
        acc = (cached(torch.from_numpy(data.x)).argmax(1).numpy() == data.y).mean()
    assert acc > 0.9


def test_metric_list_is_what_is_installed(env, capsys):
    assert main(["audit", "--metrics", "list"]) == 0
    listing = capsys.readouterr().out
    groups = available_groups()
    named = {m for line in listing.splitlines() if not line.startswith(" ")
             for m in line.split(":", 1)[1].replace(",", " ").split()}
    assert named == set(metric_names(groups))
    for g in groups:
        for s in g.settings(64):
            assert f"{g.name}.{s.name} = " in listing


def test_shared_perturbation_pass_equals_each_metric(env):
    from fastattr.metrics import sensitivity, stability

    model = __import__("audit_models").cnn()
    x = torch.from_numpy(load_dataset(None, 6).x)
    pred = model(x).argmax(1)
    settings = resolve(METHOD_SETTINGS, {}, "--method-option")
    context = make_context(model, x, 3, settings, torch.device("cpu"))
    ctx = BatchContext(model, x, pred, pred, 5, 3, None, {"sensitivity": {"radius": 0.05, "n_samples": 10}},
                       lambda m: explainer_for(m, x, 3, None, settings[m], context))
    group = next(g for g in available_groups() if "max_sensitivity" in g.metrics)
    for method in ("saliency", "guided_backprop"):
        a = explain(method, model, x, pred, 3, 0, None, settings[method], context)
        got = group.compute(ctx, method, a).columns
        explainer, options = explainer_for(method, x, 3, None, settings[method], context)
        kw = dict(radius=0.05, n_samples=10, seed=3, attributions=a, example_offset=5, explainer_kwargs=options)
        assert torch.equal(got["max_sensitivity"], sensitivity.max_sensitivity(model, x, pred, explainer, **kw))
        assert torch.equal(got["avg_sensitivity"], sensitivity.avg_sensitivity(model, x, pred, explainer, **kw))
        if "relative_input_stability" in got:
            assert torch.equal(got["relative_input_stability"],
                               stability.relative_input_stability(model, x, pred, explainer, **kw))


def test_results_do_not_depend_on_shards_or_memory_budget(env, tmp_path):
    common = ["--model", "audit_models:cnn", "--data", env / "digits.npz", "--batch-size", 4, *SMALL]
    assert audit(*common, "--shard-batches", 3, "--out", tmp_path / "a") == 0
    assert audit(*common, "--shard-batches", 1, "--out", tmp_path / "b") == 0
    assert audit(*common, "--memory-budget", 4096, "--out", tmp_path / "c") == 0
    a, b, c = (read(tmp_path / k)[0] for k in "abc")
    pd.testing.assert_frame_equal(a, b)
    # smoothgrad's perturbed explanations are keyed by their row in the metric's
    # chunk (no row offset reaches the explainer yet): equal for the deterministic method only
    pd.testing.assert_frame_equal(a[a["method"] == "saliency"], c[c["method"] == "saliency"])
    keyed_columns = ["index", "method", "label", "pred", "infidelity", "pgd_accuracy"]
    pd.testing.assert_frame_equal(a[keyed_columns], c[keyed_columns])


def test_npz_factory_and_weights(env, tmp_path):
    model = __import__("audit_models").cnn()
    with torch.no_grad():
        model[-1].bias.add_(1.0)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert audit("--model", "audit_models:cnn", "--weights", tmp_path / "w.pt", "--data", env / "digits.npz",
                 "--limit", 6, *SMALL, "--out", tmp_path / "o") == 0
    frame, summary = read(tmp_path / "o")
    x = torch.from_numpy(np.load(env / "digits.npz")["x"][frame["source_index"].unique()])
    with torch.no_grad():
        assert frame.loc[frame["method"] == "saliency", "pred"].tolist() == model(x).argmax(1).tolist()
    assert summary["configuration"]["model"]["kind"] == "factory"


def test_without_the_audit_extra_it_says_so_before_any_work(env, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    assert audit("--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "pip install 'fastattr[audit]'" in err and "missing: pyarrow" in err
    assert not (tmp_path / "o").exists()


def test_batchnorm_model_from_a_factory(env, tmp_path):
    """Any model with BatchNorm carries 0-d buffers; the model's identity hash
    reads them (it crashed viewing them as bytes) and tells states apart."""
    from fastattr.cli.models import state_hash

    model = __import__("audit_models").batchnorm_cnn()
    before = state_hash(model)
    assert before == state_hash(__import__("audit_models").batchnorm_cnn())
    model[1].num_batches_tracked.add_(1)
    assert state_hash(model) != before
    assert audit("--model", "audit_models:batchnorm_cnn", "--data", env / "digits.npz", "--limit", 4, *SMALL,
                 "--out", tmp_path / "o") == 0
    _, summary = read(tmp_path / "o")
    assert summary["configuration"]["model"]["sha256"] == before


def test_image_folder(env, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / cls / f"{i}.png")
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("not an image")
    assert audit("--model", "audit_models:rgb", "--data", tmp_path / "imgs", *SMALL, "--out", tmp_path / "o") == 0
    frame, _ = read(tmp_path / "o")
    assert frame["label"].tolist()[::2] == [0, 0, 0, 1, 1, 1]


@pytest.fixture(scope="module")
def model_files(env, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    model = __import__("audit_models").cnn().eval()
    x = torch.from_numpy(load_dataset(None, 2).x)
    torch.jit.save(torch.jit.trace(model, x), d / "m.ts")
    batch = torch.export.Dim("batch", min=1, max=1024)
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=({0: batch},)), d / "m.pt2")
    torch.save(model, d / "pickled.pt")
    torch.save(model.state_dict(), d / "state.pt")
    return d, model


@pytest.mark.parametrize("name,kind", [("m.ts", "torchscript"), ("m.pt2", "torch.export")])
def test_model_files(env, model_files, tmp_path, name, kind):
    d, model = model_files
    assert audit("--model", d / name, "--data", env / "digits.npz", "--limit", 4,
                 "--methods", "saliency", "--metrics", "max_sensitivity", "--out", tmp_path / "o") == 0
    frame, summary = read(tmp_path / "o")
    assert summary["configuration"]["model"]["kind"] == kind
    ref_dir = tmp_path / "ref"
    assert audit("--model", "audit_models:cnn", "--data", env / "digits.npz", "--limit", 4,
                 "--methods", "saliency", "--metrics", "max_sensitivity", "--out", ref_dir) == 0
    ref, _ = read(ref_dir)
    np.testing.assert_allclose(frame["max_sensitivity"], ref["max_sensitivity"], rtol=1e-5, atol=1e-7)


def test_pickled_model_refused_unless_trusted(env, model_files, tmp_path, capsys):
    d, _ = model_files
    args = ["--model", d / "pickled.pt", "--data", env / "digits.npz", "--limit", 4,
            "--methods", "saliency", "--metrics", "max_sensitivity"]
    assert audit(*args, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "--model" in err and "pickled" in err and "--trust-pickle" in err and "runs code" in err
    assert not (tmp_path / "o").exists()
    assert audit(*args, "--trust-pickle", "--out", tmp_path / "o") == 0
    assert audit("--model", d / "state.pt", *args[2:], "--out", tmp_path / "p") == 2
    assert "state_dict" in capsys.readouterr().err


def _bad(tmp_path, capsys, *args):
    assert audit(*args) == 2
    return capsys.readouterr().err


def test_bad_input_messages(env, model_files, tmp_path, capsys):
    npz = env / "digits.npz"
    x, y = np.load(npz)["x"], np.load(npz)["y"]
    o = ["--out", tmp_path / "o"]
    assert "--data" in (e := _bad(tmp_path, capsys, "--data", tmp_path / "missing.npz", *o)) and "no such" in e
    assert "--model" in (e := _bad(tmp_path, capsys, "--model", tmp_path / "missing.pt", *o)) and "no such" in e
    assert "--model" in _bad(tmp_path, capsys, "--model", "no_such_module_xyz:f", *o)
    e = _bad(tmp_path, capsys, "--model", "audit_models:cnn", "--weights", tmp_path / "nope.pt", "--data", npz, *o)
    assert "--weights" in e and "no such" in e
    # labels the model has no class for
    np.savez(tmp_path / "labels.npz", x=x, y=y + 5)
    e = _bad(tmp_path, capsys, "--model", "audit_models:cnn", "--data", tmp_path / "labels.npz", *o)
    assert "--model" in e and "does not fit the labels" in e
    # wrong shape for the model
    np.savez(tmp_path / "flat.npz", x=x.reshape(len(x), -1), y=y)
    e = _bad(tmp_path, capsys, "--model", "audit_models:cnn", "--data", tmp_path / "flat.npz", *o)
    assert "--data" in e and "[64]" in e
    # wrong dtypes
    np.savez(tmp_path / "ints.npz", x=x.astype(np.int32), y=y)
    assert "dtype int32" in _bad(tmp_path, capsys, "--data", tmp_path / "ints.npz", *o)
    np.savez(tmp_path / "floaty.npz", x=x, y=y.astype(np.float32))
    assert "integer labels" in _bad(tmp_path, capsys, "--data", tmp_path / "floaty.npz", *o)
    np.savez(tmp_path / "short.npz", x=x, y=y[:3])
    assert "3 labels" in _bad(tmp_path, capsys, "--data", tmp_path / "short.npz", *o)
    np.savez(tmp_path / "nox.npz", y=y)
    assert "missing array" in _bad(tmp_path, capsys, "--data", tmp_path / "nox.npz", *o)
    # unknown names, bad numbers
    assert "--methods" in _bad(tmp_path, capsys, "--methods", "saliency,bogus", *o)
    assert "--metrics" in _bad(tmp_path, capsys, "--metrics", "bogus", *o)
    # a method named explicitly that cannot explain the model: refused with the library's reason
    e = _bad(tmp_path, capsys, "--model", "audit_models:mlp", "--data", npz, "--methods", "saliency,grad_cam", *o)
    assert "--methods: grad_cam" in e and "4-D output" in e
    e = _bad(tmp_path, capsys, "--method-option", "integrated_gradients.steps=3", *o)
    assert "--method-option" in e and "n_steps (default 16)" in e
    assert "--metric-option" in _bad(tmp_path, capsys, "--metric-option", "sensitivity.n_samples=0", *o)
    (tmp_path / "bad.toml").write_text("[plots]\nx = 1\n")
    assert "--config" in _bad(tmp_path, capsys, "--config", tmp_path / "bad.toml", *o)
    with pytest.raises(SystemExit):
        main(["audit", "--batch-size", "0"])
    assert "--batch-size" in capsys.readouterr().err
    # unwritable --out: a path below a regular file
    (tmp_path / "file").write_text("x")
    e = _bad(tmp_path, capsys, "--model", "audit_models:cnn", "--data", npz, "--out", tmp_path / "file" / "sub")
    assert "--out" in e and "cannot write" in e
    assert not (tmp_path / "o").exists()  # nothing was started


def test_out_of_another_configuration_is_refused_untouched(env, tmp_path, capsys):
    args = ["--model", "audit_models:cnn", "--data", env / "digits.npz", "--limit", 8, "--batch-size", 4, *SMALL]
    assert audit(*args, "--out", tmp_path / "o") == 0
    before = snapshot(tmp_path / "o")
    e = _bad(tmp_path, capsys, *args, "--seed", 1, "--out", tmp_path / "o")
    assert "--out" in e and "another configuration" in e and "seed" in e
    e = _bad(tmp_path, capsys, *args[:-2], "--metrics", "max_sensitivity", "--out", tmp_path / "o")
    assert "metrics" in e
    assert snapshot(tmp_path / "o") == before
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "thesis.tex").write_text("mine")
    e = _bad(tmp_path, capsys, *args, "--out", tmp_path / "foreign")
    assert "--out" in e and "thesis.tex" in e
    assert os.listdir(tmp_path / "foreign") == ["thesis.tex"]
    # the same command again: a no-op resume, shards untouched
    assert audit(*args, "--out", tmp_path / "o") == 0
    after = snapshot(tmp_path / "o")
    assert {k: v for k, v in after.items() if k.startswith("shards")} == \
        {k: v for k, v in before.items() if k.startswith("shards")}


def _cli(args, env_vars=None, **kw):
    e = dict(os.environ, **(env_vars or {}))
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [e.get("PYTHONPATH"), REPO]))
    return subprocess.Popen([sys.executable, *args], env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_resume_after_sigkill(env, tmp_path):
    data = load_dataset(None, 120)
    np.savez(tmp_path / "digits120.npz", x=data.x, y=data.y)
    args = ["--model", "audit_models:cnn", "--data", tmp_path / "digits120.npz", "--batch-size", 2, "--shard-batches", 1,
            "--methods", "saliency,integrated_gradients", "--metrics", "max_sensitivity,infidelity,pgd_accuracy",
            "--quiet"]
    args = [str(a) for a in args]
    assert audit(*args, "--out", tmp_path / "whole") == 0
    out = tmp_path / "killed"
    shards = out / "shards"
    proc = _cli(["-m", "fastattr", "audit", *args, "--out", str(out)], cwd=env)
    deadline = time.time() + 120
    while not (shards.is_dir() and any(n.startswith("shard-") for n in os.listdir(shards))):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    time.sleep(random.uniform(0.0, 0.1))  # a random moment after the first commit
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    committed = {k: v for k, v in snapshot(out).items() if k.startswith("shards/shard-")}
    assert 1 <= len(committed) < 60, "the kill came too late to test a resume"
    assert not (out / "results.parquet").exists()
    proc = _cli(["-m", "fastattr", "audit", *args, "--out", str(out)], cwd=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode()
    after = snapshot(out)
    for name, (data, mtime, ino) in committed.items():
        assert after[name] == (data, mtime, ino), f"{name} was redone"
    pd.testing.assert_frame_equal(read(out)[0], read(tmp_path / "whole")[0])
    assert not [n for n in os.listdir(shards) if n.startswith(".tmp")]


def test_resume_removes_a_killed_writers_temp_files(env, tmp_path):
    # A SIGKILL inside atomic_write leaves its temp file: the resume clears
    # them (test_resume_after_sigkill hits this only when the kill lands there).
    args = ["--model", "audit_models:cnn", "--data", env / "digits.npz", "--limit", 8, "--batch-size", 4, *SMALL]
    out = tmp_path / "o"
    assert audit(*args, "--out", out) == 0
    before = read(out)[0]
    stale = [out / "shards" / ".tmp-abc123shard-000001.npz", out / ".tmp-def456report.html"]
    for path in stale:
        path.write_bytes(b"half written")
    assert audit(*args, "--out", out) == 0
    assert not [p for p in stale if p.exists()]
    pd.testing.assert_frame_equal(read(out)[0], before)


def test_torchrun_two_processes_equal_one(env, tmp_path):
    args = ["--model", "audit_models:cnn", "--data", str(env / "digits.npz"), "--batch-size", "4",
            "--shard-batches", "1", *SMALL, "--quiet"]
    assert audit(*args, "--out", tmp_path / "one") == 0
    proc = _cli(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                 "-m", "fastattr", "audit", *args, "--out", str(tmp_path / "two")],
                env_vars={"OMP_NUM_THREADS": "1"}, cwd=env)
    _, err = proc.communicate(timeout=150)
    assert proc.returncode == 0, err.decode()[-3000:]
    one, s1 = read(tmp_path / "one")
    two, s2 = read(tmp_path / "two")
    pd.testing.assert_frame_equal(one, two)
    assert s1["methods"] == s2["methods"] and s1["accuracy"] == s2["accuracy"]


def test_progress_bar(env, tmp_path, capsys):
    assert main(["audit", "--model", "audit_models:cnn", "--data", str(env / "digits.npz"), "--limit", "4",
                 "--methods", "saliency", "--metrics", "infidelity", "--out", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err
    assert "4/4 examples" in err and "ex/s" in err and "ETA" in err
    assert audit("--model", "audit_models:cnn", "--data", env / "digits.npz", "--limit", 4, "--methods", "saliency",
                 "--metrics", "infidelity", "--out", tmp_path / "q") == 0
    assert capsys.readouterr().err == ""


def test_model_and_data_come_back_unchanged(env):
    model = __import__("audit_models").cnn()
    data = load_dataset(str(env / "digits.npz"), None)
    x0 = data.x.copy()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert check_model_fits(model, data, torch.device("cpu")) == 10
    assert np.array_equal(data.x, x0)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


# Every metric that runs the model, and both kinds of method (engine-native, refined IG).
FORM_METRICS = ("max_sensitivity,avg_sensitivity,infidelity,local_lipschitz_estimate,deletion_auc,insertion_auc,"
                "fgsm_accuracy,pgd_accuracy,faithfulness_correlation,pixel_flipping_auc,completeness_gap,"
                "continuity,random_logit,relative_input_stability,relative_output_stability,"
                "relative_representation_stability,randomization_spearman,smooth_mprt,efficient_mprt")


def test_model_form_option_reaches_every_row(env, tmp_path, monkeypatch):
    """``--model-form eager`` never runs the fast copy of the model, in any
    method or metric (a path that ignored the option would take the
    functions' default, ``"fast"``); ``fast`` runs it; the form is recorded
    and fingerprinted; the two forms' columns differ (they really differ on
    this BatchNorm model; how far is tests/test_metrics_model_form.py's and
    tests/test_model_form.py's subject), with NaN in the same places."""
    from fastattr.engine import model_form as mf

    calls = {"n": 0}
    forward = mf._FastForward.forward

    def counted(self, *args):
        calls["n"] += 1
        return forward(self, *args)

    monkeypatch.setattr(mf._FastForward, "forward", counted)
    frames, runs = {}, {}
    for form in ("eager", "fast"):
        calls["n"] = 0
        out = tmp_path / form
        assert audit("--model", "audit_models:batchnorm_cnn", "--data", env / "digits.npz", "--limit", 4,
                     "--methods", "saliency,integrated_gradients,smoothgrad", "--metrics", FORM_METRICS,
                     "--model-form", form, "--out", out) == 0
        frames[form], _ = read(out)
        with open(out / "run.json") as f:
            runs[form] = json.load(f)
        assert runs[form]["fingerprinted"]["model_form"] == form
        assert (calls["n"] > 0) == (form == "fast"), (form, calls["n"])
    assert runs["eager"]["fingerprint"] != runs["fast"]["fingerprint"]
    numeric = [c for c in frames["eager"].columns if frames["eager"][c].dtype.kind == "f"]
    eager, fast = (frames[f][numeric].to_numpy() for f in ("eager", "fast"))
    assert not np.array_equal(eager, fast, equal_nan=True)
    np.testing.assert_array_equal(np.isnan(eager), np.isnan(fast))


def test_model_form_option_refused(env, tmp_path, capsys):
    with pytest.raises(SystemExit):
        audit("--model-form", "fastest", "--out", tmp_path / "o")
    assert "--model-form" in capsys.readouterr().err
