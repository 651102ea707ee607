"""Mining supervised pairs from Python source: exact prompt/response text, doctests as runnable tests, the Spark job."""

from __future__ import annotations

import pytest

from lathe.core.errors import InputError
from lathe.data.mining import MinedPair, mine_functions, mine_pairs, pair_id

SOURCE = '''import math


@functools.lru_cache(maxsize=None)
def hypot(a: float,
          b: float) -> float:  # the decorator and the comment belong to the prompt
    """Length of the hypotenuse.

    >>> hypot(3, 4)
    5.0
    """
    # a comment before the first statement belongs to the response
    squares = a * a + b * b
    return math.sqrt(squares)


def undocumented(x):
    return x
'''


def test_a_documented_function_becomes_exactly_its_prompt_and_response() -> None:
    [pair] = mine_functions(SOURCE, "geometry.py")
    assert pair.name == "hypot" and pair.path == "geometry.py"
    assert pair.prompt == (
        "@functools.lru_cache(maxsize=None)\n"
        "def hypot(a: float,\n"
        "          b: float) -> float:  # the decorator and the comment belong to the prompt\n"
        '    """Length of the hypotenuse.\n'
        "\n"
        "    >>> hypot(3, 4)\n"
        "    5.0\n"
        '    """\n'
    )
    assert pair.response == (
        "    # a comment before the first statement belongs to the response\n"
        "    squares = a * a + b * b\n"
        "    return math.sqrt(squares)\n"
    )


METHODS = '''class Stack:
    """Not a function: a class docstring gives no pair."""

    def push(self, item):
        """Put item on top."""
        self.items.append(item)

    @property
    def help(self) -> str:
        """A text that is indented less than the method inside its string."""
        return """usage:
  push ITEM
"""

    class Node:
        async def fetch(self, url):
            """Fetch url."""
            async with session.get(url) as r:
                return await r.text()

    def outer(self):
        """Outer."""
        def inner():
            """Nested in a function: not mined."""
            return 1
        return inner


async def main():
    """Run it."""
    await Stack().push(1)'''  # no final newline: the pair still ends in one


def test_methods_and_async_functions_are_dedented_to_top_level_text() -> None:
    pairs = mine_functions(METHODS, "stack.py")
    assert [p.name for p in pairs] == ["Stack.push", "Stack.help", "Stack.Node.fetch", "Stack.outer", "main"]
    push, help_, fetch, outer, main = pairs
    assert push.prompt == 'def push(self, item):\n    """Put item on top."""\n'
    assert push.response == "    self.items.append(item)\n"
    # The string's continuation lines are indented less than the method: left as written.
    assert (
        help_.prompt
        == '@property\ndef help(self) -> str:\n    """A text that is indented less than the method inside its string."""\n'
    )
    assert help_.response == '    return """usage:\n  push ITEM\n"""\n'
    assert fetch.prompt == 'async def fetch(self, url):\n    """Fetch url."""\n'
    assert fetch.response == "    async with session.get(url) as r:\n        return await r.text()\n"
    assert "def inner():" in outer.response  # part of outer's body, never a pair of its own
    assert main.response == "    await Stack().push(1)\n"
    for pair in pairs:
        compile(pair.prompt + pair.response, pair.name, "exec")  # each is valid top-level code


def test_crlf_and_a_byte_order_mark_do_not_stop_mining() -> None:
    [pair] = mine_functions('\ufeffdef f():\r\n    """Doc."""\r\n    return 1\r\n')
    assert pair == MinedPair("f", "", 'def f():\n    """Doc."""\n', "    return 1\n", "")


@pytest.mark.parametrize(
    "body",
    ["", "    pass\n", "    ...\n", "    pass\n    ...\n"],
    ids=["docstring-only", "pass", "ellipsis", "pass-and-ellipsis"],
)
def test_no_pair_without_a_body_beyond_the_docstring(body: str) -> None:
    assert mine_functions(f'def stub(x):\n    """A stub."""\n{body}') == []


def test_no_pair_without_a_docstring_or_when_code_shares_the_docstring_line() -> None:
    assert mine_functions("def f(x):\n    return x\n") == []
    assert mine_functions('def f(x):\n    "Doc."; return x\n') == []
    assert mine_functions("def f(x):\n    'not a docstring: %s' % x\n    return x\n") == []  # an expression, not a constant


@pytest.mark.parametrize("source", ["def f(:\n    pass\n", "x = 'unterminated\n", "a\x00b = 1\n", "(" * 300 + ")" * 300 + "\n"])
def test_unparseable_source_gives_no_pairs(source: str) -> None:
    assert mine_functions(source) == []


DOCTESTED = '''def chunks(items, size):
    """Split items into lists of at most size elements.

    >>> chunks([1, 2, 3], 2)
    [[1, 2], [3]]
    >>> for c in chunks("abc", 1):
    ...     print(c)
    ['a']
    ['b']
    ['c']
    >>> chunks([], 0)
    Traceback (most recent call last):
    ...
    ValueError: size must be positive
    """
    if size <= 0:
        raise ValueError("size must be positive")
    return [list(items[i : i + size]) for i in range(0, len(items), size)]
'''


def test_doctest_examples_become_tests_that_pass_with_the_body_and_fail_without_it(capsys: pytest.CaptureFixture[str]) -> None:
    [pair] = mine_functions(DOCTESTED)
    assert ">>> chunks([1, 2, 3], 2)\\n[[1, 2], [3]]\\n" in pair.tests  # the examples, kept as doctest text
    exec(compile(pair.prompt + pair.response + "\n" + pair.tests, "chunks.py", "exec"), {})

    wrong = pair.response.replace("range(0, len(items), size)", "range(0, len(items) - 1, size)")
    with pytest.raises(AssertionError, match="2 of 3 doctest examples of chunks failed"):
        exec(compile(pair.prompt + wrong + "\n" + pair.tests, "chunks.py", "exec"), {})
    assert "Expected:\n    [[1, 2], [3]]\nGot:\n    [[1, 2]]" in capsys.readouterr().out  # doctest's own report

    no_raise = pair.response.replace('raise ValueError("size must be positive")', "return []")
    with pytest.raises(AssertionError, match="1 of 3"):
        exec(compile(pair.prompt + no_raise + "\n" + pair.tests, "chunks.py", "exec"), {})


def test_a_methods_doctests_run_with_its_directives_and_an_empty_docstring_gives_no_tests() -> None:
    source = '''class Words:
    def shout(self, text):
        """Upper-case text.

        >>> Words().shout("long " * 20)  # doctest: +ELLIPSIS
        'LONG LONG ...LONG '
        """
        return text.upper()
'''
    [pair] = mine_functions(source)
    assert "# doctest: +ELLIPSIS" in pair.tests
    exec(compile(source + "\n" + pair.tests, "words.py", "exec"), {})  # a method's examples need its class
    assert mine_functions('def f():\n    """No examples here."""\n    return 1\n')[0].tests == ""
    # Examples doctest cannot parse leave the pair without tests (they could never pass).
    assert mine_functions('def f():\n    """\n    >>>f()\n    1\n    """\n    return 1\n')[0].tests == ""
    assert mine_functions('def f():\n    """\n      >>> f()\n    1\n    """\n    return 1\n')[0].tests == ""


def test_pair_ids_are_stable_and_tell_same_named_functions_apart() -> None:
    assert pair_id("file-1", "C.x") == pair_id("file-1", "C.x")
    assert len({pair_id("file-1", "C.x"), pair_id("file-1", "C.x", 1), pair_id("file-2", "C.x"), pair_id("file-1", "C.y")}) == 4


@pytest.mark.spark
def test_mine_pairs_keeps_python_files_and_gives_one_row_per_pair(spark) -> None:
    prop = '''class C:
    @property
    def x(self):
        """Get x."""
        return self._x

    @x.setter
    def x(self, value):
        """Set x."""
        self._x = value
'''
    rows = [
        ("a", "geometry.py", SOURCE, "python"),
        ("b", "prop.py", prop, "python"),
        ("c", "notes.js", "function f() { /** Doc. */ return 1 }", "javascript"),
        ("d", "broken.py", "def f(:\n", "python"),
        ("e", "empty.py", None, "python"),
    ]
    df = spark.createDataFrame(rows, "id string, path string, content string, lang string")
    out = sorted(mine_pairs(df).collect(), key=lambda r: (r.source_id, r.pair_id))
    assert [(r.source_id, r.path, r.name) for r in out] == [
        ("a", "geometry.py", "hypot"),
        ("b", "prop.py", "C.x"),
        ("b", "prop.py", "C.x"),
    ]
    [hypot] = [r for r in out if r.name == "hypot"]
    assert hypot.pair_id == pair_id("a", "hypot")
    assert (hypot.prompt, hypot.response, hypot.tests) == (lambda p: (p.prompt, p.response, p.tests))(mine_functions(SOURCE)[0])
    assert {r.pair_id for r in out if r.source_id == "b"} == {pair_id("b", "C.x"), pair_id("b", "C.x", 1)}


@pytest.mark.spark
def test_mine_pairs_names_missing_columns(spark) -> None:
    df = spark.createDataFrame([("a", "x")], "id string, content string")
    with pytest.raises(InputError, match=r"needs columns \['path', 'lang'\]"):
        mine_pairs(df)


def test_pairs_carry_their_files_absolute_imports_for_running_their_tests() -> None:
    source = (
        "from __future__ import annotations\nimport os, sys as system\nfrom . import sibling\nfrom collections import (\n"
        '    Counter,\n    deque,\n)\n\ndef count(xs):\n    """Count.\n\n    >>> count(\'aab\')[\'a\']\n    2\n    """\n'
        "    return Counter(xs)\n"
    )
    (pair,) = mine_functions(source)
    assert (
        pair.imports == "from __future__ import annotations\nimport os, sys as system\nfrom collections import Counter, deque\n"
    )
    assert pair.tests and pair.prompt.startswith("def count(xs):")  # the prompt stays the function alone
