"""Parse checks: does a file parse in its language?

Python is checked with the interpreter's own parser (``ast``), which is exact; other
languages with tree-sitter grammars bundled in ``tree-sitter-language-pack`` (no download
at run time). Tree-sitter is error-tolerant, so "parses" means the tree has no ERROR or
MISSING node.
"""

from __future__ import annotations

import ast
import warnings
from functools import cache
from typing import Any

# Canonical language -> tree-sitter-language-pack grammar name.
TREE_SITTER_GRAMMARS: dict[str, str] = {
    "javascript": "javascript",
    "typescript": "typescript",
    "c": "c",
    "cpp": "cpp",
    "go": "go",
    "java": "java",
    "rust": "rust",
    "shell": "bash",
    "ruby": "ruby",
    "csharp": "csharp",
}


def supported_languages() -> list[str]:
    """Languages the parse filter can check."""
    return ["python", *TREE_SITTER_GRAMMARS]


@cache
def _parser(grammar: str) -> Any:
    # Imported lazily: Spark workers build a parser once per language per process.
    from tree_sitter_language_pack import get_parser

    return get_parser(grammar)  # type: ignore[arg-type]


def error_fraction(source: bytes, grammar: str) -> float:
    """Share of the file's bytes inside tree-sitter ERROR nodes (a MISSING node counts one byte)."""
    tree = _parser(grammar).parse(source)
    if not tree.root_node.has_error:
        return 0.0
    stack, bad = [tree.root_node], 0
    while stack:
        node = stack.pop()
        if node.type == "ERROR" or node.is_missing:
            bad += max(node.end_byte - node.start_byte, 1)
        elif node.has_error:
            stack.extend(node.children)
    return bad / max(len(source), 1)


def parses(content: str, lang: str, max_error_fraction: float = 0.0) -> bool:
    """True if ``content`` parses as ``lang``; languages without a parser count as parsing.

    Python must parse exactly. For tree-sitter languages, up to ``max_error_fraction`` of
    the bytes may sit in error nodes: grammars do not expand macros (C/C++/CUDA headers)
    and lag new syntax, so a strict check drops valid files, while truncated or mangled
    files have large error regions.
    """
    if lang == "python":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning on odd escapes is not a failure
            try:
                ast.parse(content)
            except (SyntaxError, ValueError, MemoryError, RecursionError):
                return False
        return True
    grammar = TREE_SITTER_GRAMMARS.get(lang)
    if grammar is None:
        return True
    source = content.encode("utf-8", "surrogatepass")
    # `.h` is mapped to C, but half the headers in the wild are C++: accept either grammar.
    grammars = [grammar, "cpp"] if lang == "c" else [grammar]
    return any(error_fraction(source, g) <= max_error_fraction for g in grammars)
