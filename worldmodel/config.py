"""Config loading: Hydra YAML in `configs/` + `key=value` overrides -> a typed, validated dataclass.

Every command has one dataclass schema (e.g. `CollectConfig` in `collect.py`); derived fields are
computed in its `__post_init__`, the one validated place. Hydra composes the YAML (config groups
`env/`, `model/`, `planner/`, `data/`) and applies the overrides; `from_dict` then builds the
dataclass strictly: an unknown key or a wrong type is refused before any work, naming the fix.
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.util
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

CONFIG_DIR = Path(importlib.util.find_spec("worldmodel.configs").submodule_search_locations[0])
T = TypeVar("T")


class ConfigError(ValueError):
    """A malformed override or config; the message names the fix."""


def quoted(text: str) -> str:
    """A value as a quoted Hydra string (commas, brackets, spaces and `=` survive): paths in overrides."""
    return "'" + str(text).replace("\\", "\\\\").replace("'", "\\'") + "'"


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def _generic_env(name: str) -> str:
    """The env preset a name that has none falls to: dmc for a dm_control suite task, else gym."""
    return "dmc" if name.startswith("dm_control/") else "gym"


def preset(group: str, choice: str) -> dict[str, Any]:
    """The values of configs/<group>/<choice>.yaml, as a typed Python call takes them:
    `ModelConfig(**preset("model", "tiny"))`, `EnvConfig(**preset("env", "Hopper-v5"))`. An env
    that names no preset is a shorthand, as on the command line: a gymnasium MuJoCo id, or
    dm_control/<domain>-<task>."""
    import yaml

    if group == "env" and choice not in group_options("env"):
        return {**preset("env", _generic_env(choice)), "name": choice}
    path = CONFIG_DIR / group / f"{choice}.yaml"
    if not path.is_file():
        raise ConfigError(f"{group}={choice!r}: choose one of {', '.join(group_options(group))}")
    return yaml.safe_load(path.read_text()) or {}


@functools.lru_cache(maxsize=None)
def _groups_used(config_name: str) -> frozenset[str]:
    """The config groups from which configs/<config_name>.yaml selects a default (read once)."""
    import yaml

    path = CONFIG_DIR / f"{config_name}.yaml"
    defaults = (yaml.safe_load(path.read_text()) or {}).get("defaults", []) if path.exists() else []
    return frozenset(g for d in defaults if isinstance(d, dict) for g in d)


def default_choice(config_name: str, group: str) -> str:
    """The preset configs/<config_name>.yaml picks from a group when none is named:
    `default_choice("eval", "planner")` is the planner `wm eval` plans with by default."""
    import yaml

    defaults = yaml.safe_load((CONFIG_DIR / f"{config_name}.yaml").read_text()).get("defaults", [])
    for d in defaults:
        if isinstance(d, dict) and group in d:
            return d[group]
    raise ConfigError(f"configs/{config_name}.yaml picks no default from the {group} group")


def _uses_group(config_name: str, group: str) -> bool:
    return group in _groups_used(config_name)


def _rewrite_shorthands(schema: type, config_name: str, overrides: list[str]) -> list[str]:
    """Values that name no config of their group are shorthands:
    `env=Hopper-v5` -> `env=gym env.name=Hopper-v5` (any gymnasium MuJoCo id),
    `env=dm_control/walker-walk` -> `env=dmc env.name=dm_control/walker-walk` (a suite task) and
    `data=PATH` -> `data.path=PATH` (a dataset directory or .h5 file)."""
    out = []
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key == "data" and value and dataclasses.is_dataclass(_field_types(schema).get("data")):
            out.append(f"data.path={value}")
        elif key == "env" and value and _uses_group(config_name, key) and value not in group_options(key):
            out += [f"env={_generic_env(value)}", f"env.name={value}"]
        else:
            out.append(ov)
    return out


def _plugin_planner(config_name: str, overrides: list[str]) -> tuple[list[str], dict[str, Any] | None]:
    """`planner=NAME` naming a registered planner that has no configs/planner/NAME.yaml (a plugin's,
    registered with @register_planner): Hydra has no group file to compose, so that override and the
    `planner.KEY=VALUE` ones are taken out and become the group ({name: NAME, KEY: VALUE, ...}; the
    planner's own defaults for the rest). Returns the other overrides and that group (None: no such choice)."""
    choice = [ov.partition("=")[2] for ov in overrides if ov.partition("=")[0] == "planner"]
    if not choice or not _uses_group(config_name, "planner") or choice[-1] in group_options("planner"):
        return overrides, None
    from worldmodel.planners import PLANNERS

    if choice[-1] not in PLANNERS:
        return overrides, None                      # Hydra refuses it, listing the choices
    group: dict[str, Any] = {"name": choice[-1]}
    rest = []
    for ov in overrides:
        key, _, value = ov.partition("=")
        if key.startswith("planner."):
            group[key.removeprefix("planner.")] = _parse_value(value)
        elif key != "planner":
            rest.append(ov)
    return rest, group


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def schema_defaults(cls: type) -> dict[str, Any]:
    """The defaults of dataclass `cls` as a plain dict (nested dataclasses too), read from its fields:
    the one source of every command's root defaults, which the YAML in configs/ does not repeat."""
    hints, out = _field_types(cls), {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if dataclasses.is_dataclass(hints[f.name]) and f.default is dataclasses.MISSING:
            out[f.name] = schema_defaults(hints[f.name])
        elif f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def compose(schema: type, config_name: str, overrides: list[str]) -> dict[str, Any]:
    """Compose `schema`'s defaults, the presets configs/<config_name>.yaml selects (model/, env/,
    planner/, optim/) and Hydra-style overrides into a plain dict."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from worldmodel.sweep import MULTIRUN_FLAGS, refuse_sweeps

    for ov in overrides:
        key, eq, _ = ov.partition("=")
        if not eq or not key or key.startswith("="):
            fix = " (a sweep: -m before the overrides, for wm train and wm eval)" if ov in MULTIRUN_FLAGS else ""
            raise ConfigError(f"malformed override {ov!r}: write key=value, e.g. episodes=100{fix}")
        if key.lstrip("+~").split(".")[0] == "hydra":
            raise ConfigError(f"{ov}: wm sets no hydra.* keys; out= names the output folder")
    refuse_sweeps(config_name, overrides)
    overrides = _rewrite_shorthands(schema, config_name, overrides)
    overrides, plugin_planner = _plugin_planner(config_name, overrides)
    # A plain key that shares its name with a config group this config does not use (demo's
    # `env=tworoom`, `model=tiny`) would be read by Hydra as a group choice: apply it afterwards.
    groups = {p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and not _uses_group(config_name, p.name)}
    late = [ov for ov in overrides if ov.partition("=")[0] in groups]
    overrides = [ov for ov in overrides if ov not in late]
    # configs/<config_name>.yaml's defaults list starts with this node: the dataclass's own defaults
    ConfigStore.instance().store(name=f"_{config_name}_defaults", node=schema_defaults(schema))
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base=None):
            cfg = hydra_compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException) as e:
        msg = str(e).splitlines()[0].rstrip(".")
        hint = ""
        if "Could not override" in msg or "not in struct" in msg:
            hint = f" Run `wm {config_name} --help` for the valid keys."
        missing = re.search(r"Could not find '(\w+)/([^']*)'", msg)
        if missing:
            group, choice = missing.groups()
            hint = f" Unknown {group} {choice!r}; choose one of: {', '.join(group_options(group))}."
            if group == "planner":
                hint = hint[:-1] + " (or your own: @register_planner in a module named by $WM_PLUGINS)."
        raise ConfigError(f"bad override for `{config_name}`: {msg}.{hint}") from None
    try:
        out = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:           # an interpolation that resolves to nothing: ${nope}
        where = f" in {e.full_key}" if getattr(e, "full_key", None) else ""
        raise ConfigError(f"bad override for `{config_name}`{where}: {str(e).splitlines()[0].rstrip('.')}. "
                          "A ${...} value must name a key of this config, e.g. ${seed}") from None
    if plugin_planner is not None:
        out["planner"] = plugin_planner
    for ov in late:
        key, _, value = ov.partition("=")
        if key not in out:
            raise ConfigError(f"bad override for `{config_name}`: unknown key {key!r}; "
                              f"valid keys: {', '.join(sorted(out))}")
        out[key] = _parse_value(value)
    return out  # type: ignore[return-value]


def _parse_value(text: str) -> Any:
    """A command-line value the way Hydra reads one: YAML scalars (1, 0.5, true, null) else a string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if isinstance(value, (int, float, bool, type(None), str)) else text


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (inner, *_) = typing.get_args(tp) or (Any,)
        items = [_coerce(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None or isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass `cls` from `data`, refusing unknown keys and wrong types."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {', '.join((where + '.' if where else '') + k for k in unknown)}; "
            f"valid keys{' of ' + where if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name in fields:
        if name in data:
            kwargs[name] = _coerce(hints[name], data[name], f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ConfigError(f"{where or cls.__name__}: {e}") from None


def load(cls: type[T], config_name: str, overrides: list[str]) -> T:
    """compose + from_dict: the one way every command gets its config."""
    return from_dict(cls, compose(cls, config_name, list(overrides)))


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
