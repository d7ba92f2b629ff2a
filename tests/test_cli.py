"""The `wm` dispatcher: usage, unknown commands, and self-documenting --help."""
from __future__ import annotations

import inspect
import itertools
import json

import pytest

from worldmodel.cli import COMMANDS, main
from worldmodel.training.config import TrainConfig


def test_usage_and_unknown_command(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name}" in out for name in COMMANDS)
    assert main(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


def test_help_lists_every_key_with_its_default_and_meaning(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    assert "plots: bool = True" in out and "# redraw curves.png" in out        # the field's own comment
    assert "model.history: int = 3" in out and "# predictor attention window" in out   # nested schemas too
    # A comment continued on comment-only lines in the source is shown whole, each line aligned.
    src = inspect.getsource(TrainConfig).splitlines()
    j = next(j for j, ln in enumerate(src) if ln.lstrip().startswith("sigreg_weight:"))
    more = [ln.strip() for ln in itertools.takewhile(lambda ln: ln.lstrip().startswith("#"), src[j + 1:])]
    lines = out.splitlines()
    i = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("sigreg_weight:"))
    assert more and [ln.strip() for ln in lines[i + 1:i + 1 + len(more)]] == more
    assert all(ln.index("#") == lines[i].index("#") for ln in lines[i:i + 1 + len(more)])
    assert not lines[i + 1 + len(more)].lstrip().startswith("#")
    assert main(["plot", "--help"]) == 0
    assert "path: str | None = None" in capsys.readouterr().out


@pytest.mark.parametrize("args", [
    ["train", "lr=1e-4,3e-4"],                  # a sweep without -m
    ["train", "seed=range(3)"],
    ["train", "--help", "lr=${nope}"],          # an interpolation naming no key
    ["train", "lr=${nope}"],
    ["train", "lr=[1,2"],                       # the override grammar
    ["train", "hydra.run.dir=x"],
    ["train", "-m", "out=a,b"],                 # sweeps: out= is the sweep's folder
    ["train", "-m", "lr=interval(0,1)"],
    ["train", "-m", "steps=3"],                 # -m with nothing to sweep
    ["inspect", "-m", "runs/x", "episodes=1,2"],  # a command that runs one config
    ["train", "-m", "steps=2,0", "data=nowhere"],  # one bad grid point refuses the sweep before any run
])
def test_every_override_error_is_one_line_naming_the_fix(args, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"wm {args[0]}: ")
    assert not any(tmp_path.iterdir()), "refused after doing work"
    if "lr=1e-4,3e-4" in args:
        assert "wm train -m lr=1e-4,3e-4" in err and "lr='a,b'" in err


def test_sweep_runs_the_grid_each_in_its_own_folder_with_a_summary(tmp_path, capsys):
    from test_clips import write_dataset
    from test_train import MICRO

    data = write_dataset(tmp_path / "d", [24] * 6, image_size=16)
    model = [f"model.{k}={v}" for k, v in MICRO.items()]
    fixed = [f"data={data}", f"out={tmp_path / 'sw'}", "steps=2", "batch_size=4", "eval_every=2", "ckpt_every=2",
             "eval_clips=8", "bn_calibration_batches=1", "data.val_fraction=0.34", "tensorboard=false",
             "plots=false", "progress=false", "threads=1", *model]
    assert main(["train", "-m", "lr=1e-3,2e-3", "seed=0,1", *fixed]) == 0
    out = capsys.readouterr().out
    names = ["lr-0.001_seed-0", "lr-0.001_seed-1", "lr-0.002_seed-0", "lr-0.002_seed-1"]
    assert all((tmp_path / "sw" / n / "best.pt").is_file() for n in names)
    summary = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["out"] for r in summary["runs"]] == [str(tmp_path / "sw" / n) for n in names]
    assert all(r["error"] is None and r["metrics"]["step"] == 2 and "val_pred" in r["metrics"]
               for r in summary["runs"])
    assert [r["overrides"] for r in summary["runs"]][1] == {"lr": "0.001", "seed": "1"}
    table = out[out.rindex("lr "):].splitlines()                  # header + one row per run
    assert table[0].split()[:4] == ["lr", "seed", "step", "loss"] and len([ln for ln in table if " ok" in ln]) == 4
