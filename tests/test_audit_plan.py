"""The audit's plan: printed before any work with rows per example and an
estimated time, --plan-only, --budget-minutes (lowers the sample counts not
set explicitly, or refuses before work with the --limit that fits), and the
progress bar moving inside a batch."""
import json
import os

import numpy as np
import pytest

import fastattr.cli.audit as audit_module
from fastattr.cli import main
from fastattr.cli.data import load_dataset
from fastattr.cli.measures import available_groups
from fastattr.cli.methods import METHOD_SETTINGS, method_rows
from fastattr.cli.options import resolve
from fastattr.cli.plan import RowCost, rows_per_example
from fastattr.cli.progress import Progress

FACTORY = '''
import torch
from torch import nn

def cnn():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
'''
METHODS = "saliency,integrated_gradients"
METRICS = "max_sensitivity,infidelity,local_lipschitz_estimate,pgd_accuracy"
# A fixed cost per row, so the plan's arithmetic is the test's, not the machine's speed.
COST = RowCost(gradient=0.01, forward=0.004)


@pytest.fixture
def env(tmp_path, monkeypatch):
    (tmp_path / "plan_models.py").write_text(FACTORY)
    data = load_dataset(None, 12)
    np.savez(tmp_path / "d.npz", x=data.x, y=data.y)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(audit_module, "measure_row_cost", lambda model, x: COST)
    return tmp_path


def run(env, *args):
    return main(["audit", "--model", "plan_models:cnn", "--data", str(env / "d.npz"), "--methods", METHODS,
                 "--metrics", METRICS, "--batch-size", "4", *map(str, args)])


def expected_rows(metric_options):
    """Rows per example by hand: saliency 1 row, IG 16; sensitivity and Lipschitz
    n_samples x each method's rows; infidelity n + 1 forward rows per method;
    PGD n_steps backward rows and 1 forward row."""
    n_sens, n_lip, n_inf = (metric_options.get(k, 10) for k in ("sensitivity", "lipschitz", "infidelity"))
    gradient = (1 + 16) * (1 + n_sens + n_lip) + 10
    forward = 2 * (n_inf + 1) + 1
    return gradient, forward


def test_rows_per_example_by_hand():
    groups = [g for g in available_groups() if g.name in ("sensitivity", "infidelity", "lipschitz", "pgd")]
    settings = resolve({g.name: g.settings(64) for g in groups}, {}, "x")
    defaults = resolve(METHOD_SETTINGS, {}, "x")
    rows = method_rows({m: defaults[m] for m in METHODS.split(",")})
    assert rows == {"saliency": 1, "integrated_gradients": 16}
    assert rows_per_example(rows, groups, settings) == expected_rows({})


def test_plan_is_printed_before_any_work(env, capsys):
    assert run(env, "--out", env / "o") == 0
    err = capsys.readouterr().err
    gradient, forward = expected_rows({})
    seconds = 12 * (gradient * COST.gradient + forward * COST.forward)
    assert f"{gradient} forward+backward rows and {forward} forward rows" in err
    assert "12 examples x 2 methods" in err and "estimated time:" in err
    assert err.index("plan:") < err.index("audit [")  # the plan comes before the progress
    assert f"{seconds:.0f} s" in err or f"{int(seconds) // 60} min" in err


def test_plan_only_does_no_work(env, capsys):
    assert run(env, "--plan-only", "--out", env / "o") == 0
    assert "estimated time:" in capsys.readouterr().err
    assert not os.path.exists(env / "o")


def test_budget_lowers_the_samples_that_were_not_set(env, capsys):
    # 10 samples: 12 x (17 x 21 + 10) rows x 10 ms > 45 s; 6 samples need 12 x (17 x 13 + 10) x 10 ms + forwards
    budget_s = 12 * (17 * 13 + 10) * COST.gradient + 12 * (2 * 7 + 1) * COST.forward + 0.5
    assert run(env, "--budget-minutes", budget_s / 60, "--metric-option", "lipschitz.n_samples=4",
               "--out", env / "o") == 0
    with open(env / "o" / "summary.json") as f:
        settings = json.load(f)["configuration"]["metric_settings"]
    assert settings["max_sensitivity"]["n_samples"] == 8  # the most that fit, with lipschitz kept at 4
    assert settings["infidelity"]["n_samples"] == 8
    assert settings["local_lipschitz_estimate"]["n_samples"] == 4  # given explicitly: never changed
    gradient, forward = expected_rows({"sensitivity": 8, "lipschitz": 4, "infidelity": 8})
    assert 12 * (gradient * COST.gradient + forward * COST.forward) <= budget_s
    gradient, forward = expected_rows({"sensitivity": 9, "lipschitz": 4, "infidelity": 9})
    assert 12 * (gradient * COST.gradient + forward * COST.forward) > budget_s


def test_budget_too_small_is_refused_before_work_with_the_limit_that_fits(env, capsys):
    assert run(env, "--budget-minutes", 0.05, "--out", env / "o") == 2
    err = capsys.readouterr().err
    gradient, forward = expected_rows({"sensitivity": 2, "lipschitz": 2, "infidelity": 2})  # the fewest
    fits = int(3.0 // (gradient * COST.gradient + forward * COST.forward))
    assert "--budget-minutes" in err and f"--limit {fits} would fit" in err and fits < 12
    assert not os.path.exists(env / "o")


def test_progress_moves_inside_a_batch(env, monkeypatch):
    seen = []
    monkeypatch.setattr(Progress, "update", lambda self, done: seen.append(done))
    assert run(env, "--quiet", "--limit", 4, "--out", env / "o") == 0
    assert any(0 < d < 4 and d != int(d) for d in seen)  # moved before the one batch ended
    assert seen == sorted(seen) and seen[-1] == 4


def test_progress_shows_fractions():
    class Stream:
        text = ""

        def isatty(self):
            return False

        def write(self, s):
            Stream.text += s

        def flush(self):
            pass

    p = Progress(8, stream=Stream(), every_s=0.0)
    p.update(2.5)
    p.update(8)
    assert "2.5/8 examples" in Stream.text and "8/8 examples" in Stream.text
