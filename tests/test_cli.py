"""The `wm` dispatcher: usage, unknown commands, and self-documenting --help."""
from __future__ import annotations

from worldmodel.cli import COMMANDS, main


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
    lines = out.splitlines()                   # a comment continued on comment-only lines, all of it, aligned
    i = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("sigreg_weight:"))
    assert lines[i + 1].strip().startswith("# distance, so a fixed lambda")
    assert lines[i + 1].index("#") == lines[i].index("#") and not lines[i + 2].lstrip().startswith("#")
    assert main(["plot", "--help"]) == 0
    assert "path: str | None = None" in capsys.readouterr().out
