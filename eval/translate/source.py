"""A Python HumanEval problem read for translation: the entry point's signature and docstring, and
its tests reduced to (arguments, expected value) cases with the types both imply.

The tests are read by running the check function's statements one by one in Python (with the
prompt and canonical solution defined, and ``random`` seeded): assignments, imports and loops
are executed, and each assertion on the candidate becomes a case whose values are computed by
Python itself. So ``for x in range(2, 8): assert candidate(x, x + 1) == str(x)`` becomes six
literal cases, and an expected value written as a call of the reference solution is its result.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import random
from dataclasses import dataclass
from typing import Any

from lathe.eval.translate.types import FLOAT, Ty, Untranslatable, from_annotation, of_value, unify

DEFAULT_TOLERANCE = 1e-6  # floats compared with ``==`` in Python are compared within this


@dataclass(frozen=True)
class Case:
    """One test: ``candidate(*args)`` must equal ``expected`` (floats within ``tolerance``)."""

    args: tuple[Any, ...]
    expected: Any
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class Example:
    """A docstring line that shows a call (``>>> f(1, 2)`` followed by its result, or ``f(1, 2) == 3``
    inline): rewritten into each language's syntax."""

    line: int
    indent: str
    args: tuple[Any, ...]
    expected: Any
    style: str  # "doctest" (result on the next line) or "inline" (``f(...) == value`` / ``➞ value``)
    shows_result: bool = True  # False: a doctest call whose next line is not a value


@dataclass(frozen=True)
class SourceProblem:
    """What the targets translate: names, types, the docstring (with its examples located) and the cases."""

    task_id: str
    name: str
    params: tuple[tuple[str, Ty], ...]
    returns: Ty
    doc: list[str]
    examples: tuple[Example, ...]
    cases: tuple[Case, ...]


def _entry(prompt: str, name: str) -> ast.FunctionDef:
    for node in ast.parse(prompt).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise Untranslatable(f"no function {name} in the prompt")


def _candidate_calls(node: ast.AST) -> list[ast.Call]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "candidate"]


def _unwrap(node: ast.expr) -> ast.expr:
    """``tuple(candidate(...))`` / ``list(...)``: the call inside (both sides are compared as sequences)."""
    while (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id in ("tuple", "list")
        and len(node.args) == 1
    ):
        node = node.args[0]
    return node


class _Reader:
    """Runs a check function's statements, collecting a :class:`Case` per assertion on the candidate."""

    def __init__(self, namespace: dict[str, Any]) -> None:
        self.ns = namespace
        self.cases: list[Case] = []

    def value(self, node: ast.expr) -> Any:
        # evaluated by Python itself: arithmetic, comprehensions, calls of the prompt's helpers
        return copy.deepcopy(eval(compile(ast.Expression(node), "<test>", "eval"), self.ns))

    def call(self, node: ast.expr) -> tuple[Any, ...] | None:
        node = _unwrap(node)
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate"):
            return None
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise Untranslatable("a test calls the candidate with keyword or starred arguments")
        return tuple(self.value(a) for a in node.args)

    def statement(self, st: ast.stmt) -> None:
        if isinstance(st, ast.Assert):
            return self.assertion(st.test)
        if isinstance(st, ast.For):
            if st.orelse:
                raise Untranslatable("a test loop has an else branch")
            for item in self.value(st.iter):
                self.bind(st.target, item)
                for inner in st.body:
                    self.statement(inner)
            return None
        if _candidate_calls(st):
            raise Untranslatable(f"a test statement uses the candidate outside an assertion: {ast.unparse(st)[:80]}")
        if isinstance(st, (ast.Assign, ast.Import, ast.ImportFrom, ast.Expr, ast.Pass)):
            with contextlib.redirect_stdout(io.StringIO()):
                exec(compile(ast.Module([st], []), "<test>", "exec"), self.ns)
            return None
        raise Untranslatable(f"a test statement of kind {type(st).__name__}")

    def bind(self, target: ast.expr, item: Any) -> None:
        self.ns["__lathe_item"] = item
        exec(compile(f"{ast.unparse(target)} = __lathe_item", "<test>", "exec"), self.ns)

    def assertion(self, test: ast.expr) -> None:
        if isinstance(test, ast.Constant):
            if test.value:
                return  # `assert True`: no test
            raise Untranslatable("a test asserts a false constant")
        if not _candidate_calls(test):
            if not self.value(test):
                raise Untranslatable(f"an assertion without the candidate fails in Python: {ast.unparse(test)[:80]}")
            return
        args = self.call(test)
        if args is not None:  # assert candidate(...)
            return self.cases.append(Case(args, True))
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and (args := self.call(test.operand)) is not None:
            return self.cases.append(Case(args, False))
        if isinstance(test, ast.Compare) and len(test.ops) == 1:
            left, op, right = test.left, test.ops[0], test.comparators[0]
            if isinstance(op, (ast.Eq, ast.Is)):
                for call, other in ((left, right), (right, left)):
                    if (args := self.call(call)) is not None and not _candidate_calls(other):
                        expected = self.value(_unwrap(other))
                        if isinstance(op, ast.Is) and expected not in (True, False, None):
                            raise Untranslatable("a test compares identity with a value that is not True, False or None")
                        return self.cases.append(Case(args, expected))
            # abs(candidate(...) - expected) < tolerance
            if (
                isinstance(op, (ast.Lt, ast.LtE))
                and isinstance(left, ast.Call)
                and isinstance(left.func, ast.Name)
                and left.func.id == "abs"
                and len(left.args) == 1
                and isinstance(left.args[0], ast.BinOp)
                and isinstance(left.args[0].op, ast.Sub)
                and (args := self.call(left.args[0].left)) is not None
            ):
                return self.cases.append(Case(args, self.value(left.args[0].right), float(self.value(right))))
        raise Untranslatable(f"an assertion of a form no target can check: {ast.unparse(test)[:80]}")


def _examples(doc: list[str], name: str) -> tuple[Example, ...]:
    """The docstring's example calls of the entry point, with literal arguments (others are left as text)."""
    out = []
    for i, line in enumerate(doc):
        stripped = line.strip()
        indent = line[: len(line) - len(line.lstrip())]
        style, expected_text = "", None
        if stripped.startswith(">>> " + name + "("):
            style, call_text = "doctest", stripped[4:]
            nxt = doc[i + 1].strip() if i + 1 < len(doc) else ""
            expected_text = nxt if nxt and not nxt.startswith(">>>") else None
        elif stripped.startswith(name + "(") and ("==" in stripped or "➞" in stripped or "=>" in stripped):
            style = "inline"
            for sep in ("==>", "==", "➞", "=>"):
                if sep in stripped:
                    call_text, expected_text = (s.strip() for s in stripped.split(sep, 1))
                    break
        if not style:
            continue
        try:
            call = ast.parse(call_text, mode="eval").body
            args = tuple(ast.literal_eval(a) for a in call.args) if isinstance(call, ast.Call) and not call.keywords else None
            expected = ast.literal_eval(expected_text) if expected_text is not None else None
        except (SyntaxError, ValueError, TypeError):
            continue
        if args is not None and (expected_text is not None or style == "doctest"):
            out.append(Example(i, indent, args, expected, style, expected_text is not None))
    return tuple(out)


def read_problem(problem: dict[str, Any]) -> SourceProblem:
    """The problem's signature, docstring and test cases, with parameter and return types inferred from
    the annotations and every value the tests pass or expect; :class:`Untranslatable` says why not."""
    name = problem["entry_point"]
    fn = _entry(problem["prompt"], name)
    if fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.args.defaults:
        raise Untranslatable("the entry point has default, variadic or keyword-only parameters")
    namespace: dict[str, Any] = {}
    random.seed(0)  # tests that draw random inputs are translated with one fixed draw
    with contextlib.redirect_stdout(io.StringIO()):
        exec(problem["prompt"] + problem["canonical_solution"], namespace)
        exec(problem["test"], namespace)
    checker = next(n for n in ast.parse(problem["test"]).body if isinstance(n, ast.FunctionDef) and n.name == "check")
    reader = _Reader(namespace)
    for st in checker.body:
        reader.statement(st)
    if not reader.cases:
        raise Untranslatable("the tests check nothing a target can express")
    params = [a.arg for a in fn.args.args]
    types = [from_annotation(a.annotation) for a in fn.args.args]
    returns = from_annotation(fn.returns)
    for case in reader.cases:
        if len(case.args) != len(params):
            raise Untranslatable(f"a test passes {len(case.args)} arguments to {len(params)} parameters")
        types = [unify(t, of_value(v)) for t, v in zip(types, case.args)]
        returns = unify(returns, of_value(case.expected))
    _floats_suffice(reader.cases, types, namespace[name])
    docstring = ast.get_docstring(fn, clean=True) or ""
    helpers = [n.name for n in ast.parse(problem["prompt"]).body if isinstance(n, ast.FunctionDef) and n.name != name]
    if named := [h for h in helpers if h in docstring]:
        raise Untranslatable(f"the docstring relies on the prompt's Python function {named[0]}, which would need translating")
    doc = docstring.splitlines()
    return SourceProblem(
        problem["task_id"], name, tuple(zip(params, types)), returns, doc, _examples(doc, name), tuple(reader.cases)
    )


def _as_floats(value: Any, t: Ty) -> Any:
    """``value`` with every number at a float position of ``t`` made a float."""
    if t == FLOAT and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, list) and t.kind == "list":
        return [_as_floats(v, t.args[0]) for v in value]
    if isinstance(value, tuple) and t.kind == "tuple":
        return tuple(_as_floats(v, a) for v, a in zip(value, t.args))
    if t.kind == "optional" and value is not None:
        return _as_floats(value, t.args[0])
    return value


def close(a: Any, b: Any, tolerance: float = DEFAULT_TOLERANCE) -> bool:
    """Equality as the translated tests check it: numbers within ``tolerance``, containers element by element."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return abs(a - b) <= tolerance
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(close(x, y, tolerance) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tolerance) for k in a)
    return a == b


def _floats_suffice(cases: list[Case], types: list[Ty], reference: Any) -> None:
    """The targets have no integers at float positions (JavaScript has one number type): the reference
    solution must give every case's expected value with those arguments made floats, or the problem
    tells 3 from 3.0 and only Python can state it."""
    if not any(t.contains("float") for t in types):
        return
    for case in cases:
        floats = tuple(_as_floats(v, t) for v, t in zip(case.args, types))
        if floats != case.args or any(type(a) is not type(b) for a, b in zip(floats, case.args)):
            try:
                got = reference(*copy.deepcopy(floats))
            except Exception as exc:  # the reference itself refuses floats
                raise Untranslatable(
                    f"the reference solution fails when integers are passed as floats ({type(exc).__name__})"
                ) from None
            if not close(got, case.expected, case.tolerance):
                raise Untranslatable("the tests tell integers from integral floats (3 from 3.0), which only Python can")
