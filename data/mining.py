"""Supervised (prompt, response) pairs mined from Python source, for post-training.

Every documented function is an instruction its author already answered: the signature
and docstring say what to do, the body does it. :func:`mine_functions` turns one file
into such pairs (pure, with ``ast``); :func:`mine_pairs` maps it over a DataFrame of
files. A docstring's doctest examples become the pair's tests, so a later stage can run
a generated body in the sandbox and keep only pairs whose own body passes them.
"""

from __future__ import annotations

import ast
import doctest
import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from lathe.core.errors import InputError

_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class MinedPair:
    """One documented function as a supervised pair; ``prompt + response`` is the function's source."""

    name: str  # qualified within the file: ``f``, ``Class.method``, ``Outer.Inner.method``
    path: str
    prompt: str  # decorators, signature and docstring, ending in a newline
    response: str  # the body after the docstring, ending in a newline
    tests: str  # Python that runs the docstring's doctest examples after the function is defined; "" if none
    imports: str = ""  # the file's module-level absolute imports, one per line: what the body and tests may need


def mine_functions(source: str, path: str = "") -> list[MinedPair]:
    """The supervised pairs of one Python file, in source order; none if it does not parse.

    Functions and methods, sync or async, at module level or in a class body (classes
    nested in classes too) are mined; functions defined inside other functions, or under
    ``if``/``try`` blocks, are not. A function yields a pair when it has a docstring and
    its body after the docstring holds more than ``pass`` or ``...``.

    Text is taken as written, by whole lines: ``prompt`` runs from the first decorator
    (or the ``def``) through the docstring's last line, ``response`` from the next line
    through the function's last statement, so ``prompt + response`` is the function's
    source. Indentation: the indentation of the function's first line (a method's
    ``    ``) is removed from every line that starts with it, so a method reads as a
    top-level function would; lines inside multi-line strings or bracket continuations
    that are indented less keep what they have, which leaves the code valid. Line endings
    become ``\\n``. A function whose docstring shares its last line with code
    (``\"\"\"Doc.\"\"\"; return 1``) cannot be split by lines and yields no pair.
    """
    text = source.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SyntaxWarning on odd escapes does not stop a file from running
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            return []
    lines = io.StringIO(text).readlines()
    imports = module_imports(tree)
    return [
        replace(pair, imports=imports)
        for qualname, node in _functions(tree.body, "")
        if (pair := _pair(node, qualname, lines, path))
    ]


def module_imports(tree: ast.Module) -> str:
    """The module-level absolute imports of a parsed file, one per line (as ``ast.unparse`` writes them).

    A function's body and doctests name what its module imported; run on their own they fail
    with NameError. Relative imports are left out: they only resolve inside their package.
    """
    found = [n for n in tree.body if isinstance(n, ast.Import) or (isinstance(n, ast.ImportFrom) and not n.level)]
    return "".join(ast.unparse(n) + "\n" for n in found)


def _functions(body: list[ast.stmt], prefix: str) -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of the functions of a module or class body, descending into classes only."""
    for node in body:
        if isinstance(node, _FUNCTIONS):
            yield prefix + node.name, node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node.body, f"{prefix}{node.name}.")


def _is_placeholder(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Pass) or (
        isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and stmt.value.value is Ellipsis
    )


def _pair(node: ast.FunctionDef | ast.AsyncFunctionDef, name: str, lines: list[str], path: str) -> MinedPair | None:
    docstring = ast.get_docstring(node)
    rest = node.body[1:]
    if docstring is None or all(_is_placeholder(stmt) for stmt in rest):
        return None
    doc_end = node.body[0].end_lineno
    if doc_end is None or node.end_lineno is None or rest[0].lineno <= doc_end:
        return None
    first = min([node.lineno, *(d.lineno for d in node.decorator_list)])
    start = lines[first - 1]
    indent = start[: len(start) - len(start.lstrip(" \t"))]

    def dedent(chunk: list[str]) -> str:
        return "".join(line[len(indent) :] if line.startswith(indent) else line for line in chunk)

    prompt = dedent(lines[first - 1 : doc_end])
    response = dedent(lines[doc_end : node.end_lineno])
    # The file's last line may lack its newline; the pair's text always ends with one.
    return MinedPair(name, path, _with_newline(prompt), _with_newline(response), doctest_program(docstring, name))


def _with_newline(text: str) -> str:
    return text if text.endswith("\n") else text + "\n"


def doctest_program(docstring: str, name: str) -> str:
    """Python code that runs the doctest examples of ``docstring`` against the names defined before it.

    The examples are kept as doctest text and run by :mod:`doctest` itself rather than
    rewritten as ``assert`` lines, so printed output, expected exceptions, ``<BLANKLINE>``
    and ``# doctest:`` directives mean what they mean to ``python -m doctest``. Appended
    to a program that defines the function (``prompt + response``, or a prompt plus a
    generated body), it exits normally when every example passes and raises
    ``AssertionError`` (doctest's report on stdout) when one fails, which is what the
    sandbox classifies as passed and failed. Empty when the docstring has no examples, or
    examples doctest itself rejects (``>>>1``, a want line indented less than its ``>>>``):
    they would fail whatever the body. Examples that use names defined elsewhere in the
    file (a method's class, a module constant) fail when run beside the function alone.
    """
    try:
        examples = doctest.DocTestParser().get_examples(docstring)
    except ValueError:
        return ""
    if not examples:
        return ""
    text = "".join(_render(example) for example in examples)
    return (
        "import doctest as __lathe_doctest\n"
        f"__lathe_test = __lathe_doctest.DocTestParser().get_doctest({text!r}, dict(globals()), {name!r}, None, 0)\n"
        "__lathe_runner = __lathe_doctest.DocTestRunner(verbose=False)\n"
        "__lathe_runner.run(__lathe_test)\n"
        "if __lathe_runner.failures:\n"
        f"    raise AssertionError(f'{{__lathe_runner.failures}} of {len(examples)} doctest examples of {name} failed')\n"
    )


def _render(example: doctest.Example) -> str:
    """An example back as doctest text without its docstring's indentation (directives stay in its source)."""
    source = example.source.rstrip("\n").split("\n")
    return "".join(f"{'>>>' if i == 0 else '...'} {line}".rstrip(" ") + "\n" for i, line in enumerate(source)) + example.want


PAIRS_SCHEMA = T.StructType(
    [
        T.StructField(name, T.StringType())
        for name in ("pair_id", "source_id", "path", "name", "prompt", "response", "tests", "imports")
    ]
)


def pair_id(source_id: str, name: str, occurrence: int = 0) -> str:
    """Stable id of a pair: a hash of its file's id and the function's qualified name.

    ``occurrence`` (0 for the first) tells apart functions of a file that share a qualified
    name, as a property's getter and setter do.
    """
    key = f"{source_id}\x00{name}" + (f"\x00{occurrence}" if occurrence else "")
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:24]


def mine_pairs(df: DataFrame) -> DataFrame:
    """The pairs (:data:`PAIRS_SCHEMA`) of the Python files among rows (id, path, content, lang).

    The language column is the canonical ``lang`` of clean data (``language`` is accepted
    too); rows whose language is not ``python`` and files without a documented function
    give no pairs.
    """
    lang = next((c for c in ("lang", "language") if c in df.columns), None)
    missing = [c for c in ("id", "path", "content") if c not in df.columns] + ([] if lang else ["lang"])
    if missing:
        raise InputError(
            f"mining pairs needs columns {missing}, which the input lacks (it has {df.columns}); pass clean data (kept/)"
        )
    assert lang is not None  # else `missing` named "lang" above

    def mine(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        for pdf in batches:
            rows = []
            for source_id, path, content in zip(pdf["id"], pdf["path"], pdf["content"]):
                seen: dict[str, int] = {}
                for pair in mine_functions(content or "", path or ""):
                    occurrence = seen[pair.name] = seen.get(pair.name, -1) + 1
                    key = pair_id(source_id, pair.name, occurrence)
                    rows.append((key, source_id, pair.path, pair.name, pair.prompt, pair.response, pair.tests, pair.imports))
            yield pd.DataFrame(rows, columns=PAIRS_SCHEMA.fieldNames())

    python = df.where(F.col(lang) == "python").select("id", "path", "content")
    return python.mapInPandas(mine, PAIRS_SCHEMA)
