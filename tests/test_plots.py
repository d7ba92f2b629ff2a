"""Plots: training curves from metrics.csv, the evaluation summary, and `wm plot`."""
from __future__ import annotations

import json

from PIL import Image

from worldmodel.report import plots
from worldmodel.cli import main
from worldmodel.evaluation.stats import wilson
from worldmodel.training.logger import RunLogger


def write_run(out, steps=40):
    log = RunLogger(out, tensorboard=False)
    for s in range(4, steps + 1, 4):
        log.log(s, {"loss": 1.0 / s, "pred": 0.5 / s, "sigreg": 3.0, "grad_norm": 1.0, "lr": 1e-3,
                    "samples_per_s": 100.0})
        if s % 20 == 0:
            log.log(s, {"val_pred": 0.1 / s, "val_nochange": 0.2, "eff_rank": 9.0, "std_mean": 0.8,
                        "std_min": 0.3, "probe_r2": float("nan")})           # NaN cells are skipped
    log.close()


def results(planner_successes, random_successes=None):
    n = len(planner_successes)
    eps = [{"index": i, "success": bool(s), "steps_to_success": 10 + i if s else None, "start_error": 4.0,
            "closest_error": 0.5 if s else 2.0, "final_error": 2.5,
            "random_success": None if random_successes is None else bool(random_successes[i]),
            "random_closest_error": None if random_successes is None else 3.0} for i, s in enumerate(planner_successes)]
    k = sum(planner_successes)
    floor = None if random_successes is None else {
        "successes": sum(random_successes), "success_rate": sum(random_successes) / n,
        "ci95": wilson(sum(random_successes), n)}
    return {"env": "tworoom", "planner": "cem", "checkpoint": "runs/x/best.pt", "episodes": n, "successes": k,
            "success_rate": k / n, "ci95": wilson(k, n), "random_floor": floor, "per_episode": eps,
            "protocol": {"budget": 50}, "latency_ms": {"p50": 1234.0}}


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_training_curves_from_metrics_csv(tmp_path):
    assert plots.plot_training(tmp_path) is None                          # nothing logged yet
    write_run(tmp_path)
    png = plots.plot_training(tmp_path)
    assert png == tmp_path / plots.CURVES
    w, h = png_size(png)
    assert w > 800 and h > 500
    assert not list(tmp_path.glob("*.tmp"))                               # atomic write


def test_eval_summary_with_and_without_random_floor(tmp_path):
    for name, res in (("a.png", results([1, 0, 1, 0])), ("b.png", results([0, 0, 0], None))):
        png = plots.plot_eval(res, tmp_path / name)
        assert png_size(png)[0] > 800


def test_safe_draw_never_raises(tmp_path, capsys):
    def plot_training(run_dir):
        raise RuntimeError("no fonts")

    assert plots.safe_draw(plot_training, tmp_path) >= 0.0
    out = capsys.readouterr().out
    assert "plot_training failed" in out and "no fonts" in out and "wm plot" in out


def test_wm_plot_redraws_either_kind_and_refuses_other_paths(tmp_path, capsys):
    write_run(tmp_path / "train")
    assert main(["plot", str(tmp_path / "train"), f"out={tmp_path / 'c.png'}"]) == 0
    assert png_size(tmp_path / "c.png")[0] > 0
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "results.json").write_text(json.dumps(results([1, 1, 0], [0, 0, 1])))
    assert main(["plot", str(tmp_path / "eval")]) == 0
    assert (tmp_path / "eval" / plots.EVAL_SUMMARY).exists()
    # Nothing there, a foreign JSON, a missing path, no path: refused with what to pass instead.
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert "wm train" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"a": 1}))
    assert main(["plot", str(tmp_path / "other.json")]) == 2
    assert "not a `wm eval` results.json" in capsys.readouterr().err
    for text in ("{bad json", json.dumps({"per_episode": [{"success": True}]})):   # malformed, or fields missing
        (tmp_path / "other.json").write_text(text)
        assert main(["plot", str(tmp_path / "other.json")]) == 2
        assert f"{tmp_path / 'other.json'} is not a `wm eval` results.json" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["plot"]) == 2
    assert "nothing to plot" in capsys.readouterr().err

