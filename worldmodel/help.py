"""`wm <command> --help`: every key of a command's dataclass with its type, default and comment.

Comments come from the dataclass source (the trailing `# ...` of each field line). The planner
group is described from the planner's own dataclass; a built-in planner is read from its source
file without importing it, so `--help` never imports torch.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import re
import sys
import typing
from pathlib import Path
from typing import Any

from worldmodel.config import group_options

FIELD_COMMENT = r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$((?:\n[ \t]+#.*)*)"
COLUMN = 44


@dataclasses.dataclass
class Key:
    """One key of the help text."""

    name: str
    type: str
    value: Any
    notes: list[str]


def _comments(source: str) -> dict[str, list[str]]:
    """Field name -> its trailing comment and the comment-only lines that continue it."""
    return {m[1]: [m[2].strip(), *(ln.strip().lstrip("#").strip() for ln in m[3].splitlines() if ln.strip())]
            for m in re.finditer(FIELD_COMMENT, source, flags=re.M)}


def _field_comments(cls: type) -> dict[str, list[str]]:
    """Comments of `cls`'s fields, a base class's where the subclass has none."""
    notes: dict[str, list[str]] = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):
        try:
            notes.update(_comments(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
    return notes


def _lines(keys: list[Key], prefix: str) -> list[str]:
    out = []
    for k in keys:
        line = f"  {prefix}{k.name}: {k.type} = {k.value}"
        first, *more = k.notes or [None]
        out.append(line if first is None else f"{line:<{COLUMN}}  # {first}")
        out += [f"{'':<{COLUMN}}  # {text}" for text in more]
    return out


def describe(cls: type, values: dict[str, Any] | None = None, prefix: str = "") -> list[str]:
    """Lines `key: type = value  # what it does`; values from the composed config where given."""
    lines: list[str] = []
    hints = typing.get_type_hints(cls)
    notes = _field_comments(cls)
    values = values or {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe(tp, values.get(f.name), f"{prefix}{f.name}.")
            continue
        if f.name in values:
            value = values[f.name]
        elif f.default is not dataclasses.MISSING:
            value = f.default
        else:
            value = f.default_factory() if f.default_factory is not dataclasses.MISSING else "<required>"
        if f.name == "planner" and isinstance(value, dict) and value.get("name"):
            lines += describe_planner(value, f"{prefix}{f.name}.")
        elif isinstance(value, dict) and value:
            lines += [f"  {prefix}{f.name}.{k} = {v}" for k, v in value.items()]
        else:
            tname = getattr(tp, "__name__", str(tp).replace("typing.", ""))
            lines += _lines([Key(f.name, tname, value, notes.get(f.name, []))], prefix)
    return lines


def describe_planner(group: dict[str, Any], prefix: str) -> list[str]:
    """The planner group's keys with the planner's types and comments (values: the composed group's)."""
    head = f"  {prefix}name = {group['name']}"
    lines = [f"{head:<{COLUMN}}  # planner=NAME picks one: {', '.join(group_options('planner'))}, or a plugin's;",
             f"{'':<{COLUMN}}  # `wm ... planner=NAME --help` lists its keys"]
    registry = sys.modules.get("worldmodel.planners")        # imported already (a plugin's planner)
    cls = registry.PLANNERS.get(group["name"]) if registry is not None else None
    if dataclasses.is_dataclass(cls):
        return lines + describe(cls, group, prefix)
    keys = planner_keys(group["name"])
    if keys is None:                                         # a plugin's planner, not loaded here
        return lines + [f"  {prefix}{k} = {v}" for k, v in group.items() if k != "name"]
    for k in keys:
        k.value = group.get(k.name, k.value)
    return lines + _lines(keys, prefix)


def planner_keys(name: str) -> list[Key] | None:
    """The keys of built-in planner `name` (registered with @register_planner("name") in
    worldmodel/planners/), read from the source: its dataclass fields and its bases', in order."""
    classes = _planner_classes()
    cls = next((c for c in classes.values() if c["registered"] == name), None)
    if cls is None:
        return None
    chain, seen = [], set()
    while cls is not None and cls["name"] not in seen:       # the class, then its first base's, ...
        chain.append(cls)
        seen.add(cls["name"])
        cls = classes.get(cls["bases"][0]) if cls["bases"] else None
    keys: dict[str, Key] = {}
    for c in reversed(chain):                                # base fields first, overridden by subclasses
        for k in c["fields"]:
            notes = k.notes or (keys[k.name].notes if k.name in keys else [])
            keys[k.name] = Key(k.name, k.type, k.value, notes)
    return list(keys.values())


def _planner_classes() -> dict[str, dict[str, Any]]:
    spec = importlib.util.find_spec("worldmodel.planners")
    classes: dict[str, dict[str, Any]] = {}
    for path in sorted(Path(spec.submodule_search_locations[0]).glob("*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.ClassDef):
                notes = _comments(ast.get_source_segment(source, node) or "")
                classes[node.name] = {"name": node.name, "registered": _registered_name(node),
                                      "bases": [ast.unparse(b) for b in node.bases],
                                      "fields": _class_fields(node, notes)}
    return classes


def _registered_name(node: ast.ClassDef) -> str | None:
    for d in node.decorator_list:
        if isinstance(d, ast.Call) and ast.unparse(d.func) == "register_planner" and d.args:
            return ast.literal_eval(d.args[0])
    return None


def _class_fields(node: ast.ClassDef, notes: dict[str, list[str]]) -> list[Key]:
    keys = []
    for st in node.body:
        if not (isinstance(st, ast.AnnAssign) and isinstance(st.target, ast.Name)) or st.target.id.startswith("_"):
            continue
        if st.value is None:
            value: Any = "<required>"
        else:
            try:
                value = ast.literal_eval(st.value)
            except ValueError:                              # field(...) and other expressions
                if "init=False" in ast.unparse(st.value):
                    continue
                value = ast.unparse(st.value)
        keys.append(Key(st.target.id, ast.unparse(st.annotation), value, notes.get(st.target.id, [])))
    return keys
