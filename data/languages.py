"""Language detection from file names, and mapping of The Stack's language names.

Canonical names are lowercase identifiers (``python``, ``cpp``, ``javascript``...); they
are the values of the ``lang`` column and the keys of per-language config overrides.
"""

from __future__ import annotations

import posixpath

# Extension (lowercase, with dot) -> canonical language.
EXTENSIONS: dict[str, str] = {
    ".py": "python",
    ".pyi": "python",
    ".pyx": "cython",
    ".pxd": "cython",
    ".c": "c",
    ".h": "c",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hpp": "cpp",
    ".hh": "cpp",
    ".hxx": "cpp",
    ".cuh": "cuda",
    ".cu": "cuda",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".tsx": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".java": "java",
    ".kt": "kotlin",
    ".scala": "scala",
    ".go": "go",
    ".rs": "rust",
    ".rb": "ruby",
    ".php": "php",
    ".cs": "csharp",
    ".swift": "swift",
    ".sh": "shell",
    ".bash": "shell",
    ".zsh": "shell",
    ".sql": "sql",
    ".md": "markdown",
    ".rst": "restructuredtext",
    ".yaml": "yaml",
    ".yml": "yaml",
    ".json": "json",
    ".toml": "toml",
    ".html": "html",
    ".htm": "html",
    ".css": "css",
    ".lua": "lua",
    ".r": "r",
    ".jl": "julia",
    ".pl": "perl",
    ".pm": "perl",
}

# File names without a telling extension.
FILENAMES: dict[str, str] = {
    "makefile": "makefile",
    "dockerfile": "dockerfile",
    "cmakelists.txt": "cmake",
}

# Lock files: machine-written dependency pins, never training data.
LOCK_FILES: frozenset[str] = frozenset(
    {
        "package-lock.json",
        "yarn.lock",
        "pnpm-lock.yaml",
        "poetry.lock",
        "pipfile.lock",
        "cargo.lock",
        "gemfile.lock",
        "composer.lock",
        "go.sum",
        "npm-shrinkwrap.json",
        "uv.lock",
        "pdm.lock",
    }
)

# The Stack's `lang` values (and common spellings) -> canonical names.
_STACK_NAMES: dict[str, str] = {
    "c++": "cpp",
    "c#": "csharp",
    "shell": "shell",
    "bash": "shell",
    "javascript": "javascript",
    "typescript": "typescript",
    "python": "python",
    "jupyter-notebook": "jupyter",
    "markdown": "markdown",
    "go": "go",
    "rust": "rust",
    "java": "java",
    "c": "c",
    "sql": "sql",
    "yaml": "yaml",
    "json": "json",
    "cuda": "cuda",
    "restructuredtext": "restructuredtext",
    "dockerfile": "dockerfile",
    "makefile": "makefile",
}


def language_of(path: str) -> str | None:
    """Canonical language of a file path from its name or extension; None if unknown."""
    name = posixpath.basename(path.replace("\\", "/")).lower()
    if name in FILENAMES:
        return FILENAMES[name]
    if name in LOCK_FILES:
        return "lockfile"
    _, ext = posixpath.splitext(name)
    return EXTENSIONS.get(ext)


def canonical_language(name: str | None, path: str = "") -> str:
    """Canonical name for a dataset's language label, falling back to the path's extension."""
    if name:
        key = name.strip().lower()
        return _STACK_NAMES.get(key, key.replace(" ", "-"))
    return language_of(path) or "unknown"


def is_lock_file(path: str) -> bool:
    """True for dependency lock files (package-lock.json, Cargo.lock, go.sum, ...)."""
    return posixpath.basename(path.replace("\\", "/")).lower() in LOCK_FILES
