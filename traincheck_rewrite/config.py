"""The run configuration: TrainCheck's collector keys (flag names with `_`), plus ours; validated before anything runs.

Every problem is a ConfigError with one line that names the file and the key (or the YAML line).
"""

from __future__ import annotations

import difflib
import re
import sys
from dataclasses import dataclass, field, fields
from importlib.machinery import EXTENSION_SUFFIXES, PathFinder
from pathlib import Path
from typing import Any

import yaml

TRACKER_STYLES = ("proxy", "subclass", "sampler")
TENSOR_FORMATS = ("hash", "stats", "full")
ON_VIOLATION = ("report", "stop")
_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(Exception):
    """A configuration problem; the message is one line."""


@dataclass(frozen=True)
class Config:
    pyscript: Path | None = None
    shscript: Path | None = None
    modules_to_instr: tuple[str, ...] = ("torch",)
    models_to_track: tuple[str, ...] = ()
    model_tracker_style: str = "proxy"
    copy_all_files: bool = False
    output_dir: Path | None = None
    only_instr: bool = False
    invariants: tuple[Path, ...] = ()
    sampling_interval: int | None = None
    warm_up_steps: int | None = None
    tensor_dump_format: str = "hash"
    API_dump_stack_trace: bool = False
    use_full_instr: bool = False
    debug_mode: bool = False
    instr_descriptors: bool = False
    profiling: bool = False
    disable_scan_proxy_in_args: bool = False
    no_auto_var_instr: bool = False
    use_torch_compile: bool = False
    args: tuple[str, ...] = ()
    meta_vars: dict = field(default_factory=dict)
    meta_from: dict = field(default_factory=dict)
    rewrite_libraries: tuple[str, ...] = ()  # load_config puts DEFAULT_LIBRARIES here when the key is not given
    rewrite_frameworks: bool = True
    log_import_time_calls: bool = False
    track_inner_updates: bool = False  # a state check around every in-place update inside a library call (tracking.py)
    plain_traces: bool = True
    check: bool = False  # TrainCheck's online checker on the run as it trains (checking.py)
    checker: Path | None = None  # where that checker is (a virtualenv, or its traincheck-onlinecheck)
    on_violation: str = "report"  # or "stop": end the program at the first violation
    config_path: Path | None = None
    notes: tuple[str, ...] = ()


# Library depth when a config names none: the modules' own calls (`Linear.forward` -> `F.linear`, `BatchNorm2d.forward`
# -> `F.batch_norm`, `Module.train` -> each submodule's) are what the engine's contain relations learn most from, for
# about 0.05-0.1x of the plain run (docs/library-depth.md, measured with each bench workload); torch.nn.utils for what
# runs inside spectral/weight norm's hooks, parametrizations and clip_grad_norm_, which training code calls each step;
# torch.nn.init for the initialisers' inner calls (the output relations' facts), at set-up only. torch.optim's step
# from inside is not in the default for its cost on the MLP and the LM (docs/library-depth.md).
DEFAULT_LIBRARIES = ("torch.nn.modules", "torch.nn.utils", "torch.nn.init")
KEYS = tuple(f.name for f in fields(Config) if f.name not in ("config_path", "notes"))
_PATH_KEYS = {"pyscript", "shscript", "output_dir", "checker"}
# Switches of traincheck-collect 0.2.0 that tune how it patches torch; accepted (flag and key), and what we do instead.
TRAINCHECK_SWITCHES = {
    "instr_descriptors": "tensor methods (torch._C.TensorBase.*) called by the program are always logged, at its call sites",
    "profiling": "the program is not run under py-spy; run `py-spy record -- tc-rewrite ...` to profile it",
    "disable_scan_proxy_in_args": "tracked objects among the arguments are found by identity at no measurable cost; proxy_obj_names is kept",
    "no_auto_var_instr": "models_to_track stay tracked at each binding: tracking only reads tensors, so there is nothing to avoid",
    "use_torch_compile": "torch.compile needs no switch: compiled code runs unlogged and tracked models stay tracked",
}
_BOOL_KEYS = {"copy_all_files", "only_instr", "API_dump_stack_trace", "use_full_instr", "debug_mode", "log_import_time_calls",
              "track_inner_updates", "plain_traces", "rewrite_frameworks", "check", *TRAINCHECK_SWITCHES}
_STR_LIST_KEYS = {"modules_to_instr", "models_to_track", "rewrite_libraries"}


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a mapping"}.get(
        type(value), type(value).__name__
    ) if value is not None else "null"


class _Validator:
    def __init__(self, where: str, base: Path) -> None:
        self.where = where  # "config.yaml" or "command line"
        self.base = base  # what relative paths are relative to
        self.notes: list[str] = []

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where}: {key}: {problem}")

    def value(self, key: str, raw: Any) -> Any:
        if key in _BOOL_KEYS:
            if not isinstance(raw, bool):
                raise self.fail(key, f"expected true or false, got {_type_name(raw)} {raw!r}")
            return raw
        if key in _PATH_KEYS:
            if not isinstance(raw, str) or not raw.strip():
                raise self.fail(key, f"expected a path, got {_type_name(raw)} {raw!r}")
            return (self.base / Path(raw).expanduser()).resolve()
        if key in _STR_LIST_KEYS:
            items = self._str_list(key, raw)
            for item in items:
                if not _DOTTED.match(item):
                    raise self.fail(key, f"{item!r} is not a dotted Python name")
            return tuple(items)
        if key == "invariants":
            return tuple((self.base / Path(p).expanduser()).resolve() for p in self._str_list(key, raw))
        if key == "args":
            if isinstance(raw, (str, int, float)) and not isinstance(raw, bool):
                raise self.fail(key, "expected a list of arguments, e.g. [--epochs, '3']")
            if not isinstance(raw, list) or any(isinstance(a, (list, dict)) or a is None for a in raw):
                raise self.fail(key, f"expected a list of strings, got {_type_name(raw)}")
            return tuple(str(a).lower() if isinstance(a, bool) else str(a) for a in raw)
        if key in ("sampling_interval", "warm_up_steps"):
            if raw is None:
                return None
            if isinstance(raw, bool) or not isinstance(raw, int):
                raise self.fail(key, f"expected an integer, got {_type_name(raw)} {raw!r}")
            low = 1 if key == "sampling_interval" else 0
            if raw < low:
                raise self.fail(key, f"must be at least {low}, got {raw}")
            return raw
        if key in ("model_tracker_style", "tensor_dump_format", "on_violation"):
            allowed = {"model_tracker_style": TRACKER_STYLES, "tensor_dump_format": TENSOR_FORMATS, "on_violation": ON_VIOLATION}[key]
            if raw not in allowed:
                raise self.fail(key, f"expected one of {', '.join(allowed)}, got {raw!r}")
            return raw
        if key == "meta_vars":
            mapping = self._mapping(key, raw)
            for k, v in mapping.items():
                if not isinstance(v, (str, int, float, bool)) and v is not None:
                    raise self.fail(key, f"value of {k!r} must be a string, number or boolean, got {_type_name(v)}")
            return mapping
        if key == "meta_from":
            mapping = self._mapping(key, raw)
            for k, v in mapping.items():
                if not isinstance(v, str) or not _DOTTED.match(v):
                    raise self.fail(key, f"value of {k!r} must name a variable of the script, got {v!r}")
            return mapping
        raise AssertionError(key)

    def _str_list(self, key: str, raw: Any) -> list[str]:
        if isinstance(raw, str):
            self.notes.append(f"{self.where}: {key}: a single name was given where a list belongs; using [{raw}]")
            return [raw]
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise self.fail(key, f"expected a list of strings, got {_type_name(raw)} {raw!r}")
        return list(raw)

    def _mapping(self, key: str, raw: Any) -> dict:
        if not isinstance(raw, dict):
            raise self.fail(key, f"expected a mapping, got {_type_name(raw)} {raw!r}")
        for k in raw:
            if not isinstance(k, str) or not _IDENT.match(k):
                raise self.fail(key, f"{k!r} is not a valid name (letters, digits, _)")
        return dict(raw)


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: YAML error{line}: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: YAML error: {str(exc).splitlines()[0]}") from None
    if data is None:
        raise ConfigError(f"{path}: the config file is empty; it needs at least 'pyscript: train.py'")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys (pyscript: ..., ...), got {_type_name(data)}")
    return data


def _check_keys(data: dict, where: str) -> None:
    for key in data:
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; valid keys: {', '.join(KEYS)}"
            raise ConfigError(f"{where}: unknown key '{key}'{hint}")


def load_config(config_path: Path | None, overrides: dict[str, Any]) -> Config:
    """Read `config_path` (if any), apply `overrides` (command-line flags, which win), validate everything."""
    values: dict[str, Any] = {}
    notes: list[str] = []
    if config_path is not None:
        config_path = Path(config_path).expanduser().resolve()
        data = _read_yaml(config_path)
        _check_keys(data, str(config_path))
        validator = _Validator(str(config_path), config_path.parent)
        values.update({k: validator.value(k, v) for k, v in data.items()})
        notes += validator.notes
    _check_keys(overrides, "command line")
    cli = _Validator("command line", Path.cwd())
    for key, raw in overrides.items():
        if key == "args" and "args" in values:
            values["args"] = values["args"] + cli.value(key, raw) if raw else values["args"]
        elif key == "meta_vars" and "meta_vars" in values:
            values["meta_vars"] = {**values["meta_vars"], **cli.value(key, raw)}
        else:
            values[key] = cli.value(key, raw)
    notes += cli.notes
    notes += [f"{key}: accepted for TrainCheck compatibility; {TRAINCHECK_SWITCHES[key]}" for key in TRAINCHECK_SWITCHES if values.get(key)]
    if "rewrite_libraries" not in values and values.get("pyscript") is not None:
        values["rewrite_libraries"] = default_libraries(str(values["pyscript"].parent))
    config = Config(**values, config_path=config_path, notes=tuple(notes))
    _check_files(config)
    return config


def _check_files(config: Config) -> None:
    if config.pyscript is None:
        if config.shscript is not None:
            raise ConfigError("pyscript: required with shscript, to know which file to instrument")
        raise ConfigError("pyscript: no script given (set 'pyscript' in the config or pass --pyscript)")
    _check_file("pyscript", config.pyscript)
    if config.pyscript.suffix != ".py":
        raise ConfigError(f"pyscript: {config.pyscript} is not a .py file")
    if config.shscript is not None:
        _check_file("shscript", config.shscript)
    for path in config.invariants:
        _check_file("invariants", path)
    checking = config.check or config.on_violation == "stop"
    if checking and not config.invariants:
        raise ConfigError("check: checking while the program runs needs the invariants to check (--invariants FILE)")
    if checking and not config.plain_traces:
        raise ConfigError("check: the checker reads the plain traces; it cannot run with plain_traces: false")
    if checking and config.only_instr:
        raise ConfigError("check: nothing runs with only_instr, so there is nothing to check")
    for name in config.rewrite_libraries:
        _check_library(name, str(config.pyscript.parent))
    if config.output_dir is not None and config.output_dir.exists():  # the run folder itself, as in TrainCheck
        if not config.output_dir.is_dir():
            raise ConfigError(f"output_dir: {config.output_dir} exists and is not a folder")
        if any(config.output_dir.iterdir()):
            raise ConfigError(f"output_dir: {config.output_dir} exists and is not empty; give a new or empty folder")


def _check_file(key: str, path: Path) -> None:
    if not path.exists():
        raise ConfigError(f"{key}: file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{key}: not a file: {path}")


def default_libraries(script_dir: str) -> tuple[str, ...]:
    """DEFAULT_LIBRARIES that the program can import (a script without torch gets none)."""
    out = []
    for name in DEFAULT_LIBRARIES:
        try:
            _check_library(name, script_dir)
        except ConfigError:
            continue
        out.append(name)
    return tuple(out)


def _check_library(name: str, script_dir: str) -> None:
    """A rewrite_libraries name must be Python source the program can import; found without importing anything."""
    top = name.split(".")[0]
    if top == "traincheck_rewrite":
        raise ConfigError(f"rewrite_libraries: {name!r} is this tool's own package and cannot be rewritten")
    if top in sys.stdlib_module_names:
        raise ConfigError(f"rewrite_libraries: {name!r} is in the standard library; only installed libraries are rewritten")
    from .runtime.libraries import NEVER_REWRITTEN, covered

    if covered(name, NEVER_REWRITTEN):
        raise ConfigError(f"rewrite_libraries: {name!r} is never rewritten (the call hook and torch.compile run it)")
    spec = PathFinder.find_spec(top, [script_dir, *sys.path])
    parts = name.split(".")
    for i in range(1, len(parts)):
        package = spec.submodule_search_locations if spec is not None else None
        spec = PathFinder.find_spec(".".join(parts[: i + 1]), package) if package is not None else None
    if spec is None:
        raise ConfigError(f"rewrite_libraries: no module named {name!r}")
    if spec.origin and spec.origin.endswith(tuple(EXTENSION_SUFFIXES)):
        raise ConfigError(f"rewrite_libraries: {name!r} is a compiled extension, not Python source")
