"""From the probe's raw facts to the lock's `numerics` section (pure)."""

from __future__ import annotations

from typing import Any

from envlock._raw import get
from envlock.model import FingerprintResult, KernelResult, ModelError, NumericsSection


def parse_numerics(raw: Any) -> NumericsSection | None:
    """The `numerics` section of a target from raw probe facts (kernels that could not run are left out)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ModelError("numerics", "expected an object")
    kernels = {}
    for key, item in sorted(get(raw, "kernels", dict, "numerics", {}).items()):
        where = f"numerics.kernels.{key}"
        if not isinstance(item, dict):
            raise ModelError(where, "expected an object")
        if "error" in item:
            continue
        kernels[key] = KernelResult(
            op=get(item, "op", str, where), library=get(item, "library", str, where),
            device=get(item, "device", str, where), dtype=get(item, "dtype", str, where),
            shape=get(item, "shape", str, where), threads=get(item, "threads", int, where, 0),
            input_sha256=get(item, "input_sha256", str, where), output_sha256=get(item, "output_sha256", str, where),
            samples=tuple(get(item, "samples", list, where, [])), error_class=get(item, "error_class", str, where, ""),
            canary=get(item, "canary", str, where, ""), repeat_equal=get(item, "repeat_equal", bool, where, True),
        )
    fingerprints = {}
    for name, item in sorted(get(raw, "fingerprints", dict, "numerics", {}).items()):
        where = f"numerics.fingerprints.{name}"
        if not isinstance(item, dict):
            raise ModelError(where, "expected an object")
        fingerprints[name] = FingerprintResult(
            source=get(item, "source", str, where), input_sha256=get(item, "input_sha256", str, where),
            output_sha256=get(item, "output_sha256", str, where),
            single_thread_sha256=get(item, "single_thread_sha256", str, where, ""),
            params_sha256=get(item, "params_sha256", str, where, ""),
            outputs=tuple(get(item, "outputs", list, where, [])), samples=tuple(get(item, "samples", list, where, [])),
            repeat_equal=get(item, "repeat_equal", bool, where, True),
        )
    return NumericsSection(probe=get(raw, "probe", str, "numerics"), generator=get(raw, "generator", str, "numerics"),
                           kernels=kernels, fingerprints=fingerprints)
