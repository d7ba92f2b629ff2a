"""The house rules, checked: commands never import each other, the library never imports a command,
no import circle, `--help` without torch, one source for every default, the installed names."""
from __future__ import annotations

import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SOURCES = {"worldmodel": REPO / "worldmodel", "worldmodel.envs": REPO / "envs",
           "worldmodel.planners": REPO / "planners"}


def modules() -> dict[str, Path]:
    """Every module of the installed package, by its import name."""
    out = {}
    for package, root in SOURCES.items():
        for path in root.rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join((package, *parts))
            out[name.removesuffix(".__init__")] = path
    return out


def imports(path: Path, top_level_only: bool = False) -> set[str]:
    """The worldmodel modules `path` imports (from ... import x counts x when x is a module)."""
    tree, found = ast.parse(path.read_text()), set()
    nodes = tree.body if top_level_only else ast.walk(tree)
    known = modules()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
            found |= subs if len(subs) == len(node.names) else subs | {node.module}   # `from pkg import mod`
    return {m for m in found if m.startswith("worldmodel")}


def test_commands_never_import_each_other_and_the_library_never_imports_a_command():
    for name, path in modules().items():
        used = imports(path)
        if name.startswith("worldmodel.commands."):
            others = {m for m in used if m.startswith("worldmodel.commands.") and m != name}
            assert not others, f"{name} imports the command(s) {others}: commands import the library only"
        elif name not in ("worldmodel.cli", "worldmodel.commands"):
            cmds = {m for m in used if m.startswith(("worldmodel.commands", "worldmodel.cli"))}
            assert not cmds, f"library module {name} imports {cmds}"


def test_benchmarks_import_the_library_not_commands():
    for path in (REPO / "benchmarks").glob("*.py"):
        cmds = {m for m in imports(path) if m.startswith(("worldmodel.commands", "worldmodel.cli"))}
        assert not cmds, f"benchmarks/{path.name} imports {cmds}"
        assert "sys.path" not in path.read_text(), f"benchmarks/{path.name} edits sys.path"


def test_no_import_circle_between_modules():
    known = modules()
    graph = {name: {m for m in imports(path, top_level_only=True)     # a package runs before its modules
                    if m in known and m != name and not name.startswith(m + ".")}
             for name, path in known.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(trail[trail.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_modules_stay_readable():
    long = {n: len(p.read_text().splitlines()) for n, p in modules().items()}
    assert not {n: k for n, k in long.items() if k > 400}, "split modules over 400 lines by concern"


@pytest.mark.parametrize("args", [["--help"], *[[c, "--help"] for c in
                                  ("collect", "inspect", "preview", "train", "eval", "check", "plot", "compare",
                                   "demo")]])
def test_help_prints_without_importing_torch(args):
    code = ("import sys; from worldmodel.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout or "keys" in out.stdout


def test_root_configs_hold_no_values_the_dataclass_defaults_are_the_one_source():
    from worldmodel.cli import COMMANDS
    from worldmodel.config import CONFIG_DIR, compose, schema_defaults

    for name, (module, _) in COMMANDS.items():
        cmd = importlib.import_module(module)
        text = yaml.safe_load((CONFIG_DIR / f"{cmd.CONFIG_NAME}.yaml").read_text())
        assert set(text) == {"defaults"}, f"configs/{cmd.CONFIG_NAME}.yaml repeats defaults: {set(text) - {'defaults'}}"
        composed, own = compose(cmd.CONFIG, cmd.CONFIG_NAME, []), schema_defaults(cmd.CONFIG)
        flat = {k: v for k, v in own.items() if not isinstance(v, dict)}
        optim = any("optim" in str(g) for g in text["defaults"])      # the model's training preset
        moved = set(yaml.safe_load((CONFIG_DIR / "optim" / "tiny.yaml").read_text())) if optim else set()
        assert {k: composed[k] for k in flat if k not in moved} == {k: v for k, v in flat.items() if k not in moved}


def test_presets_that_are_a_dataclass_default_agree_with_it():
    """The env preset `wm collect` picks by default is EnvConfig's default; a planner preset named
    after a planner holds that planner's own defaults; a model preset sets every architecture field."""
    from worldmodel.config import group_options, preset, schema_defaults
    from worldmodel.data.config import EnvConfig
    from worldmodel.model.config import ModelConfig
    from worldmodel.planners import PLANNERS

    assert preset("env", "tworoom") == schema_defaults(EnvConfig)
    for name in group_options("planner"):
        values = preset("planner", name)
        if name in PLANNERS:
            cls = PLANNERS[name]
            own = {f.name: f.default for f in dataclasses.fields(cls) if f.init}
            assert {k: own.get(k) for k in values if k != "name"} == {k: v for k, v in values.items() if k != "name"}, \
                f"configs/planner/{name}.yaml differs from {cls.__name__}'s defaults"
    arch = {f.name for f in dataclasses.fields(ModelConfig) if f.init} - {"action_dim"}
    for name in group_options("model"):
        assert set(preset("model", name)) == arch, f"configs/model/{name}.yaml"


def test_installed_names_are_the_toolkits_own(tmp_path):
    """envs/, planners/ and configs/ install under worldmodel.*; no foreign top-level name is claimed."""
    text = (REPO / "pyproject.toml").read_text()
    declared = set(yaml.safe_load("[" + text.split("packages = [", 1)[1].split("]", 1)[0] + "]"))
    assert all(p == "worldmodel" or p.startswith("worldmodel.") for p in declared)
    on_disk = {name for name, path in modules().items() if path.name == "__init__.py"} | {"worldmodel.configs"}
    assert on_disk <= declared, f"packages missing from pyproject.toml: {on_disk - declared}"
    code = ("import importlib.util as u, worldmodel.envs, worldmodel.planners, worldmodel.configs; "
            "print(u.find_spec('envs') is None, u.find_spec('planners') is None, u.find_spec('configs') is None)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.split() == ["True", "True", "True"], out.stderr


def test_nothing_cites_a_file_outside_the_repository():
    tracked = subprocess.run(["git", "ls-files"], capture_output=True, text=True, cwd=REPO).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    outside = "REFERENCE" + ".md"                   # spelled apart, so this file does not cite it
    hits = [f for f in tracked if f.endswith((".py", ".md", ".yaml", ".sh", ".toml"))
            and outside in (REPO / f).read_text()]
    assert not hits, f"cite a file outside the repository: {hits}"
