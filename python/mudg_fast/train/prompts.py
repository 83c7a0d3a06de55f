"""Class prompts and descriptors as plain strings (no torch).

A prompt is ``template.format(classname)``, e.g. ``"a photo of a {}."`` -> ``"a photo of a
dog."``. A descriptor augments it by replacing the final period (docs/method.rst §2): with
``", which can be any color."`` the prompt becomes ``"a photo of a dog, which can be any
color."``. The empty descriptor ``""`` leaves the prompt as it is.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

__all__ = ["apply_descriptor", "class_prompts", "load_descriptors", "load_classnames"]


def apply_descriptor(prompt: str, descriptor: str) -> str:
    """``prompt`` with its final period replaced by ``descriptor`` (appended when the prompt has
    no final period). ``""`` returns ``prompt`` unchanged."""
    if not descriptor:
        return prompt
    body = prompt.rstrip()
    if body.endswith("."):
        body = body[:-1]
    return body + descriptor


def class_prompts(classnames: Sequence[str], template: str, descriptor: str = "") -> list[str]:
    """One prompt per class, in class order: ``apply_descriptor(template.format(c), descriptor)``.
    ``template`` must contain ``{}`` exactly once."""
    if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"template must contain '{{}}' exactly once, got {template!r}")
    return [apply_descriptor(template.replace("{}", c), descriptor) for c in classnames]


def _read_list(path, what: str, keys: tuple[str, ...]) -> list:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if path.lower().endswith(".json"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from e
        if isinstance(obj, dict):
            key = next((k for k in keys if k in obj), None)
            if key is None:
                raise ValueError(f"{path}: expected a JSON list or an object with one of the keys "
                                 f"{', '.join(keys)}; found keys {', '.join(map(str, obj))}")
            obj = obj[key]
        if not isinstance(obj, list):
            raise ValueError(f"{path}: {what} must be a JSON list, got {type(obj).__name__}")
        return obj
    # Text: one item per line. Only the line break is stripped, since descriptors start with
    # meaningful punctuation and spaces (", which ..."); blank lines are skipped.
    return [line.rstrip("\r\n") for line in text.splitlines() if line.strip()]


def load_descriptors(descriptors, max_descriptors: int | None = None) -> list[str]:
    """Descriptors from a list of strings, or a file: JSON (a list, or an object with a
    ``descriptors`` list whose items are strings or objects with a ``descriptor``/``text`` field)
    or text (one per line). Keeps the file's order (best first) and the first
    ``max_descriptors``. None or an empty list gives ``[]`` (train/evaluate then use the plain
    prompt only). Raises ValueError for non-string items or duplicates."""
    if descriptors is None:
        return []
    if isinstance(descriptors, (str, os.PathLike)):
        items = _read_list(descriptors, "descriptors", ("descriptors", "selected", "items"))
    else:
        items = list(descriptors)
    out = []
    for i, d in enumerate(items):
        if isinstance(d, dict):
            d = next((d[k] for k in ("descriptor", "text") if k in d), None)
        if not isinstance(d, str):
            raise ValueError(f"descriptor {i} must be a string, got {type(d).__name__}")
        out.append(d)
    if len(set(out)) != len(out):
        dup = next(d for d in out if out.count(d) > 1)
        raise ValueError(f"duplicate descriptor {dup!r}")
    if max_descriptors is not None:
        out = out[:max_descriptors]
    return out


def load_classnames(classnames) -> list[str]:
    """Class names from a list, or a file: JSON (a list, or an object with a ``classnames``,
    ``classes`` or ``class_names`` list) or text (one per line, surrounding spaces stripped).
    Raises ValueError for an empty list, non-strings, blank or duplicate names."""
    if isinstance(classnames, (str, os.PathLike)):
        items = _read_list(classnames, "class names", ("classnames", "classes", "class_names"))
        items = [c.strip() if isinstance(c, str) else c for c in items]
    else:
        items = list(classnames)
    if not items:
        raise ValueError("the class list is empty")
    for i, c in enumerate(items):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"class name {i} must be a non-empty string, got {c!r}")
    if len(set(items)) != len(items):
        dup = next(c for c in items if items.count(c) > 1)
        raise ValueError(f"duplicate class name {dup!r}")
    return list(items)
