"""Raw facts: everything the collectors saw, as JSON. A capture is a pure function of them."""

from __future__ import annotations

import codecs
import os
import sys

from envlock._version import __version__
from envlock.errors import EnvlockError, FactsError, ModelError
from envlock.files import read_regular
from envlock.probes.blas import NUMERIC_MODULES, collect_blas, load_numeric_modules
from envlock.probes.cpu import collect_cpu
from envlock.probes.cuda import collect_cuda
from envlock.probes.floats import collect_env, collect_torch
from envlock.probes.gpu import collect_gpu
from envlock.probes.nvsmi import parse_nvidia_smi_xml
from envlock.probes.packages import collect_packages
from envlock.probes.platform import collect_platform
from envlock.probes.python import collect_python

TYPE_CHECKING = False  # see envlock/errors.py: json, re and threading are imported where they are needed
if TYPE_CHECKING:
    from typing import Any

FACTS_FORMAT = 1
MAX_FACTS_BYTES = 64 * 1024 * 1024
_PLAIN_KEY = r"[A-Za-z0-9_.*+:-]+"


def collect_facts(
    *,
    use_torch: bool = True,
    fast: bool = False,
    init_cuda: bool = False,
    numerics: bool = False,
    probe_shapes: tuple[str, ...] = (),
    extra_env: tuple[str, ...] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Read this machine and process.

    `use_torch=False` leaves torch out (and unimported). `fast` imports nothing heavy and runs no subprocess:
    BLAS and torch facts are read only if the process already loaded them. `init_cuda` lets the CUDA driver be
    initialised for SM counts: only for a process of envlock's own, never inside a job that may fork.
    `numerics` runs the probe (its default kernel set plus `probe_shapes`) on what the process has loaded;
    `progress` draws a bar of its kernels on stderr (see envlock.progress).
    """

    # Importing torch is most of a capture's cost: let it run while the cheap collectors read the machine.
    modules = () if fast else NUMERIC_MODULES if use_torch else tuple(m for m in NUMERIC_MODULES if m != "torch")
    failure: list[BaseException] = []

    def _load() -> None:
        try:
            load_numeric_modules(modules)
        except BaseException as exc:  # re-raised in the calling thread below
            failure.append(exc)

    if modules:
        import threading

        loader = threading.Thread(target=_load, name="envlock-import", daemon=True)
        loader.start()
    facts: dict[str, Any] = {
        "envlock_facts": FACTS_FORMAT,
        "envlock": __version__,
        "python": collect_python(),
        "packages": collect_packages(),
        "platform": collect_platform(),
        "cpu": collect_cpu(fallback=not fast),
        "env": collect_env(extra_env),
        "gpu": collect_gpu(subprocess=not fast, init_cuda=init_cuda),
    }
    if modules:
        loader.join()
    if failure:
        raise failure[0]
    for var, value in facts["env"].items():
        if isinstance(value, str) and _surrogate(value):
            # os.environ keeps bytes that are not UTF-8 as lone surrogates; no lock can record such a value.
            try:
                shown = value.encode("utf-8", "surrogateescape")[:40]
            except UnicodeEncodeError:  # a surrogate no byte decoded to: os.environ was set from Python
                shown = value.encode("utf-8", "backslashreplace")[:40]
            raise EnvlockError(f"environment variable {var} is not valid UTF-8 text ({shown!r}); "
                               f"set it to plain text or unset it")
    if not fast or "numpy" in sys.modules or "torch" in sys.modules:
        facts["blas"] = collect_blas(import_modules=False)
    if not use_torch:
        # torch may be loaded anyway (a script that imported it): leave its build facts out all the same.
        for key in [key for key in facts.get("blas", {}) if key.startswith("torch_")]:
            del facts["blas"][key]
        return facts
    torch = collect_torch(import_torch=False)
    if torch is not None:
        facts["torch"] = torch
        cuda = collect_cuda()
        if cuda is not None:
            facts["cuda"] = cuda
    if numerics and not fast:
        facts["numerics"] = run_default_probe(probe_shapes, progress=progress)
    return facts


def run_default_probe(probe_shapes: tuple[str, ...] = (), *, progress: bool = False) -> dict[str, Any]:
    """Raw facts of the probe's default kernel set for what this process has loaded."""
    torch = sys.modules.get("torch")
    devices = 0
    if torch is not None:
        try:
            devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
        except RuntimeError:
            devices = 0
    from envlock.probes.numerics import collect_numerics, default_kernels  # the probe: never on `verify --fast`
    from envlock.progress import bar

    specs = default_kernels(numpy="numpy" in sys.modules, torch=torch is not None, cuda_devices=devices,
                            extra_shapes=probe_shapes)
    with bar("running the numerics probe", len(specs), enabled=progress) as advance:
        return collect_numerics(specs, advance)


def dumps_facts(facts: dict[str, Any]) -> str:
    """Facts as stable, readable JSON."""
    import json

    return json.dumps(facts, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def not_unicode(value: Any, where: str = "") -> str | None:
    """The dotted place of the first string (or key) in plain data that holds a lone surrogate (text that is not
    Unicode: JSON's `"\\ud800"`, or undecodable bytes as os.environ and os.listdir give them), else None."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, place = stack.pop()
        if isinstance(item, str):
            if _surrogate(item):
                return place
        elif isinstance(item, dict):
            for key, child in item.items():
                if isinstance(key, str) and _surrogate(key):
                    return _place(place, key)
                stack.append((child, _place(place, str(key))))
        elif isinstance(item, list):
            stack.extend((child, f"{place}[{i}]") for i, child in enumerate(item))
    return None


def _surrogate(text: str) -> bool:
    """Whether `text` holds a lone surrogate (only those cannot be encoded as UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _place(where: str, key: str) -> str:
    import json
    import re

    shown = key if re.fullmatch(_PLAIN_KEY, key) else json.dumps(key, ensure_ascii=True)
    return f"{where}.{shown}" if where else shown


def load_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Facts read from an `envlock facts` dump, with one-line errors for anything unreadable (a facts file is
    untrusted: not a regular file, oversized, not UTF-8 JSON, or text that is not Unicode is refused)."""
    name = str(path)
    raw = read_regular(path, MAX_FACTS_BYTES, error=FactsError, what="facts file",
                       missing="no such facts file (write one with `envlock facts -o FILE`)")
    if len(raw) > MAX_FACTS_BYTES:
        raise FactsError(name, "file is too large for a facts dump")
    import json

    raw = raw.removeprefix(codecs.BOM_UTF8)  # as Windows tools save UTF-8
    if raw.lstrip()[:1] == b"<":
        return _nvidia_smi_facts(raw, name)
    try:
        facts = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise FactsError(name, "not UTF-8 text; not a facts dump") from None
    except RecursionError:
        raise FactsError(name, "nesting is too deep; not a facts dump") from None
    except ValueError as exc:
        looks_like_lock = b"\n[lock]" in raw or raw.startswith(b"[lock]")
        hint = " (this is a lock; facts come from `envlock facts -o FILE`)" if looks_like_lock else ""
        raise FactsError(name, f"not a facts dump: not valid JSON ({exc}){hint}") from None
    if not isinstance(facts, dict) or "envlock_facts" not in facts:
        raise FactsError(name, "not an envlock facts dump (no `envlock_facts` key)")
    version = facts["envlock_facts"]
    if type(version) is not int or version != FACTS_FORMAT:
        shown = repr(version) if len(repr(version)) <= 40 else repr(version)[:37] + "..."
        raise FactsError(name, f"facts format {shown} is not supported", "envlock_facts")
    bad = not_unicode(facts)
    if bad is not None:
        raise FactsError(name, "not valid Unicode text (a lone surrogate such as \\ud800)", bad)
    return facts


def _nvidia_smi_facts(raw: bytes, name: str) -> dict[str, Any]:
    """Partial facts (the GPU part only) from an `nvidia-smi -q -x` report."""
    try:
        gpu = parse_nvidia_smi_xml(raw.decode("utf-8", "replace"), source_name="nvidia-smi")
    except ModelError as exc:
        raise FactsError(name, exc.message, exc.where) from None
    return {"envlock_facts": FACTS_FORMAT, "gpu": gpu, "partial": True}


def load_facts_files(paths: list[str], *, use_torch: bool = True) -> dict[str, Any]:
    """Facts from one or more files: `envlock facts` dumps and `nvidia-smi -q -x` reports (the GPU part).

    Later dumps override earlier ones section by section, and a GPU report's GPU part overrides any dump's;
    when only GPU reports are given, the other sections are collected from this machine.
    """
    loaded = [load_facts(path) for path in paths]
    whole = [facts for facts in loaded if not facts.get("partial")]
    merged: dict[str, Any] = {}
    for facts in whole:
        merged.update(facts)
    if not whole:
        merged = collect_facts(use_torch=use_torch)
    for facts in loaded:
        if facts.get("partial"):
            merged["gpu"] = facts["gpu"]
    return merged
