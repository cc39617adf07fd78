"""YAML configuration -> pydantic models, with errors a user can act on.

Every config section is a :class:`StrictModel` (unknown keys are errors, so a typo never
silently falls back to a default). :func:`load_yaml` turns YAML syntax errors and validation
errors into one :class:`ConfigError` naming the file, the line, the dotted key, what was expected
and, for unknown keys, the closest valid key. Relative paths in a config file are resolved
against the file's folder (not the working directory) so a config means the same wherever it is
run from.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from advface.errors import ConfigError
from advface.paths import default_cache_dir, default_data_dir

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base of every config section: unknown keys are rejected, and so is true/false where a
    number belongs (pydantic would read ``batch_size: true`` as 1)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_flag_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            annotation = cls.model_fields[info.field_name].annotation
            kinds = set(typing.get_args(annotation)) or {annotation}
            if bool not in kinds and kinds & {int, float}:
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


def _resolve_path(value: Path, info: ValidationInfo) -> Path:
    value = value.expanduser()
    base = (info.context or {}).get("base_dir") if isinstance(info.context, dict) else None
    if base is not None and not value.is_absolute():
        return Path(base) / value
    return value


#: A path field: ``~`` expanded; relative paths resolved against the config file's folder.
ConfigPath = Annotated[Path, AfterValidator(_resolve_path)]


class DataConfig(StrictModel):
    """Where the data is and how the closed-set split is drawn (see ``make_closed_set_split``)."""

    data_dir: ConfigPath | None = Field(
        None, description="LFW folder or archive; default $ADVFACE_DATA or ../shared/data/lfw")
    cache_dir: ConfigPath | None = Field(
        None, description="cache for extracted archives; default $ADVFACE_CACHE or "
        "~/.cache/advface")
    min_images: int = Field(2, ge=2, description="people with fewer images become distractors")
    probes_per_person: int = Field(1, ge=1, description="probe images held out per person")
    probe_fraction: float | None = Field(
        None, gt=0, lt=1, description="if set, hold out this fraction of each person's images")
    distractors: bool = Field(True, description="put images of the other people in the gallery")
    seed: int = Field(0, ge=0, description="split seed")

    def split_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`advface.data.splits.make_closed_set_split`."""
        return {
            "min_images": self.min_images,
            "probes_per_person": self.probes_per_person,
            "probe_fraction": self.probe_fraction,
            "distractors": self.distractors,
            "seed": self.seed,
        }

    def resolved_data_dir(self) -> Path:
        return self.data_dir if self.data_dir is not None else default_data_dir()

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else default_cache_dir()


# --------------------------------------------------------------------------- loading


def load_yaml(path: str | Path, model_cls: type[M]) -> M:
    """Read ``path`` and validate it as ``model_cls``; any problem is one :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("config file not found", path=path,
                          fix="check the path (or create the file; see the example configs)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read config file ({err})", path=path,
                          fix="save it as UTF-8 text") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(
            f"YAML syntax error at {where}{problem}", path=path,
            fix="fix the YAML syntax there (indent with spaces, 'key: value', quote strings "
            "containing ':' or '#')",
        ) from err
    return parse_config({} if data is None else data, model_cls, path=path,
                        lines=_key_lines(text))


def parse_config(
    data: Any,
    model_cls: type[M],
    *,
    path: Path | None = None,
    lines: dict[tuple, int] | None = None,
) -> M:
    """Validate already-parsed data (e.g. a YAML section or CLI overrides) as ``model_cls``."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"the config must be a mapping of keys to values, got {type(data).__name__}",
            path=path, fix=f"write 'key: value' lines; valid keys: {_keys(model_cls)}",
        )
    context = {"base_dir": path.parent} if path is not None else None
    try:
        return model_cls.model_validate(data, context=context)
    except ValidationError as err:
        raise _config_error(err, data, model_cls, path, lines or {}) from None


def to_yaml(model: BaseModel) -> str:
    """The config as YAML (paths as strings), e.g. to store the exact config a run used."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def _keys(model_cls: type[BaseModel]) -> str:
    return ", ".join(model_cls.model_fields)


def _key_lines(text: str) -> dict[tuple, int]:
    """(key path) -> 1-based line of that key in the YAML text, for pointing at errors."""
    out: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return out

    def walk(node: yaml.Node | None, prefix: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                k = (*prefix, key.value)
                out[k] = key.start_mark.line + 1
                walk(value, k)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                out[(*prefix, i)] = item.start_mark.line + 1
                walk(item, (*prefix, i))

    walk(root, ())
    return out


def _data_loc(loc: tuple, data: Any, keep_last: bool) -> tuple:
    """Drop pydantic's union tags from ``loc``: keep only parts that address the input data."""
    out: list = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        in_dict = isinstance(cur, dict) and part in cur
        in_list = isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur)
        if in_dict or in_list:
            out.append(part)
            cur = cur[part]
        elif last and keep_last:
            out.append(part)
    return tuple(out)


def _dotted(loc: tuple) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _model_at(model_cls: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The model class that holds the keys at ``loc`` (following nested fields)."""
    current: Any = model_cls
    for part in loc:
        if isinstance(part, int):
            current = _first_model(current, container_ok=True)
            continue
        model = _first_model(current)
        if model is None or part not in model.model_fields:
            return None
        current = model.model_fields[part].annotation
    return _first_model(current)


def _first_model(annotation: Any, container_ok: bool = False) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) or container_ok or origin in (list, dict):
        for arg in typing.get_args(annotation):
            found = _first_model(arg)
            if found is not None:
                return found
    return None


def _config_error(err: ValidationError, data: dict, model_cls: type[BaseModel],
                  path: Path | None, lines: dict[tuple, int]) -> ConfigError:
    found: list[tuple[int, str, str]] = []
    for e in err.errors(include_url=False):
        kind = e["type"]
        loc = _data_loc(tuple(e["loc"]), data, keep_last=kind in ("missing", "extra_forbidden"))
        key = _dotted(loc)
        line = (lines.get(loc) or lines.get(loc[:-1]) or 0) if loc else 0
        where = f"line {line}: " if line else ""
        if kind == "extra_forbidden":
            parent = _model_at(model_cls, loc[:-1])
            valid = list(parent.model_fields) if parent is not None else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.5)
            hint = f" (did you mean {_dotted((*loc[:-1], close[0]))!r}?)" if close else ""
            under = f" under {_dotted(loc[:-1])!r}" if loc[:-1] else ""
            found.append((line, f"{where}unknown key {key!r}{hint}",
                          f"valid keys{under}: {', '.join(valid)}"))
        elif kind == "missing":
            found.append((line, f"{where}required key {key!r} is missing", f"add {key!r}"))
        elif kind == "value_error":
            # A validator's own sentence says what is wrong and what to do: not "expected".
            msg = str(e["msg"]).removeprefix("Value error, ")
            at = f"{key!r}: " if loc else ""
            found.append((line, f"{where}{at}{msg}", "change the config as the message says"))
        else:
            expected = _expected(e)
            found.append((line, f"{where}key {key!r}: expected {expected}, got {e.get('input')!r}",
                          f"set {key!r} to {expected}"))
    found.sort(key=lambda item: item[0])
    n = len(found)
    message = f"invalid config ({n} problem{'s' if n > 1 else ''}):\n" + "\n".join(
        f"  - {text}" for _, text, _ in found)
    fixes = dict.fromkeys(fix for _, _, fix in found)
    return ConfigError(message, path=path, fix="; ".join(fixes))


_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number", "bool_parsing": "true or false",
    "bool_type": "true or false", "string_type": "a string", "path_type": "a path",
    "list_type": "a list", "dict_type": "a mapping of keys", "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys",
    "string_pattern_mismatch": "a name without / or \\ that does not start with '.'",
    "too_short": "a non-empty list",
}
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def _expected(e: Any) -> str:
    """What a key expects, phrased for the user (from pydantic's error type and context)."""
    kind, ctx = e["type"], e.get("ctx") or {}
    if kind in _EXPECTED:
        return _EXPECTED[kind]
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()), "?")
        return f"a number {_BOUNDS[kind]} {bound}"
    msg = str(e["msg"])
    for prefix in ("Input should be ", "Value error, "):
        if msg.startswith(prefix):
            return msg[len(prefix):]
    return msg[0].lower() + msg[1:] if msg else "a valid value"
