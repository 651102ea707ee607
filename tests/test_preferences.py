"""Preference pairs from execution feedback: mined prompts and doctests, completions run in the sandbox."""

from __future__ import annotations

from lathe.data.mining import mine_functions
from lathe.eval.config import SandboxConfig
from lathe.eval.preferences import Problem, execution_pairs

SOURCE = '''
def add(a, b):
    """Add two numbers.

    >>> add(2, 3)
    5
    >>> add(-1, 1)
    0
    """
    return a + b


def double(x):
    """Twice x.

    >>> double(4)
    8
    """
    return 2 * x
'''


def test_passing_completions_are_chosen_over_failing_ones_of_the_same_prompt() -> None:
    mined = {pair.name: pair for pair in mine_functions(SOURCE, "calc.py")}
    assert mined["add"].tests and mined["add"].response == "    return a + b\n"
    problems = [Problem(name, pair.prompt, pair.tests) for name, pair in mined.items()]
    problems.append(Problem("unsampled", mined["add"].prompt, mined["add"].tests))
    right, wrong = "    return a + b\n", "    return a - b\n"
    early_exit = "    import sys\n    sys.exit(0)\n"  # exits 0 before the tests: not a pass
    endless = "    while True:\n        pass\n"
    completions = {
        "add": [wrong, right, early_exit, right, endless],
        "double": ["    return x + x\n", "    return 2 * x\n"],
    }
    pairs, counts = execution_pairs(problems, completions, SandboxConfig(wall_s=3.0, cpu_s=2), workers=2)
    assert [(p.problem_id, p.chosen, p.rejected) for p in pairs] == [("add", right, wrong), ("add", right, early_exit)]
    assert all(p.prompt == mined["add"].prompt for p in pairs)
    assert counts == {"runs": 7, "passed": 4, "failed": 3, "pairs": 2, "no_completions": 1, "all_passed": 1, "all_failed": 0}
    assert pairs[0].as_dict() == {"problem_id": "add", "prompt": mined["add"].prompt, "chosen": right, "rejected": wrong}


def test_a_prompt_whose_completions_all_fail_gives_no_pair_and_is_counted() -> None:
    pair = mine_functions(SOURCE)[1]
    pairs, counts = execution_pairs(
        [Problem("double", pair.prompt, pair.tests)],
        {"double": ["    return x\n", "    return None\n"]},
        SandboxConfig(wall_s=3.0, cpu_s=2),
        workers=1,
        max_pairs_per_problem=1,
    )
    assert pairs == [] and counts["all_failed"] == 1 and counts["failed"] == 2


def test_own_tests_run_with_the_files_imports_and_a_missing_module_only_fails_what_needs_it() -> None:
    from lathe.eval.preferences import guarded_imports, own_tests_pass

    source = (
        "from __future__ import annotations\nimport math\nimport not_installed_anywhere\n\n"
        'def hyp(a, b):\n    """Hypotenuse.\n\n    >>> hyp(3, 4)\n    5.0\n    """\n    return math.sqrt(a * a + b * b)\n\n'
        'def needs(x):\n    """Needs the module.\n\n    >>> needs(1)\n    1\n    """\n    return not_installed_anywhere.f(x)\n'
    )
    pairs = mine_functions(source)
    setup = guarded_imports(pairs[0].imports)
    assert setup.startswith("from __future__ import annotations\n") and "except ImportError" in setup
    problems = [Problem(p.name, p.prompt, p.tests, setup) for p in pairs]
    assert own_tests_pass(problems, {p.name: p.response for p in pairs}, SandboxConfig(), 2) == [True, False]
    # without the file's imports even the first one fails: its body names `math`
    bare = [Problem(p.name, p.prompt, p.tests) for p in pairs]
    assert own_tests_pass(bare, {p.name: p.response for p in pairs}, SandboxConfig(), 2) == [False, False]
