"""The README and docs/*.md run as written, so the docs match the code.

- The README's Python blocks and every ```python block of docs/*.md execute against a tiny checkpoint
  built here (a `wm train` checkpoint in shape: it names the env it was trained in). The blocks of one
  page run in order in one namespace, as a reader pastes them; `"runs/demo/train/best.pt"` means the
  tiny checkpoint and `my_logs` is given (three recorded episodes shaped as the DatasetWriter example
  says). A block that cannot run here (a GPU, minutes of compiling) is preceded by a line
  `<!-- no-test: <why> -->`, and only then skipped.
- Every relative link and image in README.md and docs/*.md points to a file that exists, and every
  `#anchor` to a heading of its page.
- The README stays a front door: at most 250 lines.
"""
from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
POINTERS = sorted((REPO / "benchmarks" / "results").glob("*.md"))    # where pages lived before docs/
README_MAX_LINES = 250
CHECKPOINT = '"runs/demo/train/best.pt"'
NO_TEST = re.compile(r"<!--\s*no-test\b.*?-->")
FENCE = re.compile(r"^(```|~~~)")


def _python_blocks(path: Path = README, *, with_skipped: bool = False) -> list[str]:
    """The ```python blocks of a page, in order; those marked <!-- no-test --> only if asked."""
    return [code for code, skipped in _blocks(path) if with_skipped or not skipped]


def _blocks(path: Path) -> list[tuple[str, bool]]:
    """(code, skipped) for every ```python block: skipped when the last non-blank line before its
    fence is a <!-- no-test: why --> marker."""
    lines, out, i = path.read_text().split("\n"), [], 0
    while i < len(lines):
        if FENCE.match(lines[i]):
            lang, j = lines[i].strip("`~ ").strip(), i + 1
            while j < len(lines) and not FENCE.match(lines[j]):
                j += 1
            if lang == "python":
                prev = next((ln for ln in reversed(lines[:i]) if ln.strip()), "")
                out.append(("\n".join(lines[i + 1:j]) + "\n", bool(NO_TEST.fullmatch(prev.strip()))))
            i = j + 1
        else:
            i += 1
    return out


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """A tiny untrained model saved as `wm train` saves one: its dataset metadata names TwoRoom."""
    import torch

    from worldmodel.model.checkpoint import save_checkpoint
    from worldmodel.model.world_model import ModelConfig, WorldModel

    torch.manual_seed(0)
    cfg = ModelConfig(image_size=32, patch_size=8, enc_width=32, enc_depth=1, enc_heads=2, enc_mlp=64,
                      latent_dim=32, proj_hidden=64, action_dim=2, frameskip=5, history=3, pred_depth=1,
                      pred_heads=2, pred_head_dim=16, pred_mlp=64, action_hidden=32)
    meta = {"env": "tworoom", "image_size": 32}
    return save_checkpoint(tmp_path / "ckpt" / "best.pt", WorldModel(cfg), extra={"dataset_meta": meta})


def _logs(n: int = 3):
    """Recorded episodes shaped as the DatasetWriter example's comment says."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [SimpleNamespace(frames=rng.integers(0, 256, (9, 64, 64, 3), dtype=np.uint8),
                            commands=rng.uniform(-1, 1, (8, 2)), joints=rng.normal(size=(9, 3)))
            for _ in range(n)]


@pytest.fixture
def restore_registries():
    """Blocks that register an env, policy or planner must not leak them into other tests."""
    import gymnasium as gym

    from worldmodel.envs import policies, registry
    from worldmodel.planners import base

    tables = [registry.ENVS, registry.IDS, policies.POLICIES, policies.EXPERTS, base.PLANNERS]
    saved = [dict(t) for t in tables]
    gym_ids = set(gym.registry)
    # Start from the toolkit's own entries: an earlier test may have loaded the same plugin in-process.
    for table in (registry.ENVS, policies.POLICIES, policies.EXPERTS, base.PLANNERS):
        for key in [k for k, v in table.items() if not getattr(v, "__module__", "").startswith("worldmodel.")]:
            del table[key]
    for gym_id in [i for i, name in registry.IDS.items() if name not in registry.ENVS]:
        del registry.IDS[gym_id]
    try:
        yield
    finally:
        for table, old in zip(tables, saved):
            table.clear()
            table.update(old)
        for gym_id in set(gym.registry) - gym_ids:
            del gym.registry[gym_id]


def _run_page(path: Path, code_blocks: list[str], scope: dict, checkpoint: Path) -> dict:
    """Run a page's blocks in order in one module namespace (dataclasses and pickling need a module)."""
    name = f"_docs_{path.stem.replace('-', '_')}"
    module = types.ModuleType(name)
    module.__dict__.update(scope)
    sys.modules[name] = module
    try:
        for k, code in enumerate(code_blocks):
            code = code.replace(CHECKPOINT, repr(str(checkpoint)))
            exec(compile(code, f"{path.name}, python block {k + 1}", "exec"), module.__dict__)  # noqa: S102
    finally:
        sys.modules.pop(name, None)
    return module.__dict__


@pytest.mark.slow
def test_readme_python_api_example_runs(tiny_checkpoint):
    (block,) = [b for b in _python_blocks() if "MPCController" in b]
    assert CHECKPOINT in block
    code = block.replace('make_planner("cem", seed=0)', 'make_planner("cem", seed=0, samples=32, iterations=2)')
    scope = _run_page(README, [code], {}, tiny_checkpoint)
    assert scope["action"].shape == (2,)
    assert scope["z"].shape == (1, 1, 32)
    assert scope["ctrl"].stats()["plans"] >= 1


def test_readme_recorder_example_runs(tmp_path, monkeypatch):
    """The DatasetWriter block writes a dataset that loads, given logs shaped as its comment says."""
    from worldmodel.data.dataset import load_dataset

    (block,) = [b for b in _python_blocks() if "DatasetWriter" in b]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {"my_logs": _logs()})         # noqa: S102 - our own docs
    ds = load_dataset(tmp_path / "data" / "arm", columns=("pixels", "action", "state"))
    assert (ds.num_episodes, ds.num_frames) == (3, 27) and ds.state.shape == (27, 3)


def test_readme_is_a_front_door():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/ (at most {README_MAX_LINES})"


PAGES_WITH_CODE = [p for p in DOCS if _python_blocks(p, with_skipped=True)]


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES_WITH_CODE, ids=[p.name for p in PAGES_WITH_CODE])
def test_docs_python_blocks_run(page, tiny_checkpoint, tmp_path, monkeypatch, restore_registries):
    blocks = _python_blocks(page)
    assert blocks, f"{page.name}: every python block is marked no-test"
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)                 # what the blocks write (data/...) stays out of the repo
    _run_page(page, blocks, {"my_logs": _logs()}, tiny_checkpoint)


def test_no_test_markers_sit_on_python_blocks():
    """A marker that does not precede a python block skips nothing: it is a mistake."""
    for page in [README, *DOCS]:
        markers = [ln for ln in page.read_text().split("\n") if NO_TEST.fullmatch(ln.strip())]
        marked = sum(skipped for _, skipped in _blocks(page))
        assert len(markers) == marked, f"{page.name}: a <!-- no-test --> marker is not on a python block"


# ---------------------------------------------------------------------------------------------- links
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _prose(path: Path) -> str:
    """The page without its fenced code blocks (a link or heading inside one is not one)."""
    out, fenced = [], False
    for line in path.read_text().split("\n"):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return "\n".join(out)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (not - or _), spaces to -."""
    text = re.sub(r"<[^>]+>", "", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", _prose(path), flags=re.M):
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path) -> list[str]:
    return [m.group(1) for m in LINK.finditer(_prose(path))]


def test_relative_links_and_anchors_resolve():
    broken = []
    for page in [README, *DOCS, *POINTERS]:
        for target in _links(page):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):          # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            dest = (page.parent / file_part).resolve() if file_part else page
            where = f"{page.relative_to(REPO)} -> {target}"
            if not dest.exists():
                broken.append(f"{where}: no such file")
            elif REPO not in dest.parents and dest != REPO:
                broken.append(f"{where}: outside the repository")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{where}: no heading with that anchor in {dest.name}")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_link_checker_sees_links():
    """Guard against a checker that passes because it finds nothing."""
    assert len(_links(README)) >= 10 and "docs/results.md" in {t.partition("#")[0] for t in _links(README)}
    assert _slug("Before the robot: `wm check`") == "before-the-robot-wm-check"
    assert _slug("Oracle ceilings: planner, encoder or predictor?") == "oracle-ceilings-planner-encoder-or-predictor"
