"""Settings of the audit's methods and metrics, given on the command line
(``--method-option integrated_gradients.n_steps=32``, ``--metric-option
sensitivity.n_samples=20``) or in a TOML file (``--config audit.toml``)::

    [methods.integrated_gradients]
    n_steps = 32
    baseline = "blur"

    [metrics.sensitivity]
    n_samples = 20

Each method or metric declares its settings as :class:`Setting` values (name,
default, a parser that checks a value and says what it expected, help).
:func:`resolve` fills every declared setting: its default, overridden by a
file's value, overridden by the command line's. A resolved setting is a JSON
value (bool, int, float, str), as it is echoed into ``summary.json`` and the
run's fingerprint.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from .config import AuditError

# A parser takes what was given (a str from the command line, or a TOML
# value) and returns the checked JSON value, or raises ValueError with what
# it expected.
Parse = Callable[[Any], Any]
Declared = Mapping[str, Sequence["Setting"]]  # method or metric name -> its settings
Resolved = Dict[str, Dict[str, Any]]  # method or metric name -> setting name -> value


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting of a method or metric: ``default`` must be what ``parse`` returns for it."""

    name: str
    default: Any
    parse: Parse
    help: str


def integer(minimum: int) -> Parse:
    """Parser of an integer ``>= minimum`` (text like ``"32"`` or a TOML integer)."""
    def parse(value: Any) -> int:
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer >= {minimum}")
        return value
    return parse


def number(minimum: float = -math.inf, above: bool = False) -> Parse:
    """Parser of a finite number ``>= minimum`` (``> minimum`` when ``above``), as a float."""
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"
    what = "a finite number" + ("" if minimum == -math.inf else f" {bound}")

    def parse(value: Any) -> float:
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"expected {what}")
        value = float(value)
        if not math.isfinite(value) or value < minimum or (above and value == minimum):
            raise ValueError(f"expected {what}")
        return value
    return parse


_TRUE = ("true", "yes", "1", "on")
_FALSE = ("false", "no", "0", "off")


def boolean(value: Any) -> bool:
    """Parser of a boolean: a TOML boolean, or the text true/false (yes/no, 1/0, on/off)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError("expected true or false")


def choice(*names: str) -> Parse:
    """Parser of one of ``names``."""
    def parse(value: Any) -> str:
        if isinstance(value, str) and value.strip() in names:
            return value.strip()
        raise ValueError(f"expected one of {', '.join(names)}")
    return parse


def choice_or_number(names: Sequence[str], minimum: float = -math.inf) -> Parse:
    """Parser of one of ``names`` or a finite number ``>= minimum`` (a float)."""
    of_names, of_number = choice(*names), number(minimum)

    def parse(value: Any) -> Any:
        try:
            return of_names(value)
        except ValueError:
            pass
        try:
            return of_number(value)
        except ValueError:
            bound = "" if minimum == -math.inf else f" >= {minimum:g}"
            raise ValueError(f"expected one of {', '.join(names)} or a number{bound}") from None
    return parse


def parse_assignments(items: Sequence[str], option: str) -> Dict[str, Dict[str, str]]:
    """``["name.key=value", ...]`` as ``{name: {key: value}}`` (values still text;
    a later item overrides an earlier one). Bad items raise AuditError naming ``option``."""
    out: Dict[str, Dict[str, str]] = {}
    for item in items:
        target, sep, value = item.partition("=")
        name, dot, key = target.strip().partition(".")
        if not sep or not dot or not name or not key.strip():
            raise AuditError(f"{option}: expected NAME.KEY=VALUE (e.g. integrated_gradients.n_steps=32), got {item!r}")
        out.setdefault(name, {})[key.strip()] = value.strip()
    return out


_CONFIG_TABLES = ("methods", "metrics")


def load_config_file(path: str) -> Dict[str, Dict[str, Dict[str, Any]]]:
    """``{"methods": {name: {key: value}}, "metrics": {...}}`` from a TOML file with
    ``[methods.NAME]`` and ``[metrics.NAME]`` tables (both optional). Other
    top-level keys, or a NAME that is not a table, raise AuditError naming ``--config``."""
    import tomllib

    option = f"--config {path}"
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except OSError as e:
        raise AuditError(f"--config: cannot read {path}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise AuditError(f"{option}: not valid TOML: {e}") from None
    unknown = [k for k in document if k not in _CONFIG_TABLES]
    if unknown:
        raise AuditError(f"{option}: unknown top-level table {', '.join(map(repr, unknown))}; "
                         f"expected only [methods.NAME] and [metrics.NAME] tables")
    out: Dict[str, Dict[str, Dict[str, Any]]] = {}
    for table in _CONFIG_TABLES:
        entries = document.get(table, {})
        if not isinstance(entries, dict) or any(not isinstance(s, dict) for s in entries.values()):
            raise AuditError(f"{option}: expected [{table}.NAME] tables of KEY = VALUE settings under {table!r}")
        out[table] = {name: dict(settings) for name, settings in entries.items()}
    return out


def _listing(settings: Sequence[Setting]) -> str:
    return ", ".join(f"{s.name} (default {_shown(s.default)})" for s in settings) or "none"


def _shown(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def resolve(declared: Declared, given: Mapping[str, Mapping[str, Any]], option: str,
            base: Optional[Resolved] = None) -> Resolved:
    """Every declared name's settings: ``base``'s values (default: the declared
    defaults) with ``given``'s (``{name: {key: value}}``, text or TOML values)
    parsed over them. An unknown name or key, or a bad value, raises AuditError
    naming ``option`` and what was expected. Neither ``given`` nor ``base`` is modified."""
    unknown = [n for n in given if n not in declared]
    if unknown:
        raise AuditError(f"{option}: unknown {', '.join(map(repr, unknown))}; available: {', '.join(declared)}")
    out = {name: dict(base[name]) if base is not None else {s.name: s.default for s in settings}
           for name, settings in declared.items()}
    for name, values in given.items():
        by_key = {s.name: s for s in declared[name]}
        for key, value in values.items():
            if key not in by_key:
                raise AuditError(f"{option}: {name} has no setting {key!r}; its settings: {_listing(declared[name])}")
            try:
                out[name][key] = by_key[key].parse(value)
            except ValueError as e:
                raise AuditError(f"{option}: {name}.{key}: {e}, got {value!r}") from None
    return out


def describe(declared: Declared, summaries: Mapping[str, str]) -> str:
    """A listing for ``--help``/``--methods list``: every name with its one-line
    summary, then each setting with its default and help, indented."""
    lines = []
    for name, settings in declared.items():
        summary = summaries.get(name)
        lines.append(f"{name}: {summary}" if summary else name)
        lines.extend(f"    {name}.{s.name} = {_shown(s.default)}  {s.help}" for s in settings)
    return "\n".join(lines)

