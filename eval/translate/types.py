"""The type language of translated problems: inferred from a Python problem's annotations and its
tests' values, then spelled by each target language.

Static targets need every parameter and the return value typed; a type that stays ``any`` or
becomes a union they cannot spell makes the problem untranslatable for them (with a reason).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any


class Untranslatable(Exception):
    """A problem (or one target's version of it) that cannot be translated faithfully; the message says why."""


@dataclass(frozen=True)
class Ty:
    """A type: ``kind`` is int, float, str, bool, none, list, tuple, dict, optional, union or any; ``args``
    are the element types (list: 1, dict: 2, optional: 1, tuple and union: any number)."""

    kind: str
    args: tuple[Ty, ...] = ()

    def __str__(self) -> str:
        return self.kind + (f"[{', '.join(map(str, self.args))}]" if self.args else "")

    def contains(self, kind: str) -> bool:
        """Whether ``kind`` appears anywhere in this type."""
        return self.kind == kind or any(a.contains(kind) for a in self.args)


ANY, INT, FLOAT, STR, BOOL, NONE = Ty("any"), Ty("int"), Ty("float"), Ty("str"), Ty("bool"), Ty("none")
SCALARS = {"int": INT, "float": FLOAT, "str": STR, "bool": BOOL, "None": NONE}
GENERICS = {"List": "list", "list": "list", "Tuple": "tuple", "tuple": "tuple", "Dict": "dict", "dict": "dict"}


def list_of(t: Ty) -> Ty:
    """list[t]."""
    return Ty("list", (t,))


def optional(t: Ty) -> Ty:
    """t or None (None stays none; an optional stays as it is)."""
    return t if t.kind in ("optional", "none", "any") else Ty("optional", (t,))


def from_annotation(node: ast.expr | None) -> Ty:
    """The type a Python annotation names; what it leaves open (``list``, ``Any``, no annotation) is ``any``."""
    if node is None:
        return ANY
    if isinstance(node, ast.Constant) and node.value is None:
        return NONE
    if isinstance(node, ast.Name):
        if node.id in SCALARS:
            return SCALARS[node.id]
        if node.id in GENERICS:
            kind = GENERICS[node.id]
            return Ty(kind, {"list": (ANY,), "dict": (ANY, ANY)}.get(kind, ()))
        return ANY
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        name = node.value.id
        items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        args = tuple(from_annotation(i) for i in items)
        if name == "Optional":
            return optional(args[0])
        if name == "Union":
            return union(args)
        if name in GENERICS:
            kind = GENERICS[name]
            if kind == "tuple" and len(items) == 2 and isinstance(items[1], ast.Constant) and items[1].value is Ellipsis:
                return list_of(args[0])  # Tuple[T, ...]: a sequence of any length
            return Ty(kind, args)
    return ANY


def union(types: tuple[Ty, ...]) -> Ty:
    """Types joined one by one (see :func:`unify`)."""
    out = ANY
    for t in types:
        out = unify(out, t)
    return out


def of_value(value: Any) -> Ty:
    """The type of a test's value (an empty container's elements are ``any``)."""
    if value is None:
        return NONE
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    if isinstance(value, list):
        return list_of(union(tuple(of_value(v) for v in value)))
    if isinstance(value, tuple):
        return Ty("tuple", tuple(of_value(v) for v in value))
    if isinstance(value, dict):
        return Ty("dict", (union(tuple(of_value(k) for k in value)), union(tuple(of_value(v) for v in value.values()))))
    raise Untranslatable(f"a test value of type {type(value).__name__} ({value!r:.40})")


def unify(a: Ty, b: Ty) -> Ty:
    """The narrowest type holding both: int and float join as float, None makes an optional, tuples of
    different lengths (or a tuple and a list) join as a list; anything else irreconcilable is a union."""
    if a == b or b.kind == "any":
        return a
    if a.kind == "any":
        return b
    if a.kind == "none" or b.kind == "none":
        return optional(b if a.kind == "none" else a)
    if a.kind == "optional" or b.kind == "optional":
        inner = unify(a.args[0] if a.kind == "optional" else a, b.args[0] if b.kind == "optional" else b)
        return optional(inner) if inner.kind != "union" else inner
    if {a.kind, b.kind} == {"int", "float"}:
        return FLOAT
    if a.kind == b.kind == "tuple" and len(a.args) == len(b.args):
        joined = tuple(unify(x, y) for x, y in zip(a.args, b.args))
        return Ty("tuple", joined)
    if {a.kind, b.kind} <= {"list", "tuple"}:
        elems = union(a.args if a.kind == "tuple" else (a.args[0],)) if a.args else ANY
        elems = unify(elems, union(b.args if b.kind == "tuple" else (b.args[0],)) if b.args else ANY)
        return list_of(elems)
    if a.kind == b.kind == "list" or a.kind == b.kind == "dict":
        return Ty(a.kind, tuple(unify(x, y) for x, y in zip(a.args, b.args)))
    members = set(a.args if a.kind == "union" else (a,)) | set(b.args if b.kind == "union" else (b,))
    return Ty("union", tuple(sorted(members, key=str)))
