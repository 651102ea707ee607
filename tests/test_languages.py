"""The sandbox's languages: compiled (C++, Rust, Java, TypeScript) and interpreted (JavaScript) programs
that pass, fail, do not compile, exit early, or are hostile; and the compile cache.

Each program is written as a benchmark's would be: a function, then tests that end with the proof's
call (or, for JavaScript and TypeScript, are followed by the top-level proof), then the language's
``proof``.
"""

from __future__ import annotations

import dataclasses
import shutil
import socket
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from string import Template

import pytest

from lathe.eval.config import SandboxConfig
from lathe.eval.languages import CPP, LANGUAGES, TOOLCHAINS, TSC, Language
from lathe.eval.sandbox import RunResult, Sandbox, SandboxUnavailable, ToolchainMissing
from tests.sandboxes import leftovers

# javac needs about a CPU second; the wall clock leaves room for a machine that is busy elsewhere
FAST = SandboxConfig(wall_s=8.0, cpu_s=3, memory_mb=512)


@dataclass(frozen=True)
class Spec:
    """How to write test programs in one language: ``template`` holds $add (the body of
    ``add(a, b)``) and $body (statements the tests run before their check of ``add``)."""

    template: str
    right: str
    wrong: str
    exit0: str  # exits with status 0 before the tests end
    broken: str = ""  # a body that does not compile (for TypeScript: does not type-check)
    loop: str = ""  # never ends
    bomb: str = ""  # starts processes without end, or until it cannot
    write: str = ""  # writes $host/pwned.txt; exits 3 when it cannot
    network: str = ""  # connects to 127.0.0.1:$port, then to 1.1.1.1:53; exits 3 when neither connects

    def program(self, language: Language, add: str, body: str = "", **values: object) -> str:
        """The whole program the sandbox runs, proof included."""
        filled = Template(self.template).substitute(add=add, body=Template(body).substitute(**values))
        return filled + "\n\n" + language.proof


SPECS = {
    "cpp": Spec(
        template="""#include <arpa/inet.h>
#include <cstdio>
#include <cstdlib>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

long add(long a, long b) {
    $add
}

static bool lathe_connects(const char* ip, int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(port);
    inet_pton(AF_INET, ip, &to.sin_addr);
    return s >= 0 && connect(s, (sockaddr*)&to, sizeof to) == 0;
}

void lathe_proof(char** argv);

int main(int argc, char** argv) {
    $body
    if (add(1, 2) != 3) {
        fprintf(stderr, "AssertionError: add(1, 2) != 3\\n");
        return 1;
    }
    lathe_proof(argv);
    return 0;
}""",
        right="return a + b;",
        wrong="return a - b;",
        exit0="exit(0);",
        broken="return a + ;",
        loop="volatile unsigned long spin = 0;\n    while (true) spin++;",
        bomb="while (true) fork();",
        write='FILE* f = fopen("$host/pwned.txt", "w");\n    if (!f || fputs("x", f) < 0 || fclose(f) != 0) return 3;',
        network='if (!lathe_connects("127.0.0.1", $port) && !lathe_connects("1.1.1.1", 53)) return 3;',
    ),
    "rust": Spec(
        template="""use std::net::TcpStream;
use std::time::Duration;

fn add(a: i64, b: i64) -> i64 {
    $add
}

fn main() {
    $body
    if add(1, 2) != 3 {
        eprintln!("AssertionError: add(1, 2) != 3");
        std::process::exit(1);
    }
    lathe_proof();
}""",
        right="a + b",
        wrong="a - b",
        exit0="std::process::exit(0);",
        broken='a + "x"',
        loop="let mut spin: u64 = 1;\n    while spin != 0 { spin = spin.wrapping_add(1); }",
        bomb="let mut spawned = 0;\n    for _ in 0..1000 {\n"
        '        if std::process::Command::new("/bin/sleep").arg("3133").spawn().is_ok() { spawned += 1; }\n'
        '    }\n    println!("spawned {}", spawned);',
        write='if std::fs::write("$host/pwned.txt", "x").is_err() { std::process::exit(3); }',
        network='let far = "1.1.1.1:53".parse().unwrap();\n'
        '    if TcpStream::connect("127.0.0.1:$port").is_err()\n'
        "        && TcpStream::connect_timeout(&far, Duration::from_secs(2)).is_err() {\n"
        "        std::process::exit(3);\n    }",
    ),
    "java": Spec(
        template="""import java.util.*;

class Problem {
    public static long add(long a, long b) {
        $add
    }

    static boolean latheConnects(String ip, int port) {
        try (java.net.Socket s = new java.net.Socket()) {
            s.connect(new java.net.InetSocketAddress(ip, port), 2000);
            return true;
        } catch (java.io.IOException e) {
            return false;
        }
    }

    public static void main(String[] args) throws Exception {
        $body
        if (add(1, 2) != 3) throw new AssertionError("add(1, 2) != 3");
        LatheProof.run(args);
    }
}""",
        right="return a + b;",
        wrong="return a - b;",
        exit0="System.exit(0);",
        broken='return a + "x";',
        loop="long spin = 0;\n        while (spin >= 0) spin++;",
        bomb="int spawned = 0;\n        for (int i = 0; i < 1000; i++) {\n"
        '            try { new ProcessBuilder("/bin/sleep", "3133").start(); spawned++; }\n'
        "            catch (java.io.IOException e) { }\n"
        '        }\n        System.out.println("spawned " + spawned);',
        write='try { java.nio.file.Files.writeString(java.nio.file.Path.of("$host/pwned.txt"), "x"); }\n'
        "        catch (java.io.IOException e) { System.exit(3); }",
        network='if (!latheConnects("127.0.0.1", $port) && !latheConnects("1.1.1.1", 53)) System.exit(3);',
    ),
    "typescript": Spec(
        # node's globals (console, process, require) type-check without declarations
        template="""function add(a: number, b: number): number {
  $add
}

$body
if (add(1, 2) !== 3) throw new Error("AssertionError: add(1, 2) !== 3");""",
        right="return a + b;",
        wrong="return a - b;",
        exit0="process.exit(0);",
        broken='return a + "x";',
        loop="let spin = 0;\nwhile (spin >= 0) spin++;",
        # node's spawn fails asynchronously; the children keep it alive until the wall clock
        bomb='const cp = require("child_process");\n'
        'for (let i = 0; i < 1000; i++) cp.spawn("/bin/sh", ["-c", "sleep 3133"]).on("error", () => {});',
        write='try { require("fs").writeFileSync("$host/pwned.txt", "x"); } catch (e) { process.exit(3); }',
        # connecting is asynchronous: the proof has run by then, and exit status 3 undoes it
        network='const net = require("net");\n'
        'net.connect($port, "127.0.0.1").on("connect", () => console.log("CONNECTED")).on("error", () =>\n'
        '  net.connect(53, "1.1.1.1").on("connect", () => console.log("CONNECTED")).on("error", () => process.exit(3)));',
    ),
}
# JavaScript: TypeScript's program without the types
SPECS["javascript"] = Spec(
    template=SPECS["typescript"].template.replace(": number", ""),
    right="return a + b;",
    wrong="return a - b;",
    exit0="process.exit(0);",
)
COMPILED = ["cpp", "rust", "java", "typescript"]
# How each `bomb` ends: C++ forks without end and TypeScript's children keep node alive, so a limit (CPU or
# wall clock) kills them; Rust counts the spawns its process limit refused, then runs its tests to the end;
# the JVM fails on a thread of its own (each spawn needs a reaper thread, and threads count as processes).
BOMB_ENDS = {"cpp": "timeout", "rust": "completed", "java": "failed", "typescript": "timeout"}


def language(name: str) -> Language:
    """The registered language; `make setup` installs every toolchain, so a missing one fails (naming what
    is missing) rather than letting its cases vanish as skips."""
    lang = LANGUAGES.get(name)
    missing = lang.missing()
    if missing:
        pytest.fail(missing)
    return lang


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(FAST) as shared:
        yield shared


def host_can_fork(count: int = 50) -> bool:
    forks = subprocess.run(
        ["sh", "-c", f"for i in $(seq {count}); do sleep 0.2 & done; wait; echo done"],
        capture_output=True,
        text=True,
        check=False,
    )
    return forks.returncode == 0 and forks.stdout.strip() == "done"


@pytest.mark.parametrize("name", [*COMPILED, "javascript"])
def test_right_wrong_and_early_exit(sandbox: Sandbox, name: str) -> None:
    lang, spec = language(name), SPECS[name]
    right = sandbox.run(spec.program(lang, spec.right), language=lang)
    assert right.completed and right.stage == "run" and right.returncode == 0, right
    wrong = sandbox.run(spec.program(lang, spec.wrong), language=lang)
    assert not wrong.completed and wrong.stage == "run" and wrong.returncode not in (0, None), wrong
    assert "AssertionError" in wrong.stderr and not wrong.timed_out
    early = sandbox.run(spec.program(lang, spec.right, spec.exit0), language=lang)
    assert not early.completed and early.returncode == 0 and early.stage == "run", early


@pytest.mark.parametrize("name", COMPILED)
def test_compile_errors_are_reported_as_such(sandbox: Sandbox, name: str) -> None:
    lang, spec = language(name), SPECS[name]
    broken = sandbox.run(spec.program(lang, spec.broken), language=lang)
    assert not broken.completed and not broken.timed_out and broken.stage == "compile", broken
    assert broken.returncode not in (0, None) and "error" in broken.stderr.lower() and broken.stdout == ""


@pytest.fixture
def host_dir() -> Iterator[Path]:
    """A world-writable host directory outside /tmp (which the sandbox replaces with its own): only the
    read-only view of the host keeps programs out of it."""
    victim = Path(tempfile.mkdtemp(prefix="lathe-victim-", dir="/var/tmp"))
    victim.chmod(0o777)
    (victim / "keep.txt").write_text("precious")
    yield victim
    shutil.rmtree(victim)


@pytest.fixture
def listener() -> Iterator[tuple[int, list[object]]]:
    """A host TCP port on 127.0.0.1 and the connections it accepted."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                accepted.append(server.accept())
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], accepted
    stop.set()
    thread.join()
    server.close()


@pytest.mark.integration  # fork bombs, memory hogs and stuck programs in every compiled language
@pytest.mark.parametrize("name", COMPILED)
def test_hostile_programs_are_contained(sandbox: Sandbox, name: str, host_dir: Path, listener: tuple[int, list[object]]) -> None:
    lang, spec = language(name), SPECS[name]
    port, accepted = listener

    def run(body: str) -> RunResult:
        result = sandbox.run(spec.program(lang, spec.right, body, host=host_dir, port=port), language=lang)
        assert result.stage == "run", result  # each compiles: what it does happens when it runs
        return result

    loop = run(spec.loop)
    # ended at its CPU or wall-clock limit (the bound leaves a busy machine the sandbox's grace)
    assert loop.timed_out and not loop.completed and loop.seconds < FAST.wall_s * 3 + 10, loop
    bomb = run(spec.bomb)
    assert not leftovers() and host_can_fork()  # the process limit held the sandbox's uid only
    if BOMB_ENDS[name] == "timeout":  # it never stops trying (or its children keep it alive): a limit ends it
        assert bomb.timed_out and not bomb.completed, bomb
    elif BOMB_ENDS[name] == "failed":
        assert not bomb.completed and not bomb.timed_out and bomb.returncode == 1, bomb
        assert "unable to create native thread" in bomb.stderr, bomb
    else:
        # it gave up spawning: it got fewer processes than its limit (each child is one process that lives
        # on: a shell that had to fork its `sleep` would die when that fork failed and free its slot), then
        # its tests ran to their end
        assert bomb.completed and not bomb.timed_out and int(bomb.stdout.split()[-1]) < FAST.nproc, bomb
    write = run(spec.write)
    assert not write.completed and write.returncode == 3, write
    assert [p.name for p in host_dir.iterdir()] == ["keep.txt"] and (host_dir / "keep.txt").read_text() == "precious"
    network = run(spec.network)
    assert not network.completed and network.returncode == 3 and "CONNECTED" not in network.stdout, network
    assert accepted == [] and not leftovers()


@pytest.mark.integration  # fork bombs, memory hogs and stuck programs in every compiled language
def test_compile_time_bombs_end_and_leave_nothing_running() -> None:
    cpp = language("cpp")
    rust = language("rust")
    bombs = {
        # the compiler reads until it is out of (address) space
        "endless include": (cpp, '#include "/dev/zero"\nint main() {}\n'),
        # each loop stays under g++'s iteration limit; together they take hours
        "constant evaluation": (
            cpp,
            (
                "constexpr long spin() {\n  long s = 0;\n"
                "  for (long i = 0; i < 200000; i++) for (long j = 0; j < 200000; j++) s += j;\n"
                "  return s;\n}\nstatic_assert(spin() != 1);\nint main() {}\n"
            ),
        ),
        # rustc's constant evaluator has a step limit: a compile error, not a timeout
        "rust constant evaluation": (
            rust,
            ('const SPIN: u64 = { let mut i = 0u64; while i < u64::MAX { i += 1; } i };\nfn main() { println!("{}", SPIN); }\n'),
        ),
    }
    cfg = SandboxConfig(wall_s=1.5, cpu_s=3, memory_mb=512)  # the wall clock before the CPU limit
    with Sandbox(cfg) as sandbox:
        for name, (lang, program) in bombs.items():
            result = sandbox.run(program, language=lang)
            # ended at the wall clock at the latest (the bound leaves a busy machine the sandbox's grace)
            assert result.stage == "compile" and not result.completed and result.seconds < cfg.wall_s * 3 + 10, (name, result)
            assert not leftovers(cfg), name
        constant = sandbox.run(bombs["constant evaluation"][1], language=cpp)
    assert constant.timed_out and constant.returncode == -9  # killed at the wall clock, cached as such


def test_identical_programs_compile_once() -> None:
    lang, spec = language("cpp"), SPECS["cpp"]
    right, broken = spec.program(lang, spec.right), spec.program(lang, spec.broken)
    with Sandbox(FAST) as sandbox:
        with ThreadPoolExecutor(4) as pool:  # concurrent runs of one text wait for its one compile
            runs = list(pool.map(lambda _: sandbox.run(right, language=lang), range(4)))
        assert all(r.completed for r in runs) and sandbox.compiles == 1
        assert sandbox.run(spec.program(lang, spec.wrong), language=lang).returncode == 1 and sandbox.compiles == 2
        failures = [sandbox.run(broken, language=lang) for _ in range(2)]
        assert sandbox.compiles == 3 and failures[0] == failures[1] and failures[0].stage == "compile"
        builds = sandbox._builds._root  # where the builds are (private: the test looks behind the API)
        assert builds is not None and len(list(builds.iterdir())) == 2  # the failed compile's directory is gone
    assert not builds.exists()
    with Sandbox(FAST.model_copy(update={"compile_cache_mb": 0})) as sandbox:  # nothing kept once no run uses it
        assert all(sandbox.run(right, language=lang).completed for _ in range(2)) and sandbox.compiles == 2
        assert sandbox._builds._root is not None and not list(sandbox._builds._root.iterdir())


def test_compiled_programs_run_without_isolation_too() -> None:
    lang, spec = language("cpp"), SPECS["cpp"]
    with Sandbox(FAST) as sandbox:
        right = sandbox.run(spec.program(lang, spec.right), isolated=False, language=lang)
        wrong = sandbox.run(spec.program(lang, spec.wrong), isolated=False, language=lang)
    assert right.completed and not wrong.completed and wrong.returncode == 1, (right, wrong)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A folder directly under /tmp that others may enter (pytest's own base folder is mode 700, so
    nothing under tmp_path is reachable by the sandbox's uids), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="lathe-test-", dir="/tmp"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


def test_missing_toolchains_are_named(open_tmp: Path) -> None:
    gone = dataclasses.replace(CPP, toolchain=(("/nonexistent/g++", "install Debian's g++"),))
    assert gone.missing() == "cpp needs /nonexistent/g++: install Debian's g++"
    closed = open_tmp / "closed"
    closed.mkdir()
    closed.chmod(0o700)
    tool = closed / "g++"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    hidden = dataclasses.replace(CPP, toolchain=((str(tool), "install Debian's g++"),))
    problem = hidden.missing() or ""
    assert problem.startswith(f"cpp needs {tool}, which the sandbox's unprivileged uids cannot reach")
    assert problem.endswith(f"({closed} has mode 700): keep the toolchain in a world-readable place"), problem


@pytest.mark.parametrize("name", COMPILED)
def test_compiled_languages_run_with_their_toolchains_under_tmp(name: str, open_tmp: Path) -> None:
    """A checkout under /tmp (a CI runner's, a `mktemp -d` clone) holds the npm toolchains there, and every
    sandbox mounts a private /tmp: the toolchains folder is bound at a fixed path of the sandbox's own."""
    lang, spec = language(name), SPECS[name]
    tools = open_tmp / "toolchains"
    shutil.copytree(TOOLCHAINS, tools, symlinks=True)
    with Sandbox(FAST.model_copy(update={"toolchains": str(tools)})) as sandbox:
        right = sandbox.run(spec.program(lang, spec.right), language=lang)
        wrong = sandbox.run(spec.program(lang, spec.wrong), language=lang)
    assert right.completed and right.returncode == 0, right
    assert not wrong.completed and wrong.stage == "run" and "AssertionError" in wrong.stderr, wrong


def test_a_language_without_its_toolchain_is_refused_in_one_line(open_tmp: Path) -> None:
    lang, spec = language("typescript"), SPECS["typescript"]
    with Sandbox(FAST.model_copy(update={"toolchains": str(open_tmp)})) as sandbox:  # an empty folder: no tsc
        with pytest.raises(ToolchainMissing) as refused:
            sandbox.run(spec.program(lang, spec.right), language=lang)
    assert str(refused.value) == (
        f"typescript needs {open_tmp / TSC}: run `make setup` (npm ci --prefix eval/toolchains), or `npm ci --prefix {open_tmp}`"
    )


def test_an_interpreter_under_tmp_is_refused_in_one_line(open_tmp: Path) -> None:
    link = open_tmp / "python3"
    link.symlink_to("/usr/bin/python3")  # the sandbox calls the link, which its private /tmp hides
    copy = open_tmp / "python-copy"
    shutil.copy("/usr/bin/python3", copy)
    for python in (link, copy):
        with pytest.raises(
            SandboxUnavailable,
            match=rf"^sandbox interpreter {python} lives under /tmp, which each "
            r"sandbox replaces with a private one; set eval\.sandbox\.python to an interpreter outside /tmp$",
        ):
            Sandbox(FAST.model_copy(update={"python": str(python)}))
