"""The architecture as rules: what `import envlock` and `verify --fast` load, and which way imports go.

docs/architecture.md draws the floors; these tests fail when a change makes a module reach up a floor, hides an
import inside a function, or makes the job-start path pay for a heavy library.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ENVLOCK, clean_env

PACKAGE = Path(__file__).resolve().parent.parent / "envlock"
DEVBOX_LOCK = PACKAGE.parent / "fixtures/hosts/linux-nogpu-nocuda-x86_64_v4-devbox/expected.lock"
#: Third-party modules the job-start path must not pay for.
HEAVY = ("torch", "numpy", "docker", "pynvml", "rich", "typer", "click", "jsonschema", "tomlkit", "piptools",
         "mlflow", "ray", "wandb", "pydantic", "cpuinfo")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, bool, bool]]:
    """(imported envlock module, at module top?, under `if TYPE_CHECKING`?) for each envlock import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, bool, bool]] = []

    def visit(node: ast.AST, top: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ImportFrom) and child.module and child.module.split(".")[0] == "envlock":
                out.append((child.module, top, typing_only))
            elif isinstance(child, ast.Import):
                out.extend((a.name, top, typing_only) for a in child.names if a.name.split(".")[0] == "envlock")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False, typing_only)
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                visit(child, top, True)
            else:
                visit(child, top, typing_only)

    visit(tree, True, False)
    return out


SOURCES = sorted(PACKAGE.rglob("*.py"))


#: The imports allowed inside a function, to keep the job-start path (`verify --fast`) short: the typer app is built
#: on first use, the image build's machinery (tarfile, zipfile, subprocess, docker) loads for `build` only, and the
#: fleet's transport for `verify --distributed` only, the Ray driver for `verify --ray` only.
LAZY = {("envlock.cli", "envlock.cli.typer_app"), ("envlock.cli.commands", "envlock.build"),
        # The bodies (and the lock, the comparison and the renderers they import): not for a verify --fast that its
        # verdict memo answers (envlock.verdicts).
        ("envlock.cli", "envlock.cli.commands"), ("envlock.facts", "envlock.probes.numerics"),
        # The console script asks the memo before it loads the command line's parser; the memo starts the size
        # check's child before it loads the exceptions, the file reader, the collectors and the launcher's table.
        ("envlock.entry", "envlock.cli"),
        *(("envlock.verdicts", m) for m in ("envlock.errors", "envlock.files", "envlock.facts", "envlock.launcher")),
        # A memo hit reads the facts but never builds the lock's records: the collectors load the model (and its
        # grammars) in the functions that parse, and the facts load the progress bar only when one is drawn.
        *(("envlock.probes." + p, "envlock.model") for p in ("blas", "cpu", "cuda", "floats", "gpu", "packages",
                                                              "platform", "python")),
        ("envlock.facts", "envlock.progress"),
        # The exit codes' enum: the exceptions carry plain ints, ExitCode loads when asked for.
        ("envlock.errors", "envlock.exitcodes"),
        # The optional C extension: where it was not built, its import fails and the size check runs in Python.
        ("envlock.probes.sizes", "envlock._sizecheck"),
        # A value of ENVLOCK_SIZECHECK that is not one: the exceptions load only then.
        ("envlock.probes.sizes", "envlock.errors"),
        # Off `verify --fast`'s path: the HTML page, `envlock run`'s exec, the fleet's renderers.
        ("envlock.cli.commands", "envlock.report_html"), ("envlock.cli.commands", "envlock.runner"),
        ("envlock.report", "envlock.fleet.decide"),
        ("envlock.cli.commands", "envlock.fleet.run"), ("envlock.cli.commands", "envlock.ray"),
        ("envlock.findings", "envlock.report"),
        # The pytest plugin is loaded into every pytest session of anyone who installed envlock: off unless asked.
        *(("envlock.pytest_plugin", m) for m in ("envlock.verifying", "envlock.errors", "envlock.report",
                                                  "envlock.lockfile"))}


def test_envlock_modules_are_imported_at_module_top() -> None:
    hidden = [f"{_module_name(p)} imports {m} inside a function"
              for p in SOURCES for m, top, _ in _imports(p) if not top and (_module_name(p), m) not in LAZY]
    assert hidden == []


def test_findings_imports_nothing_else_from_envlock_but_the_renderer_of_str() -> None:
    assert _imports(PACKAGE / "findings.py") == [("envlock.report", False, False)]


def test_errors_import_only_findings_for_types_and_the_exit_codes_when_asked() -> None:
    assert _imports(PACKAGE / "errors.py") == [("envlock.exitcodes", True, True), ("envlock.findings", True, True),
                                               ("envlock.exitcodes", False, False)]
    assert _imports(PACKAGE / "exitcodes.py") == []


def test_nothing_below_the_command_line_imports_it() -> None:
    upward = [f"{_module_name(p)} imports {m}" for p in SOURCES
              if _module_name(p) not in ("envlock.__main__", "envlock.entry")
              and not _module_name(p).startswith("envlock.cli")
              for m, _, _ in _imports(p) if m.startswith("envlock.cli")]
    assert upward == []


def _touches_torch_distributed(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("torch.distributed"):
            return True
        if isinstance(node, ast.Import) and any(a.name.startswith("torch.distributed") for a in node.names):
            return True
        if isinstance(node, ast.Constant) and node.value == "torch.distributed":
            return True
    return False


def test_only_the_fleet_store_touches_torch_distributed() -> None:
    users = [_module_name(p) for p in SOURCES if _touches_torch_distributed(p)]
    assert users == ["envlock.fleet.store"]


def test_import_envlock_loads_no_heavy_library() -> None:
    code = "import envlock, json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = {m.split(".")[0] for m in json.loads(done.stdout)}
    assert sorted(loaded & set(HEAVY)) == []
    # The API loads on first use, still without a heavy library.
    code = "import envlock, json, sys; envlock.verify; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    loaded = {m.split(".")[0] for m in json.loads(done.stdout)}
    assert "envlock.verifying" in json.loads(done.stdout)
    assert sorted(loaded & set(HEAVY)) == []


def test_the_console_script_loads_only_the_memo_and_the_size_check_before_the_child_starts() -> None:
    # What `envlock verify` pays before its size check can start (envlock.entry, envlock.verdicts): beyond what a
    # bare interpreter has loaded, envlock's own six modules and zlib; not typing, re, warnings or the exceptions.
    code = ("import sys; before = set(sys.modules); import envlock.entry; new = sorted(set(sys.modules) - before); "
            "print(' '.join(new))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    # zlib and __future__ (which `from __future__ import annotations` imports): where not loaded already.
    new = [m for m in done.stdout.split() if m not in ("zlib", "__future__")]
    assert new == ["envlock", "envlock._version", "envlock.entry", "envlock.probes", "envlock.probes.sizes",
                   "envlock.verdicts"]


@pytest.mark.slow
def test_verify_fast_loads_no_heavy_library(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-X", "importtime", str(ENVLOCK), "verify", "--fast", str(DEVBOX_LOCK)],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=clean_env())
    assert done.returncode in (0, 1), done.stderr[-2000:]
    loaded = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
              if line.startswith("import time:")}
    assert "envlock" in loaded
    assert sorted(loaded & set(HEAVY)) == []


#: What a `verify --fast` answered by its memo must not load: the standard library's slow imports (typing, re, enum
#: and the rest) and the lock's model, whose grammars compile at import. Only those a bare interpreter has not loaded
#: already count (an editable install's finder loads re, for one).
NOT_ON_A_HIT = ("typing", "re", "json", "hashlib", "dataclasses", "inspect", "csv", "urllib", "threading", "ctypes",
                "enum", "functools", "collections", "envlock.model", "envlock.dataform", "envlock.lockfile",
                "envlock.exitcodes", "envlock.cli")


def _loaded(stderr: str) -> set[str]:
    return {line.split("|")[-1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.slow
def test_a_verify_fast_answered_by_its_memo_loads_no_slow_module(tmp_path: Path) -> None:
    # Without site (-S) so that nothing a .pth file loads hides a module from the count: envlock from this checkout,
    # the rest from this interpreter's site-packages, the same for the run that writes the memo and the one it answers.
    import sysconfig

    path = [str(PACKAGE.parent), sysconfig.get_paths()["purelib"]]
    code = (f"import sys; sys.path[:0] = {path!r}; sys.argv = ['envlock', 'verify', '--fast', {str(DEVBOX_LOCK)!r}]; "
            "from envlock.entry import console; console()")
    env = clean_env(ENVLOCK_CACHE_DIR=str(tmp_path / "cache"))
    runs = [subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", code], capture_output=True, text=True,
                           timeout=120, cwd=tmp_path, env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [1, 1], runs[-1].stderr[-2000:]  # the devbox's lock is not this machine
    assert runs[1].stdout == runs[0].stdout
    miss, hit = (_loaded(r.stderr) for r in runs)
    assert "envlock.cli" in miss and "envlock.verdicts" in hit  # the first run verified; the second asked the memo
    bare = subprocess.run([sys.executable, "-S", "-X", "importtime", "-c", "pass"], capture_output=True, text=True,
                          timeout=60, env=env)
    slow = sorted(m for m in hit - _loaded(bare.stderr) if m in NOT_ON_A_HIT or m.split(".")[0] in NOT_ON_A_HIT)
    assert slow == []
