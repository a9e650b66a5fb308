"""Plans as YAML: reading with line-numbered, one-line-per-problem errors, and writing."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .analysis_settings import AnalysisSettings
from .model import (
    _SECTION_ID_PATTERN,
    AdaptiveSettings,
    ChannelSetting,
    FocusSettings,
    Loc,
    PlanError,
    PlanProblem,
    ReliabilitySettings,
    RetakeSettings,
    ScanPlan,
    SectionPlan,
    ZStack,
    _FieldProblems,
    _loc_path,
    _show,
)

# ======================================================================= YAML


#: Which model a (index-free) field path leads to, for naming allowed fields.
_MODEL_AT: dict[tuple[str, ...], type[BaseModel]] = {
    (): ScanPlan,
    ("channels",): ChannelSetting,
    ("focus",): FocusSettings,
    ("z_stack",): ZStack,
    ("reliability",): ReliabilitySettings,
    ("retake",): RetakeSettings,
    ("adaptive",): AdaptiveSettings,
    ("sections",): SectionPlan,
    ("analysis",): AnalysisSettings,
}


def _line_of(root: yaml.Node | None, loc: Loc) -> int | None:
    """1-based line of the deepest YAML node that ``loc`` reaches."""
    if root is None:
        return None
    node: yaml.Node = root
    line = root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            found = None
            for key, value in node.value:  # the last duplicate wins, as in PyYAML
                if isinstance(key, yaml.ScalarNode) and key.value == part:
                    found = (key, value)
            if found is None:
                break
            line = found[0].start_mark.line + 1
            node = found[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _describe_error(err: Mapping[str, Any]) -> str:
    """Word one pydantic error as a one-line message for the user."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    value = err.get("input")
    got = f" (got {_show(value)})"
    if kind == "missing":
        # the only tuples in a plan are (x, y) positions
        return "missing y: a position is [x, y]" if loc and loc[-1] == 1 else "required field is missing"
    if kind == "too_long" and isinstance(value, (list, tuple)) and len(value) > 2:
        return f"a position is [x, y]{got}"
    if kind == "extra_forbidden":
        model = _MODEL_AT.get(tuple(p for p in loc[:-1] if isinstance(p, str)))
        allowed = f" (allowed: {', '.join(model.model_fields)})" if model is not None else ""
        return f"unknown field {_show(loc[-1])}{allowed}"
    if kind == "value_error":
        return str(err["msg"]).removeprefix("Value error, ")
    if kind == "greater_than":
        return f"must be > {_show(ctx['gt'])}{got}"
    if kind == "greater_than_equal":
        return f"must be >= {_show(ctx['ge'])}{got}"
    if kind == "less_than":
        return f"must be < {_show(ctx['lt'])}{got}"
    if kind == "less_than_equal":
        return f"must be <= {_show(ctx['le'])}{got}"
    if kind == "literal_error":
        return f"must be {ctx['expected']}{got}"
    if kind == "string_pattern_mismatch" and ctx.get("pattern") == _SECTION_ID_PATTERN:
        return f"may contain only letters, digits, '_', '.' and '-'{got}"
    if kind == "too_short":
        n = ctx.get("actual_length", len(value) if isinstance(value, (list, tuple)) else 0)
        what = {"polygon_um": "vertices", "channels": "channels (a tracer and an anatomy channel)"}
        return f"needs at least {ctx['min_length']} {what.get(str(loc[-1]), 'items')} (got {n})"
    if kind == "tuple_type":
        return f"must be a position [x, y]{got}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"must be a mapping of fields{got}"
    if kind == "list_type":
        return f"must be a list{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be a whole number{got}"
    if kind == "string_type":
        return f"must be text (quote it){got}"
    if kind == "string_too_short":
        return f"must not be empty{got}"
    if kind == "finite_number":
        return f"must be a finite number{got}"
    msg = str(err["msg"])
    msg = msg.replace("Input should be", "must be").replace("Input ", "")
    return f"{msg[:1].lower()}{msg[1:]}{got}"


def _problems_from_validation_error(
    error: ValidationError, *, source: str | None, root: yaml.Node | None
) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    for err in error.errors():
        loc: Loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if err["type"] == "value_error" and isinstance(cause, _FieldProblems):
            for sub_loc, message in cause.problems:
                full = loc + tuple(sub_loc)
                problems.append(PlanProblem(_loc_path(full), message, source, _line_of(root, full)))
            continue
        line = _line_of(root, loc) if root is not None else None
        problems.append(PlanProblem(_loc_path(loc), _describe_error(err), source, line))
    problems.sort(key=lambda p: p.line if p.line is not None else 0)
    return problems


def plan_from_dict(data: Any, *, source: str | None = None) -> ScanPlan:
    """Validate plain data (e.g. from the GUI or JSON) into a plan.

    Raises
    ------
    PlanError
        One problem per invalid field, naming the field and the value.
    """
    return _validate(data, source=source, root=None)


def _validate(data: Any, *, source: str | None, root: yaml.Node | None) -> ScanPlan:
    if not isinstance(data, Mapping):
        kind = "an empty document" if data is None else f"a {type(data).__name__}"
        line = _line_of(root, ()) if root is not None else None
        raise PlanError(
            [
                PlanProblem(
                    "",
                    f"a plan must be a mapping of fields (name, output, channels, sections, ...), got {kind}",
                    source,
                    line,
                )
            ]
        )
    try:
        return ScanPlan.model_validate(data)
    except ValidationError as e:
        raise PlanError(_problems_from_validation_error(e, source=source, root=root)) from None


def _duplicate_keys(node: yaml.Node | None, source: str) -> list[PlanProblem]:
    problems: list[PlanProblem] = []
    stack = [node] if node is not None else []
    seen_nodes: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen_nodes:  # aliases share nodes
            continue
        seen_nodes.add(id(n))
        if isinstance(n, yaml.MappingNode):
            keys: dict[str, int] = {}
            for key, value in n.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        problems.append(
                            PlanProblem(
                                "",
                                f"duplicate key {key.value!r} (first on line {keys[key.value]})",
                                source,
                                key.start_mark.line + 1,
                            )
                        )
                    else:
                        keys[key.value] = key.start_mark.line + 1
                stack.append(value)
        elif isinstance(n, yaml.SequenceNode):
            stack.extend(n.value)
    return sorted(problems, key=lambda p: p.line or 0)


#: Most values a plan's YAML may expand to once its aliases are followed (a plan of 100
#: sections with 1,000-vertex outlines has about 700,000): more is refused as an alias bomb.
MAX_YAML_VALUES = 2_000_000


def _expanded_size(root: yaml.Node, source: str) -> int:
    """Values the node graph holds once aliases are followed, counted without building them.

    Raises
    ------
    PlanError
        If the count passes :data:`MAX_YAML_VALUES` or an alias refers to a node that contains it.
    """
    sizes: dict[int, int] = {}
    in_progress: set[int] = set()
    # iterative post-order walk: a deep document must not exhaust Python's stack
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if key in sizes:
            continue
        children: list[yaml.Node] = []
        if isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        elif isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        if not children_done:
            if key in in_progress:
                line = node.start_mark.line + 1
                raise PlanError(
                    [PlanProblem("", "a YAML alias refers to a node that contains it", source, line)]
                )
            in_progress.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        in_progress.discard(key)
        size = 1 + sum(sizes.get(id(c), 0) for c in children)
        if size > MAX_YAML_VALUES:
            raise PlanError(
                [
                    PlanProblem(
                        "",
                        f"the YAML's aliases expand to more than {MAX_YAML_VALUES:,} values (an alias "
                        "bomb?); write the plan without such nested aliases",
                        source,
                        node.start_mark.line + 1,
                    )
                ]
            )
        sizes[key] = size
    return sizes.get(id(root), 0)


def plan_from_yaml(text: str, source: str = "<string>") -> ScanPlan:
    """Read a plan from YAML text.

    Parameters
    ----------
    text : str
        The YAML document.
    source : str
        Name used in error messages (usually the file's path).

    Raises
    ------
    PlanError
        For YAML syntax errors (with the line and column), duplicate keys,
        and every invalid field (with the line of the field, its path and the
        value). Never a raw traceback.
    """
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is not None:
            _expanded_size(root, source)
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = str(e.problem or e.context or "cannot parse")
        if e.problem and e.context:
            ctx_mark = e.context_mark
            started = f", which starts on line {ctx_mark.line + 1}" if ctx_mark is not None else ""
            what += f" ({e.context}{started})"
        if mark is None:
            raise PlanError([PlanProblem("", f"invalid YAML: {what}", source)]) from None
        raise PlanError(
            [PlanProblem("", f"invalid YAML (column {mark.column + 1}): {what}", source, mark.line + 1)]
        ) from None
    except yaml.YAMLError as e:
        raise PlanError([PlanProblem("", f"invalid YAML: {e}", source)]) from None
    finally:
        loader.dispose()
    if duplicates := _duplicate_keys(root, source):
        raise PlanError(duplicates)
    return _validate(data, source=source, root=root)


def load_plan(path: str | Path) -> ScanPlan:
    """Read a plan from a YAML file.

    Raises
    ------
    PlanError
        If the file cannot be read or the plan is invalid; the message names
        ``path`` and the line of each problem.
    """
    p = Path(path)
    try:
        if p.is_dir():
            raise PlanError([PlanProblem("", "is a folder, not a plan file", str(p))])
        if p.stat().st_size > MAX_PLAN_FILE_BYTES:
            raise PlanError(
                [
                    PlanProblem(
                        "",
                        f"is {p.stat().st_size:,} bytes; a plan is at most {MAX_PLAN_FILE_BYTES:,}",
                        str(p),
                    )
                ]
            )
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PlanError([PlanProblem("", "plan file not found", str(p))]) from None
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise PlanError([PlanProblem("", f"cannot read plan file: {reason}", str(p))]) from None
    return resolve_plan_paths(plan_from_yaml(text, source=str(p)), p.parent)


#: Largest plan file read (bytes): far more than any slide's sections need.
MAX_PLAN_FILE_BYTES = 64 * 1024**2


def resolve_plan_paths(plan: ScanPlan, base_dir: str | Path) -> ScanPlan:
    """The plan with its relative paths made absolute against ``base_dir`` (the plan file's folder).

    ``output``, ``hardware_config`` (when the plan names one) and the
    analysis' ``flat_fields`` written relative to the plan mean the files
    beside the plan, wherever the command runs; ``~`` is expanded.
    """
    base = Path(base_dir).expanduser().absolute()

    def resolve(p: Path) -> Path:
        p = Path(p).expanduser()
        return p if p.is_absolute() else base / p

    update: dict[str, Any] = {"output": resolve(plan.output)}
    if "hardware_config" in plan.model_fields_set:
        update["hardware_config"] = resolve(plan.hardware_config)
    if plan.analysis.flat_fields:
        flats = {ch: resolve(f) for ch, f in plan.analysis.flat_fields.items()}
        update["analysis"] = plan.analysis.model_copy(update={"flat_fields": flats})
    return plan.model_copy(update=update)


def save_plan(plan: ScanPlan, path: str | Path) -> None:
    """Write a plan as YAML (atomically: a reader never sees half a file).

    Raises
    ------
    PlanError
        If the file cannot be written.
    """
    p = Path(path)
    text = plan.to_yaml()
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise PlanError([PlanProblem("", f"cannot write plan file: {e.strerror or e}", str(p))]) from None
