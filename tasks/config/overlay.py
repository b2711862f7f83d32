"""How a model's overlay (``extends: ../../params.yaml``) lands on what it extends.

Sections merge key by key, except where the overlay says to replace:

- a mapping tagged ``!replace`` replaces the inherited mapping whole
  (``hyperparameters: !replace {C: 0.5}``: none of the inherited hyperparameters stay);
- an explicit empty mapping replaces too (``hyperparameters: {}``: the estimator's defaults);
- what belongs to another estimator or task is not inherited: an overlay that names another
  ``train.estimator`` does not inherit ``train.hyperparameters``, and one that names another
  ``train.task`` does not inherit the metric-bound gate settings (``gates.primary_metric``,
  ``gates.minimums``, the tolerances and parity bounds); the task's defaults apply instead
  (:mod:`tasks.config.defaults`) unless the overlay sets them.
"""

from __future__ import annotations

from typing import Any

import yaml

# gate settings that only make sense for the task (and metric) they were written for
TASK_BOUND: tuple[tuple[str, ...], ...] = (
    ("primary_metric",),
    ("minimums",),
    ("no_regression", "tolerance"),
    ("no_regression", "relative_tolerance"),
    ("shadow", "tolerance"),
    ("prediction_parity", "max_psi"),
    ("prediction_parity", "max_flip_rate"),
)


class Replace(dict[str, Any]):
    """A mapping that replaces the inherited one instead of merging into it (``!replace``)."""


class ParamsLoader(yaml.SafeLoader):
    """YAML's safe loader plus the ``!replace`` tag of overlays."""


def _construct_replace(loader: yaml.SafeLoader, node: yaml.Node) -> Replace:
    if not isinstance(node, yaml.MappingNode):
        raise yaml.constructor.ConstructorError(
            None, None, "!replace tags a mapping (a section or a key holding one)", node.start_mark
        )
    return Replace({str(k): v for k, v in loader.construct_mapping(node, deep=True).items()})


ParamsLoader.add_constructor("!replace", _construct_replace)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that knows ``!replace``."""
    return yaml.load(text, Loader=ParamsLoader)


def _get(raw: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = raw
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _without(raw: dict[str, Any], section: str, path: tuple[str, ...]) -> dict[str, Any]:
    """``raw`` with ``section.<path>`` removed (copies along the way; absent: unchanged)."""
    values = raw.get(section)
    if not isinstance(values, dict):
        return raw
    head, *rest = path
    if head not in values:
        return raw
    if rest:
        inner = values[head]
        if not isinstance(inner, dict):
            return raw
        return {**raw, section: {**values, head: _without({head: inner}, head, tuple(rest))[head]}}
    return {**raw, section: {k: v for k, v in values.items() if k != head}}


def not_inherited(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``base`` without what belongs to an estimator or task the overlay replaces."""
    train = overlay.get("train") if isinstance(overlay.get("train"), dict) else {}
    assert isinstance(train, dict)
    estimator, task = train.get("estimator"), train.get("task")
    if estimator is not None and estimator != _get(base, ("train", "estimator")):
        base = _without(base, "train", ("hyperparameters",))
    if task is not None and task != (_get(base, ("train", "task")) or "binary"):
        for path in TASK_BOUND:
            base = _without(base, "gates", path)
    return base


def merge_sections(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``override`` on top of ``base``: mappings merge key by key, anything else replaces; a
    mapping tagged ``!replace`` or an empty mapping replaces the inherited one."""
    merged = dict(base)
    for key, value in override.items():
        replace = isinstance(value, Replace) or value == {}
        if isinstance(value, dict) and isinstance(merged.get(key), dict) and not replace:
            merged[key] = merge_sections(merged[key], value)
        else:
            merged[key] = plain(value)
    return merged


def merge_overlay(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """The overlay on top of what it extends (see the module's docstring)."""
    return merge_sections(not_inherited(base, overlay), overlay)


def plain(value: Any) -> Any:
    """``value`` with every :class:`Replace` turned into a plain dict."""
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
