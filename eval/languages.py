"""Languages the sandbox runs: how to compile (if at all) and run a program, and how it proves it finished.

Every program's last act is the language's ``proof``: it copies a per-run secret from one
inherited pipe (fd number in the program's last argument) to another (the one before it).
For Python, JavaScript and TypeScript the proof is top-level code appended after the tests;
the compiled languages' tests end by calling ``lathe_proof`` (C++: ``lathe_proof(argv)``,
Java: ``LatheProof.run(args)``, Rust: ``lathe_proof()``), which the appended proof defines.

Compilers and runtimes are called by absolute path and must be reachable by the sandbox's
unprivileged uids (which cannot read /root: rustup's toolchain there is of no use, Debian's
packages are); :meth:`Language.missing` says in one line what is not there. The npm-installed
compilers live in a toolchains folder (``make setup``'s ``eval/toolchains``) wherever the checkout
is; the sandbox sees that folder read-only at :data:`TOOLCHAINS_INSIDE`, never at its host path
(a checkout under /tmp would be hidden by the sandbox's private /tmp).
"""

from __future__ import annotations

import platform
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lathe.core.registry import Registry

TOOLCHAINS = Path(__file__).resolve().with_name("toolchains")  # `make setup` runs `npm ci` here
TOOLCHAINS_INSIDE = "/tmp/.toolchains"  # where a sandboxed step sees the toolchains folder (read-only; its /tmp is its own)
NODE_ARCH = {"x86_64": "x64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
# TypeScript 7's native compiler itself (node_modules/.bin/tsc is a node script that starts it); relative
# paths are inside the toolchains folder
TSC = f"node_modules/@typescript/typescript-linux-{NODE_ARCH}/lib/tsc"
NODE_GLOBALS = "node-globals.d.ts"  # console, process, require: what a node script has, typed `any`


@dataclass(frozen=True)
class Language:
    """How the sandbox runs a program of this language.

    ``argv(interpreter_for_python, path)`` is the command that runs it, where ``path`` is the
    source file, or for a compiled language the directory its ``compile`` step wrote. The
    program receives the fds of the result and secret pipes as its last two arguments, and
    ``proof`` (appended after the tests) copies the secret from one to the other.

    ``compile(source, out_dir, toolchains)``, where there is one, is the command that compiles the
    source file into the (empty, writable) directory ``out_dir`` with the toolchains folder seen at
    ``toolchains``; a non-zero exit status is a compile error. It runs in the same sandbox, under
    the same limits, as the program then does.
    """

    name: str
    suffix: str
    argv: Callable[[str, str], list[str]]
    proof: str
    min_address_space_mb: int = 0  # a runtime that cannot start below this gets at least it
    check_call: str | None = None  # appended after the tests ("{entry}": the entry point); None: the tests call their checks
    stop: tuple[str, ...] = ()  # where a sampled completion ends (the tests begin with what closes the function)
    compile: Callable[[str, str, str], list[str]] | None = None  # None: ``argv`` runs the source itself
    compile_address_space_mb: int = 0  # as min_address_space_mb, for the compile step
    env: tuple[tuple[str, str], ...] = ()  # set for both steps, beside the sandbox's PATH and HOME
    # (path the steps call, how to install it): absolute, or relative to the toolchains folder
    toolchain: tuple[tuple[str, str], ...] = ()

    @property
    def uses_toolchains(self) -> bool:
        """Whether its steps call into the toolchains folder (the sandbox then mounts it)."""
        return any(not Path(path).is_absolute() for path, _ in self.toolchain)

    def missing(self, toolchains: Path = TOOLCHAINS) -> str | None:
        """Why this language cannot run here, in one line naming the binary and how to get it; None when it can.

        ``toolchains``: the host folder of the npm-installed compilers. A scorer skips a language with a
        missing toolchain rather than counting its programs as failed.
        """
        for path, remedy in self.toolchain:
            host = toolchains / path  # an absolute path stays itself
            if not host.is_file():
                return f"{self.name} needs {host}: {remedy.format(toolchains=toolchains)}"
            closed = _closed_to_others(host)
            if closed:
                return (
                    f"{self.name} needs {host}, which the sandbox's unprivileged uids cannot reach ({closed}): "
                    "keep the toolchain in a world-readable place"
                )
        return None


def _closed_to_others(path: Path) -> str | None:
    """The first directory on the way to ``path`` (symlinks resolved) that others cannot enter, or the
    file itself when others cannot execute it; None when the sandbox's uids can run it."""
    real = path.resolve()
    for directory in reversed(real.parents):
        mode = directory.stat().st_mode
        if not mode & stat.S_IXOTH:
            return f"{directory} has mode {stat.S_IMODE(mode):o}"
    mode = real.stat().st_mode
    return None if mode & stat.S_IXOTH and mode & stat.S_IROTH else f"{real} has mode {stat.S_IMODE(mode):o}"


NODE = ("/usr/bin/node", "install Debian's nodejs (make system-deps)")
# The JVM's defaults reserve gigabytes of address space and start a thread per core; these keep
# javac and java within the sandbox's RLIMIT_AS (512 MB is the least either starts in) and
# RLIMIT_NPROC (about 14 threads each) and start them fast: the serial collector (no GC threads),
# the C1 compiler only, one compiler thread (javac: 0.7 s instead of 1 s), no hsperfdata file.
JVM_FLAGS = (
    "-XX:+UseSerialGC",
    "-Xmx128m",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-XX:ReservedCodeCacheSize=16m",
    "-XX:CompressedClassSpaceSize=32m",
    "-XX:MaxMetaspaceSize=128m",
    "-XX:-UsePerfData",
)
JDK = "install Debian's openjdk-17-jdk-headless (make system-deps)"

LANGUAGES: Registry[Language] = Registry("language")
PYTHON = LANGUAGES.register("python")(
    Language(
        "python",
        ".py",
        lambda python, path: [python, "-I", "-B", path],
        "import os as __lathe_os, sys as __lathe_sys\n"
        "__lathe_os.write(int(__lathe_sys.argv[1]), __lathe_os.read(int(__lathe_sys.argv[2]), 64))\n",
        check_call="check({entry})",
        stop=("\ndef", "\nclass", "\nif", "\nprint", "\n#"),
    )
)
JAVASCRIPT = LANGUAGES.register("javascript")(
    Language(
        "javascript",
        ".js",
        lambda python, path: ["/usr/bin/node", path],
        ";(() => { const fs = require('fs'); const b = Buffer.alloc(64);"
        " const n = fs.readSync(Number(process.argv[3]), b, 0, 64, null);"
        " fs.writeSync(Number(process.argv[2]), b, 0, n); })();\n",
        min_address_space_mb=1024,  # V8 reserves ~700 MB of address space (its code range) at start
        stop=("\n}",),
        toolchain=(NODE,),
    )
)
TYPESCRIPT = LANGUAGES.register("typescript")(
    Language(
        "typescript",
        ".ts",
        lambda python, out: ["/usr/bin/node", f"{out}/main.js"],
        # Type-checks without @types/node: its declarations live in a namespace of its own, so they
        # neither clash with nor serve the tests' (which must declare whatever they use).
        "namespace LatheProof {\n"
        "  declare const require: any;\n"
        "  declare const process: any;\n"
        "  const fs = require('fs');\n"
        "  const secret = new Uint8Array(64);\n"
        "  const n = fs.readSync(Number(process.argv[3]), secret, 0, 64, null);\n"
        "  fs.writeSync(Number(process.argv[2]), secret, 0, n);\n"
        "}\n",
        min_address_space_mb=1024,  # node, as for JavaScript
        stop=("\n}",),
        # TypeScript 7's native compiler. Not strict (TypeScript 7's default is): HumanEval's
        # TypeScript, as MultiPL-E's, is checked with the older default, so `T | undefined` from a
        # lookup need not be narrowed. ES2022 and node's globals, without the DOM's (1 s more per
        # compile, and names such as `name` or `close` taken). CommonJS output: node runs it as a
        # script. One checker and one Go thread: 0.1 s for a small program, and the thread count
        # stays far below RLIMIT_NPROC whatever the machine's core count (Go's default: one per core).
        compile=lambda source, out, tools: [
            f"{tools}/{TSC}",
            "--singleThreaded",
            "--pretty",
            "false",
            "--strict",
            "false",
            "--target",
            "es2022",
            "--lib",
            "es2022",
            "--module",
            "commonjs",
            "--outDir",
            out,
            f"{tools}/{NODE_GLOBALS}",
            source,
        ],
        compile_address_space_mb=1024,  # Go reserves ~750 MB of address space for its heap's maps
        env=(("GOMAXPROCS", "1"),),
        toolchain=((TSC, "run `make setup` (npm ci --prefix eval/toolchains), or `npm ci --prefix {toolchains}`"), NODE),
    )
)
JAVA = LANGUAGES.register("java")(
    Language(
        # -ea: Java's `assert` checks, as HumanEval's Java harnesses expect
        "java",
        ".java",
        lambda python, out: ["/usr/bin/java", *JVM_FLAGS, "-ea", "-cp", out, "Problem"],
        "class LatheProof {\n"
        "    static void run(String[] args) throws Exception {\n"
        "        byte[] secret = new byte[64];\n"
        "        int n;\n"
        '        try (java.io.FileInputStream in = new java.io.FileInputStream("/proc/self/fd/" + args[1])) {\n'
        "            n = in.read(secret);\n"
        "        }\n"
        '        try (java.io.FileOutputStream out = new java.io.FileOutputStream("/proc/self/fd/" + args[0])) {\n'
        "            out.write(secret, 0, Math.max(n, 0));\n"
        "        }\n"
        "    }\n"
        "}\n",
        min_address_space_mb=768,  # 512 MB starts it; the rest leaves room for a program's threads and natives
        stop=("\n    }\n",),
        # -proc:none: no annotation processors (code of the classpath's choosing) at compile time
        compile=lambda source, out, tools: [
            "/usr/bin/javac",
            *(f"-J{flag}" for flag in JVM_FLAGS),
            "-proc:none",
            "-encoding",
            "UTF-8",
            "-d",
            out,
            source,
        ],
        compile_address_space_mb=768,
        toolchain=(("/usr/bin/javac", JDK), ("/usr/bin/java", JDK)),
    )
)
CPP = LANGUAGES.register("cpp")(
    Language(
        "cpp",
        ".cpp",
        lambda python, out: [f"{out}/main"],
        "#include <stdlib.h>\n"
        "#include <unistd.h>\n"
        "void lathe_proof(char** argv) {\n"
        "    char secret[64];\n"
        "    ssize_t n = read(atoi(argv[2]), secret, sizeof secret);\n"
        "    if (n > 0 && write(atoi(argv[1]), secret, (size_t)n) != n) exit(1);\n"
        "}\n",
        stop=("\n}",),
        # -O0 (g++'s default, as MultiPL-E's): -O1 compiles no faster and HumanEval's tests are
        # small; -pipe: no temporary files between the compiler's stages
        compile=lambda source, out, tools: ["/usr/bin/g++", "-std=c++17", "-O0", "-pipe", "-o", f"{out}/main", source],
        compile_address_space_mb=512,
        toolchain=(("/usr/bin/g++", "install Debian's g++ (make system-deps)"),),
    )
)
RUST = LANGUAGES.register("rust")(
    Language(
        "rust",
        ".rs",
        lambda python, out: [f"{out}/main"],
        "fn lathe_proof() {\n"
        "    use std::io::{Read, Write};\n"
        "    use std::os::unix::io::FromRawFd;\n"
        "    let args: Vec<String> = std::env::args().collect();\n"
        '    let fd = |i: usize| args[i].parse::<i32>().expect("lathe_proof: a fd number");\n'
        "    let mut secret = [0u8; 64];\n"
        '    let n = unsafe { std::fs::File::from_raw_fd(fd(2)) }.read(&mut secret).expect("lathe_proof: read");\n'
        '    unsafe { std::fs::File::from_raw_fd(fd(1)) }.write_all(&secret[..n]).expect("lathe_proof: write");\n'
        "}\n",
        stop=("\n}",),
        # Debian's rustc (rustup's, in /root, is out of the sandbox's reach). A debug build, as
        # MultiPL-E's (integer overflow panics). Without std's debug info (else 12 MB, near
        # RLIMIT_FSIZE) and linked against Debian's shared libstd (on the default library path):
        # 0.3 s instead of 0.5 s.
        compile=lambda source, out, tools: [
            "/usr/bin/rustc",
            "--edition",
            "2021",
            "-C",
            "codegen-units=1",
            "-C",
            "strip=debuginfo",
            "-C",
            "prefer-dynamic",
            "-A",
            "warnings",
            "-o",
            f"{out}/main",
            source,
        ],
        compile_address_space_mb=1024,  # LLVM; 512 MB is the least a small program compiles in
        toolchain=(
            ("/usr/bin/rustc", "install Debian's rustc (make system-deps)"),
            ("/usr/bin/cc", "install Debian's gcc (make system-deps), rustc's linker"),
        ),
    )
)
