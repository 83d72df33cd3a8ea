"""The user's own fingerprint: the output bits of their forward pass (or any callable returning tensors or arrays)
on fixed inputs, recorded at capture and judged at verify like the probe's kernels (docs/fingerprint.md).

`fingerprint(fn, *inputs, name=...)` runs `fn(*inputs)` twice at the process's thread count and once at one
thread, and returns a `Fingerprint`: plain data, nothing of the model kept. A lock asks for fingerprints in
`[policy] fingerprints = ["mypkg.fp:model_fingerprint"]`; each names a callable taking no arguments that returns
a Fingerprint, a list of them, or the tensors themselves (those are fingerprinted under the callable's name).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from envlock.errors import EnvironmentUnavailable, UsageError, printable
from envlock.model import CALLABLE, IDENT, FingerprintResult
from envlock.probes.numerics.inputs import bit_samples, sha

_FLOAT_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class Fingerprint:
    """The bits one callable gave on its example inputs (see `fingerprint`)."""

    name: str
    input_sha256: str
    output_sha256: str
    single_thread_sha256: str
    params_sha256: str = ""
    outputs: tuple[str, ...] = ()
    samples: tuple[str, ...] = ()
    repeat_equal: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as the lock's `numerics.fingerprints.<name>` holds it (less its source)."""
        out: dict[str, Any] = {"input_sha256": self.input_sha256, "output_sha256": self.output_sha256,
                               "single_thread_sha256": self.single_thread_sha256, "outputs": list(self.outputs),
                               "samples": list(self.samples), "repeat_equal": self.repeat_equal}
        if self.params_sha256:
            out["params_sha256"] = self.params_sha256
        return out


def _leaves(value: Any, where: str) -> Iterator[tuple[str, Any]]:
    """(place, leaf) for each tensor, array or plain scalar in nested tuples, lists and dicts (dicts by sorted key)."""
    if isinstance(value, Mapping):
        for key in sorted(value, key=str):
            yield from _leaves(value[key], f"{where}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{where}[{i}]")
    else:
        yield where, value


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def _is_array(value: Any) -> bool:
    numpy = sys.modules.get("numpy")
    return numpy is not None and isinstance(value, (numpy.ndarray, numpy.generic))  # a numpy scalar is a 0-d array


def _leaf_bytes(value: Any, where: str, name: str) -> tuple[bytes, str, Any]:
    """(bytes that pin the leaf: dtype, shape and data; its description; a float CPU tensor for samples or None)."""
    if _is_tensor(value):
        import torch

        t = value.detach().contiguous().cpu()
        desc = f"{str(t.dtype).removeprefix('torch.')}[{'x'.join(map(str, t.shape))}]"
        raw = t.view(torch.int16) if t.dtype == torch.bfloat16 else t
        data = bytes(raw.numpy().tobytes()) if raw.dim() else bytes(raw.reshape(1).numpy().tobytes())
        sample = t if str(t.dtype).removeprefix("torch.") in _FLOAT_DTYPES and t.numel() else None
        return desc.encode() + b"\0" + data, desc, sample
    if _is_array(value):
        import numpy as np

        a = np.asarray(value)
        a = np.ascontiguousarray(a) if a.ndim else a  # ascontiguousarray would make a scalar 1-d
        desc = f"{a.dtype}[{'x'.join(map(str, a.shape))}]"
        sample = None
        if a.dtype.name in ("float16", "float32", "float64") and a.size and "torch" in sys.modules:
            import torch

            sample = torch.from_numpy(a.astype(a.dtype.name))  # native byte order
        return desc.encode() + b"\0" + a.tobytes(), desc, sample
    if value is None or isinstance(value, (bool, int, float, str)):
        text = repr(value)
        return f"{type(value).__name__}:{text}".encode(), type(value).__name__, None
    raise UsageError(f"fingerprint {name}: {where} is a {type(value).__name__}; a fingerprint takes and returns "
                     "tensors, arrays, plain numbers and strings (in tuples, lists or dicts)")


def _digest(value: Any, where: str, name: str) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """(sha256 of all leaves in order, their descriptions, bit samples of the first floating-point one)."""
    chunks: list[bytes] = []
    descs: list[str] = []
    samples: tuple[str, ...] = ()
    for place, leaf in _leaves(value, where):
        data, desc, sample = _leaf_bytes(leaf, place, name)
        chunks += [len(data).to_bytes(8, "little"), data]
        descs.append(desc)
        if not samples and sample is not None:
            samples = bit_samples(sample)
    return sha(*chunks), tuple(descs), samples


def _params(fn: Any, name: str) -> str:
    """sha256 of a torch module's state_dict (sorted by name), else "" (a plain callable)."""
    torch = sys.modules.get("torch")
    if torch is None or not isinstance(fn, torch.nn.Module):
        return ""
    digest, _, _ = _digest({key: value for key, value in fn.state_dict().items()}, "parameters", name)
    return digest


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch (when loaded) and every BLAS at one thread, put back afterwards."""
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else 0
    if torch is not None:
        torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


def _no_grad() -> Any:
    torch = sys.modules.get("torch")
    return torch.no_grad() if torch is not None else contextlib.nullcontext()


def fingerprint(fn: Callable[..., Any], *example_inputs: Any, name: str) -> Fingerprint:
    """The output bits of `fn(*example_inputs)` (a forward pass, or any callable returning tensors or arrays): run
    twice at the process's thread count (does it repeat?) and once at one thread, without autograd.

    Raises UsageError for a name that is not an identifier or values that are not tensors, arrays or plain data;
    whatever `fn` raises passes through.
    """
    if not isinstance(name, str) or not re.fullmatch(IDENT, name):
        raise UsageError(f"fingerprint name {printable(repr(name))}: expected letters, digits and . _ + - "
                         "(at most 128, starting with a letter or digit)")
    input_sha, _, _ = _digest(example_inputs, "inputs", name)
    with _no_grad():
        first = fn(*example_inputs)
        second = fn(*example_inputs)
        with _one_thread():
            single = fn(*example_inputs)
    output_sha, outputs, samples = _digest(first, "outputs", name)
    if not any(d.split("[")[0] not in ("NoneType", "bool", "int", "float", "str") for d in outputs):
        raise UsageError(f"fingerprint {name}: the callable returned no tensor or array (got {type(first).__name__})")
    again, _, _ = _digest(second, "outputs", name)
    single_sha, _, _ = _digest(single, "outputs", name)
    return Fingerprint(name=name, input_sha256=input_sha, output_sha256=output_sha, single_thread_sha256=single_sha,
                       params_sha256=_params(fn, name), outputs=outputs, samples=samples,
                       repeat_equal=again == output_sha)


def default_name(source: str) -> str:
    """The name a registration's own outputs are recorded under: `mypkg.fp:forward` -> `mypkg.fp.forward`."""
    return source.replace(":", ".")[-128:].lstrip("._")


def load_source(source: str) -> Callable[..., Any]:
    """The callable `module:attr` names (the current directory is searched first, as `python -m` would). Raises
    UsageError, in one line, when the name is malformed, its module cannot be imported or it is not callable."""
    if not re.fullmatch(CALLABLE, source):
        raise UsageError(f"fingerprint {printable(repr(source))}: expected module:function, such as "
                         "mypkg.fp:model_fingerprint")
    module_name, _, attr = source.partition(":")
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: whatever stops it importing is one line, not a traceback
        raise UsageError(f"fingerprint {source}: cannot import {module_name}: "
                         f"{printable(f'{type(exc).__name__}: {exc}')[:300]}") from None
    finally:
        if added:
            with contextlib.suppress(ValueError):
                sys.path.remove(cwd)
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise UsageError(f"fingerprint {source}: {module_name} has no attribute {attr}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"fingerprint {source}: {attr} is a {type(target).__name__}, not a callable")
    return target  # type: ignore[no-any-return]


def run_source(source: str, *, at_verify: bool = False) -> dict[str, Fingerprint]:
    """The fingerprints one registration gives, by name. A callable that raises is a UsageError at capture (nothing
    could be recorded: the registration is the user's input) and EnvironmentUnavailable at verify (the lock is
    fine; this environment cannot run the check it asks for)."""
    fn = load_source(source)
    try:
        result = fn()
        if isinstance(result, Fingerprint):
            made = [result]
        elif isinstance(result, (list, tuple)) and result and all(isinstance(r, Fingerprint) for r in result):
            made = list(result)
        else:
            made = [fingerprint(fn, name=default_name(source))]
    except UsageError:
        raise
    except Exception as exc:  # the user's code: its failure is one line naming it, not a traceback
        said = printable(f"{type(exc).__name__}: {exc}")[:300]
        if at_verify:
            raise EnvironmentUnavailable(f"fingerprint {source} raised {said} at verify (it ran at capture); its "
                                         "bits cannot be checked in this environment") from None
        raise UsageError(f"fingerprint {source} raised {said}; fix it or remove it from [policy] fingerprints"
                         ) from None
    out: dict[str, Fingerprint] = {}
    for item in made:
        if item.name in out:
            raise UsageError(f"fingerprint {source}: the name {item.name} is given twice")
        out[item.name] = item
    return out


def collect_fingerprints(sources: tuple[str, ...]) -> dict[str, Any]:
    """Raw facts for capture: every registered fingerprint by name, with the registration that made it."""
    raw: dict[str, Any] = {}
    for source in sources:
        for name, item in run_source(source).items():
            if name in raw:
                raise UsageError(f"fingerprint {name} is made by both {raw[name]['source']} and {source}; "
                                 "give each a name of its own")
            raw[name] = {"source": source, **item.to_dict()}
    return raw


def replay_fingerprints(recorded: Mapping[str, FingerprintResult]) -> dict[str, Any]:
    """Raw facts for verify: each registration the lock recorded run once, the fingerprints the lock names kept."""
    raw: dict[str, Any] = {}
    for source in sorted({item.source for item in recorded.values()}):
        made = run_source(source, at_verify=True)
        for name, item in made.items():
            if name in recorded and recorded[name].source == source:
                raw[name] = {"source": source, **item.to_dict()}
    return raw
