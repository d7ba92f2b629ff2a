"""The `wm` dispatcher: usage, unknown commands, and self-documenting --help."""
from __future__ import annotations

import inspect
import itertools

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
