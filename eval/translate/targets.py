"""Target languages of the HumanEval translation: how each spells types, values, the prompt and the tests.

The prompt is the entry point's doc comment (the Python docstring with its example calls
rewritten into the language) and its signature, open: a completion is the function's body,
and the tests begin by closing the function. The tests compare ``candidate(args)`` with the
expected value for every case; where the return type holds a float they compare within the
case's tolerance. The last act of the tests is the sandbox's proof (eval/languages.py).
"""

from __future__ import annotations

import math
from typing import Any

from lathe.eval.translate.source import Case, SourceProblem
from lathe.eval.translate.types import Ty, Untranslatable, of_value, unify

JS_SAFE_INT = 2**53  # beyond this a JavaScript number loses integer precision
INT64 = 2**63
BRACED_UNICODE = "\\u{{{:x}}}"  # JavaScript, TypeScript and Rust: \u{1f600}
JAVA_UNICODE = "\\u{:04x}"
OCTAL = "\\{:03o}"  # a hex escape in C++ would swallow the hex digits that follow it


def _int_in(value: int, bound: int) -> str:
    if not -bound <= value < bound:
        raise Untranslatable(f"the integer {value} does not fit the target's integers")
    return str(value)


def _float(value: float) -> str:
    if not math.isfinite(value):
        raise Untranslatable(f"the float {value} has no literal")
    text = repr(float(value))
    return text if any(c in text for c in ".e") else text + ".0"


def _escaped(text: str, unicode_escape: str, control: str = "\\x{:02x}") -> str:
    """A double-quoted string literal: quotes, backslashes and control characters escaped; non-ASCII
    characters escaped with ``unicode_escape`` (formatted with the code point) or kept when it is empty."""
    named = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
    out = []
    for ch in text:
        if ch in named:
            out.append(named[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(control.format(ord(ch)))
        elif ord(ch) > 0x7E and unicode_escape:
            out.append(unicode_escape.format(ord(ch)))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


class Target:
    """One target language (subclasses fill in the spelling)."""

    name: str  # the benchmark's language, as eval/languages.py registers it
    comment_open, comment_line, comment_close = "/**", " * ", " */"
    reserved: frozenset[str] = frozenset()  # words a parameter cannot be called

    def ident(self, name: str) -> str:
        """A parameter's name, with a trailing underscore where the language reserves it (C++'s ``operator``)."""
        return name + "_" if name in self.reserved else name

    # --- what subclasses spell --------------------------------------------------------------
    def type(self, t: Ty) -> str:
        """The type's spelling (static targets refuse ``any`` and unions)."""
        raise NotImplementedError

    def literal(self, value: Any, t: Ty) -> str:
        """A literal of ``value`` as a ``t``."""
        raise NotImplementedError

    def signature(self, sp: SourceProblem) -> str:
        """The function's opening line(s), ending with the open brace."""
        raise NotImplementedError

    def tests(self, sp: SourceProblem) -> str:
        """The closing brace of the function, then code that checks every case and ends with the proof's call."""
        raise NotImplementedError

    def header(self, sp: SourceProblem) -> str:
        """What precedes the doc comment (imports)."""
        return ""

    def default_body(self, sp: SourceProblem) -> str:
        """A body that compiles and returns the type's default value: a wrong solution for the tests' own tests."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------
    def call(self, sp: SourceProblem, args: tuple[Any, ...]) -> str:
        """``name(arg, ...)`` in this language."""
        return f"{sp.name}({', '.join(self.literal(v, t) for v, (_, t) in zip(args, sp.params))})"

    def doc(self, sp: SourceProblem) -> list[str]:
        """The docstring with its example calls written in this language (an example whose values do not
        fit the inferred types stays as it was)."""
        lines = list(sp.doc)
        for ex in sp.examples:
            try:
                call = self.call(sp, ex.args)
                expected = self.literal(ex.expected, unify(sp.returns, of_value(ex.expected))) if ex.shows_result else None
            except Untranslatable:
                continue
            if ex.style == "doctest":
                lines[ex.line] = f"{ex.indent}>>> {call}"
                if expected is not None:
                    lines[ex.line + 1] = ex.indent + expected
            else:
                lines[ex.line] = f"{ex.indent}{call} == {expected}"
        return lines

    def doc_comment(self, sp: SourceProblem, indent: str = "") -> str:
        """The docstring as this language's doc comment (a ``*/`` inside cannot end it, a trailing backslash
        cannot splice the next line into a ``//`` comment)."""
        lines = [line.replace("*/", "*\\/").rstrip().rstrip("\\") for line in self.doc(sp)]
        body = [indent + (self.comment_line + line).rstrip() for line in lines]
        return (
            "\n".join(
                filter(
                    None,
                    [
                        indent + self.comment_open if self.comment_open else "",
                        *body,
                        indent + self.comment_close if self.comment_close else "",
                    ],
                )
            )
            + "\n"
        )

    def prompt(self, sp: SourceProblem) -> str:
        """Header, doc comment and the open signature: what the model continues."""
        return self.header(sp) + self.doc_comment(sp) + self.signature(sp) + "\n"

    def check_types(self, sp: SourceProblem) -> None:
        """Every type the problem uses is one this language can spell."""
        for t in [t for _, t in sp.params] + [sp.returns]:
            self.type(t)

    def translate(self, sp: SourceProblem) -> dict[str, Any]:
        """The problem in this language: task_id, entry_point, prompt, test (or :class:`Untranslatable`)."""
        self.check_types(sp)
        return {"task_id": sp.task_id, "entry_point": sp.name, "prompt": self.prompt(sp), "test": self.tests(sp)}

    def expected(self, sp: SourceProblem, case: Case) -> str:
        """The case's expected value as a literal of the return type."""
        return self.literal(case.expected, sp.returns)


# --- JavaScript and TypeScript -------------------------------------------------------------------
JS_EQUAL = """function lathe_equal(a, b, tol) {
  if (typeof a === "number" && typeof b === "number") return Math.abs(a - b) <= tol;
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => lathe_equal(x, b[i], tol));
  if (a !== null && b !== null && typeof a === "object" && typeof b === "object" && !Array.isArray(a) && !Array.isArray(b)) {
    const ka = Object.keys(a).sort(), kb = Object.keys(b).sort();
    return lathe_equal(ka, kb, tol) && ka.every((k) => lathe_equal(a[k], b[k], tol));
  }
  return a === b;
}
function lathe_check(actual, expected, tol, test) {
  if (!lathe_equal(actual, expected, tol)) {
    throw new Error("AssertionError: test " + test + ": expected " + JSON.stringify(expected) + ", got " + JSON.stringify(actual));
  }
}
"""


class JavaScript(Target):
    """Node.js. Python's None is ``undefined`` (what a function that returns nothing gives); tuples are arrays,
    dicts objects; numbers compare within the tolerance (a JavaScript number does not know int from float)."""

    name = "javascript"
    max_int = JS_SAFE_INT
    reserved = frozenset(
        "arguments await break case catch class const continue debugger default delete do else enum eval export "
        "extends false finally for function if implements import in instanceof interface let new null package "
        "private protected public return static super switch this throw true try typeof var void while with yield".split()
    )

    def type(self, t: Ty) -> str:
        return "any"

    def literal(self, value: Any, t: Ty) -> str:
        if value is None:
            return "undefined"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            return _int_in(value, self.max_int)
        if isinstance(value, float):
            return _float(value)
        if isinstance(value, str):
            return _escaped(value, BRACED_UNICODE)
        elem = lambda i: t.args[0] if t.kind == "list" else t.args[i] if t.kind == "tuple" and i < len(t.args) else Ty("any")  # noqa: E731
        if isinstance(value, (list, tuple)):
            return "[" + ", ".join(self.literal(v, elem(i)) for i, v in enumerate(value)) + "]"
        if isinstance(value, dict):
            key_t, val_t = t.args if t.kind == "dict" else (Ty("any"), Ty("any"))
            return "{" + ", ".join(f"{self.literal(str(k), key_t)}: {self.literal(v, val_t)}" for k, v in value.items()) + "}"
        raise Untranslatable(f"no literal for {value!r:.40}")

    def check_types(self, sp: SourceProblem) -> None:
        for case in sp.cases:  # dict keys become strings: only string keys survive the trip
            for v in (*case.args, case.expected):
                if isinstance(v, dict) and not all(isinstance(k, str) for k in v):
                    raise Untranslatable("a dict with non-string keys (an object's keys are strings)")

    def params(self, sp: SourceProblem) -> str:
        return ", ".join(self.ident(name) for name, _ in sp.params)

    def signature(self, sp: SourceProblem) -> str:
        return f"function {sp.name}({self.params(sp)}) {{"

    def equal_helpers(self) -> str:
        return JS_EQUAL

    def default_body(self, sp: SourceProblem) -> str:
        return "  return undefined;\n"

    def tests(self, sp: SourceProblem) -> str:
        lines = ["}", "", self.equal_helpers(), f"const candidate = {sp.name};"]
        lines += [
            f"lathe_check(candidate({', '.join(self.literal(v, t) for v, (_, t) in zip(c.args, sp.params))}), "
            f"{self.expected(sp, c)}, {c.tolerance!r}, {i});"
            for i, c in enumerate(sp.cases, 1)
        ]
        return "\n".join(lines) + "\n"


class TypeScript(JavaScript):
    """TypeScript, type-checked by tsc: numbers, strings, arrays, tuples, string-keyed records, ``T | undefined``."""

    name = "typescript"

    def type(self, t: Ty) -> str:
        simple = {"int": "number", "float": "number", "str": "string", "bool": "boolean", "none": "undefined"}
        if t.kind in simple:
            return simple[t.kind]
        if t.kind == "list":
            inner = self.type(t.args[0])
            return f"({inner})[]" if "|" in inner else f"{inner}[]"
        if t.kind == "tuple":
            return "[" + ", ".join(self.type(a) for a in t.args) + "]"
        if t.kind == "dict":
            return f"{{[key: {self.type(t.args[0])}]: {self.type(t.args[1])}}}"
        if t.kind == "optional":
            return f"{self.type(t.args[0])} | undefined"
        raise Untranslatable(f"TypeScript has no faithful type for {t}")

    def check_types(self, sp: SourceProblem) -> None:
        Target.check_types(self, sp)
        JavaScript.check_types(self, sp)

    def params(self, sp: SourceProblem) -> str:
        return ", ".join(f"{self.ident(name)}: {self.type(t)}" for name, t in sp.params)

    def signature(self, sp: SourceProblem) -> str:
        return f"function {sp.name}({self.params(sp)}): {self.type(sp.returns)} {{"

    def default_body(self, sp: SourceProblem) -> str:
        return "  return undefined as any;\n"

    def equal_helpers(self) -> str:
        typed = JS_EQUAL.replace("lathe_equal(a, b, tol)", "lathe_equal(a: any, b: any, tol: number): boolean")
        typed = typed.replace("(x, i) =>", "(x: any, i: number) =>").replace("(k) =>", "(k: string) =>")
        return typed.replace(
            "lathe_check(actual, expected, tol, test)", "lathe_check(actual: any, expected: any, tol: number, test: number): void"
        )


# --- statically typed targets --------------------------------------------------------------------
ARITY = {"list": 1, "dict": 2, "optional": 1, "tuple": 2}


class Static(Target):
    """A statically typed target: types spelled from ``scalars`` and ``generics`` (formats of the element
    types' spellings), literals from the small pieces each language fills in. Tuples are pairs only."""

    title: str  # the language's name in messages
    scalars: dict[str, str]  # int, float, str, bool -> the type
    generics: dict[str, str]  # list, dict, optional, tuple -> a format of the element types

    def element(self, t: Ty) -> str:
        """A type inside a generic (Java boxes its primitives there)."""
        return self.type(t)

    def type(self, t: Ty) -> str:
        if t.kind in self.scalars:
            return self.scalars[t.kind]
        if t.kind in self.generics and len(t.args) == ARITY[t.kind]:
            return self.generics[t.kind].format(*(self.element(a) for a in t.args))
        raise Untranslatable(f"{self.title} has no faithful type for {t}")

    def literal(self, value: Any, t: Ty) -> str:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if t.kind == "optional":
            return self.none(t) if value is None else self.some(self.literal(value, t.args[0]), t)
        if t.kind == "bool" and isinstance(value, bool):
            return "true" if value else "false"
        if t.kind == "int" and number and isinstance(value, int):
            return self.integer(value)
        if t.kind == "float" and number:
            return _float(value)
        if t.kind == "str" and isinstance(value, str):
            return self.string(value)
        if t.kind == "list" and isinstance(value, (list, tuple)):
            return self.sequence([self.literal(v, t.args[0]) for v in value], t)
        if t.kind == "tuple" and isinstance(value, tuple) and len(value) == len(t.args) == 2:
            return self.pair(self.literal(value[0], t.args[0]), self.literal(value[1], t.args[1]), t)
        if t.kind == "dict" and isinstance(value, dict):
            return self.mapping([(self.literal(k, t.args[0]), self.literal(v, t.args[1])) for k, v in value.items()], t)
        raise Untranslatable(f"no {self.title} literal of {value!r:.40} as {t}")

    # the pieces: each gets the element literals already spelled, and the whole type
    def none(self, t: Ty) -> str:
        """An empty optional."""
        raise NotImplementedError

    def some(self, inner: str, t: Ty) -> str:
        """An optional holding ``inner``."""
        raise NotImplementedError

    def integer(self, value: int) -> str:
        """A 64-bit integer."""
        return _int_in(value, INT64)

    def string(self, value: str) -> str:
        """A string."""
        raise NotImplementedError

    def sequence(self, items: list[str], t: Ty) -> str:
        """A list of ``items``."""
        raise NotImplementedError

    def pair(self, first: str, second: str, t: Ty) -> str:
        """A two-element tuple."""
        raise NotImplementedError

    def mapping(self, items: list[tuple[str, str]], t: Ty) -> str:
        """A dict of (key, value) literals."""
        raise NotImplementedError

    def params(self, sp: SourceProblem) -> str:
        """The signature's parameter list (C-style ``type name``; Rust overrides)."""
        return ", ".join(f"{self.type(t)} {self.ident(name)}" for name, t in sp.params)


# --- Java ----------------------------------------------------------------------------------------
JAVA_EQUAL = """    static boolean latheEqual(Object a, Object b, double tol) {
        if (a instanceof Double x && b instanceof Double y) return Math.abs(x - y) <= tol;
        if (a instanceof List<?> x && b instanceof List<?> y) {
            if (x.size() != y.size()) return false;
            for (int i = 0; i < x.size(); i++) if (!latheEqual(x.get(i), y.get(i), tol)) return false;
            return true;
        }
        if (a instanceof Optional<?> x && b instanceof Optional<?> y)
            return x.isPresent() == y.isPresent() && (x.isEmpty() || latheEqual(x.get(), y.get(), tol));
        if (a instanceof Pair<?, ?> x && b instanceof Pair<?, ?> y)
            return latheEqual(x.first(), y.first(), tol) && latheEqual(x.second(), y.second(), tol);
        return Objects.equals(a, b);
    }
    static void latheCheck(Object actual, Object expected, double tol, int test) {
        if (!latheEqual(actual, expected, tol))
            throw new AssertionError("test " + test + ": expected " + expected + ", got " + actual);
    }
"""
JAVA_PAIR = "    record Pair<A, B>(A first, B second) {}\n\n"


def _uses_pairs(sp: SourceProblem) -> bool:
    """Whether the problem's types hold a tuple (Java's prompt then declares the Pair record)."""
    return any(t.contains("tuple") for t in [sp.returns, *(t for _, t in sp.params)])


class Java(Static):
    """Java 17, in ``class Problem``: long, double, String, boolean, ArrayList, HashMap, Optional, and
    a ``Pair`` record for two-element tuples."""

    name, title = "java", "Java"
    reserved = frozenset(
        "abstract assert boolean break byte case catch char class const continue default do double else enum "
        "extends final finally float for goto if implements import instanceof int interface long native new "
        "package private protected public return short static strictfp super switch synchronized this throw "
        "throws transient try void volatile while true false null var record yield".split()
    )
    scalars = {"int": "long", "float": "double", "str": "String", "bool": "boolean"}
    boxed = {"int": "Long", "float": "Double", "str": "String", "bool": "Boolean"}
    generics = {"list": "ArrayList<{}>", "dict": "HashMap<{}, {}>", "optional": "Optional<{}>", "tuple": "Pair<{}, {}>"}

    def element(self, t: Ty) -> str:
        return self.boxed.get(t.kind) or self.type(t)

    def none(self, t: Ty) -> str:
        return "Optional.empty()"

    def some(self, inner: str, t: Ty) -> str:
        return f"Optional.of({inner})"

    def integer(self, value: int) -> str:
        return super().integer(value) + "L"

    def string(self, value: str) -> str:
        if any(ord(c) > 0xFFFF for c in value):
            raise Untranslatable("a string with characters outside the Basic Multilingual Plane (Java counts UTF-16 units)")
        return _escaped(value, JAVA_UNICODE, OCTAL)

    def sequence(self, items: list[str], t: Ty) -> str:
        return f"new {self.type(t)}(Arrays.asList({', '.join(items)}))" if items else f"new {self.type(t)}()"

    def pair(self, first: str, second: str, t: Ty) -> str:
        return f"new {self.type(t)}({first}, {second})"

    def mapping(self, items: list[tuple[str, str]], t: Ty) -> str:
        return f"new {self.type(t)}(Map.ofEntries({', '.join(f'Map.entry({k}, {v})' for k, v in items)}))"

    def header(self, sp: SourceProblem) -> str:
        pair = JAVA_PAIR if _uses_pairs(sp) else ""
        return "import java.util.*;\nimport java.util.stream.*;\n\nclass Problem {\n" + pair

    def prompt(self, sp: SourceProblem) -> str:
        return self.header(sp) + self.doc_comment(sp, "    ") + self.signature(sp) + "\n"

    def signature(self, sp: SourceProblem) -> str:
        return f"    public static {self.type(sp.returns)} {sp.name}({self.params(sp)}) {{"

    def default_body(self, sp: SourceProblem) -> str:
        zero = {"int": "0L", "float": "0.0", "bool": "false", "str": '""'}.get(sp.returns.kind, "null")
        return f"        return {zero};\n"

    def tests(self, sp: SourceProblem) -> str:
        pair = "" if _uses_pairs(sp) else JAVA_PAIR.rstrip("\n") + "\n"  # latheEqual names Pair: declared once, here if not above
        lines = ["    }", "", "    public static void main(String[] args) throws Exception {"]
        lines += [
            f"        latheCheck({self.call(sp, c.args)}, {self.expected(sp, c)}, {c.tolerance!r}, {i});"
            for i, c in enumerate(sp.cases, 1)
        ]
        lines += ["        LatheProof.run(args);", "    }", "", JAVA_EQUAL + pair + "}"]
        return "\n".join(lines) + "\n"


# --- C++ -----------------------------------------------------------------------------------------
CPP_INCLUDES = ["algorithm", "cmath", "cstdlib", "map", "numeric", "optional", "set", "string", "tuple", "vector"]
CPP_EQUAL = """template <class T> bool lathe_equal(const T& a, const T& b, double) { return a == b; }
bool lathe_equal(const double& a, const double& b, double tol) { return std::fabs(a - b) <= tol; }
template <class T> bool lathe_equal(const std::vector<T>& a, const std::vector<T>& b, double tol) {
    if (a.size() != b.size()) return false;
    for (size_t i = 0; i < a.size(); i++) if (!lathe_equal(a[i], b[i], tol)) return false;
    return true;
}
template <class T> bool lathe_equal(const std::optional<T>& a, const std::optional<T>& b, double tol) {
    return a.has_value() == b.has_value() && (!a.has_value() || lathe_equal(*a, *b, tol));
}
template <class A, class B> bool lathe_equal(const std::tuple<A, B>& a, const std::tuple<A, B>& b, double tol) {
    return lathe_equal(std::get<0>(a), std::get<0>(b), tol) && lathe_equal(std::get<1>(a), std::get<1>(b), tol);
}
template <class T> void lathe_check(const T& actual, const T& expected, double tol, int test) {
    if (!lathe_equal(actual, expected, tol)) {
        std::fprintf(stderr, "AssertionError: test %d failed\\n", test);
        std::exit(1);
    }
}
"""


class Cpp(Static):
    """C++17: long, double, std::string, bool, std::vector, std::map, std::optional, std::tuple."""

    name, title = "cpp", "C++"
    reserved = frozenset(
        "alignas alignof and and_eq asm auto bitand bitor bool break case catch char class compl const "
        "constexpr const_cast continue decltype default delete do double dynamic_cast else enum explicit "
        "export extern false float for friend goto if inline int long mutable namespace new noexcept not "
        "not_eq nullptr operator or or_eq private protected public register reinterpret_cast return short "
        "signed sizeof static static_assert static_cast struct switch template this thread_local throw true "
        "try typedef typeid typename union unsigned using virtual void volatile wchar_t while xor xor_eq".split()
    )
    comment_open, comment_line, comment_close = "", "// ", ""
    scalars = {"int": "long", "float": "double", "str": "std::string", "bool": "bool"}
    generics = {
        "list": "std::vector<{}>",
        "dict": "std::map<{}, {}>",
        "optional": "std::optional<{}>",
        "tuple": "std::tuple<{}, {}>",
    }

    def none(self, t: Ty) -> str:
        return f"{self.type(t)}()"

    def some(self, inner: str, t: Ty) -> str:
        return f"{self.type(t)}({inner})"

    def integer(self, value: int) -> str:
        return super().integer(value) + "L"

    def string(self, value: str) -> str:
        if any(ord(c) > 0x7E for c in value):
            raise Untranslatable("a non-ASCII string (std::string counts bytes, Python counts characters)")
        return f"std::string({_escaped(value, '', OCTAL)})"

    def sequence(self, items: list[str], t: Ty) -> str:
        return f"{self.type(t)}({{{', '.join(items)}}})"

    def pair(self, first: str, second: str, t: Ty) -> str:
        return f"{self.type(t)}({first}, {second})"

    def mapping(self, items: list[tuple[str, str]], t: Ty) -> str:
        return f"{self.type(t)}({{{', '.join(f'{{{k}, {v}}}' for k, v in items)}}})"

    def header(self, sp: SourceProblem) -> str:
        return "".join(f"#include <{h}>\n" for h in CPP_INCLUDES) + "\n"

    def signature(self, sp: SourceProblem) -> str:
        return f"{self.type(sp.returns)} {sp.name}({self.params(sp)}) {{"

    def default_body(self, sp: SourceProblem) -> str:
        return "    return {};\n"

    def tests(self, sp: SourceProblem) -> str:
        lines = [
            "}",
            "",
            "#include <cstdio>",
            CPP_EQUAL,
            "void lathe_proof(char** argv);",
            "",
            "int main(int argc, char** argv) {",
            f"    auto candidate = {sp.name};",
        ]
        lines += [
            f"    lathe_check<{self.type(sp.returns)}>(candidate({', '.join(self.literal(v, t) for v, (_, t) in zip(c.args, sp.params))}), "
            f"{self.expected(sp, c)}, {c.tolerance!r}, {i});"
            for i, c in enumerate(sp.cases, 1)
        ]
        lines += ["    lathe_proof(argv);", "    return 0;", "}"]
        return "\n".join(lines) + "\n"


# --- Rust ----------------------------------------------------------------------------------------
RUST_EQUAL = """trait LatheEqual { fn lathe_equal(&self, other: &Self, tol: f64) -> bool; }
impl LatheEqual for f64 { fn lathe_equal(&self, other: &Self, tol: f64) -> bool { (self - other).abs() <= tol } }
impl LatheEqual for i64 { fn lathe_equal(&self, other: &Self, _: f64) -> bool { self == other } }
impl LatheEqual for bool { fn lathe_equal(&self, other: &Self, _: f64) -> bool { self == other } }
impl LatheEqual for String { fn lathe_equal(&self, other: &Self, _: f64) -> bool { self == other } }
impl<T: LatheEqual> LatheEqual for Vec<T> {
    fn lathe_equal(&self, other: &Self, tol: f64) -> bool {
        self.len() == other.len() && self.iter().zip(other).all(|(a, b)| a.lathe_equal(b, tol))
    }
}
impl<T: LatheEqual> LatheEqual for Option<T> {
    fn lathe_equal(&self, other: &Self, tol: f64) -> bool {
        match (self, other) { (Some(a), Some(b)) => a.lathe_equal(b, tol), (None, None) => true, _ => false }
    }
}
impl<A: LatheEqual, B: LatheEqual> LatheEqual for (A, B) {
    fn lathe_equal(&self, other: &Self, tol: f64) -> bool { self.0.lathe_equal(&other.0, tol) && self.1.lathe_equal(&other.1, tol) }
}
impl<K: std::hash::Hash + Eq, V: LatheEqual> LatheEqual for HashMap<K, V> {
    fn lathe_equal(&self, other: &Self, tol: f64) -> bool {
        self.len() == other.len() && self.iter().all(|(k, v)| other.get(k).map_or(false, |w| v.lathe_equal(w, tol)))
    }
}
fn lathe_check<T: LatheEqual + std::fmt::Debug>(actual: T, expected: T, tol: f64, test: u32) {
    if !actual.lathe_equal(&expected, tol) {
        eprintln!("AssertionError: test {}: expected {:?}, got {:?}", test, expected, actual);
        std::process::exit(1);
    }
}
"""


class Rust(Static):
    """Rust 2021: i64, f64, String, bool, Vec, HashMap, Option, tuples."""

    name, title = "rust", "Rust"
    reserved = frozenset(
        "as async await break const continue crate dyn else enum extern false fn for if impl in let loop "
        "match mod move mut pub ref return self Self static struct super trait true type unsafe use where while "
        "abstract become box do final macro override priv typeof unsized virtual yield try".split()
    )
    comment_open, comment_line, comment_close = "", "/// ", ""
    scalars = {"int": "i64", "float": "f64", "str": "String", "bool": "bool"}
    generics = {"list": "Vec<{}>", "dict": "HashMap<{}, {}>", "optional": "Option<{}>", "tuple": "({}, {})"}

    def none(self, t: Ty) -> str:
        return "None"

    def some(self, inner: str, t: Ty) -> str:
        return f"Some({inner})"

    def string(self, value: str) -> str:
        return f"String::from({_escaped(value, BRACED_UNICODE)})"

    def sequence(self, items: list[str], t: Ty) -> str:
        return f"vec![{', '.join(items)}]" if items else f"Vec::<{self.type(t.args[0])}>::new()"

    def pair(self, first: str, second: str, t: Ty) -> str:
        return f"({first}, {second})"

    def mapping(self, items: list[tuple[str, str]], t: Ty) -> str:
        return f"{self.type(t).replace('<', '::<', 1)}::from([{', '.join(f'({k}, {v})' for k, v in items)}])"

    def params(self, sp: SourceProblem) -> str:
        return ", ".join(f"{self.ident(name)}: {self.type(t)}" for name, t in sp.params)

    def header(self, sp: SourceProblem) -> str:
        return "use std::collections::HashMap;\n\n"

    def signature(self, sp: SourceProblem) -> str:
        return f"fn {sp.name}({self.params(sp)}) -> {self.type(sp.returns)} {{"

    def default_body(self, sp: SourceProblem) -> str:
        return "    Default::default()\n"

    def tests(self, sp: SourceProblem) -> str:
        lines = ["}", "", RUST_EQUAL, "fn main() {", f"    let candidate = {sp.name};"]
        lines += [
            f"    lathe_check({self.call(sp, c.args).replace(sp.name + '(', 'candidate(', 1)}, {self.expected(sp, c)}, "
            f"{c.tolerance!r}, {i});"
            for i, c in enumerate(sp.cases, 1)
        ]
        lines += ["    lathe_proof();", "}"]
        return "\n".join(lines) + "\n"


TARGETS: dict[str, Target] = {t.name: t for t in (JavaScript(), TypeScript(), Java(), Cpp(), Rust())}
