"""Judging the numerics probe: each locked kernel's verdict against this run, its likely cause, the findings.

Three kinds of input per op: *sensitive* (full mantissas: any change of summation order flips low bits), *canary*
(exactly predictable whatever the order), and a *repeat* of the sensitive kernels in the same process (run-to-run
determinism). Which kernels moved, together with the recorded knobs, says why (see `diagnose`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from envlock.findings import Finding, text
from envlock.model import KernelResult, NumericsSection, Policy
from envlock.policy import rule_for


@dataclass(frozen=True)
class KernelVerdict:
    """How one kernel compares with the lock."""

    key: str
    kind: str  # "match", "precision change", "order drift", "nondeterministic", "invalid probe", "did not run"
    expected: str
    actual: str


def _label(result: KernelResult) -> str:
    extra = ", ".join(part for part in (result.error_class, result.canary) if part)
    return f"{result.output_sha256[7:19]}" + (f" ({extra})" if extra else "")


def classify(expected: NumericsSection, actual: NumericsSection | None,
             errors: dict[str, str]) -> list[KernelVerdict]:
    """Each locked kernel's verdict against the kernels run now (`errors`: the ones that failed to run)."""
    verdicts = []
    have = actual.kernels if actual is not None else {}
    for key, want in sorted(expected.kernels.items()):
        got = have.get(key)
        if got is None:
            why = errors.get(key, "not run")
            verdicts.append(KernelVerdict(key, "did not run", _label(want), why))
        elif got.input_sha256 != want.input_sha256:
            verdicts.append(KernelVerdict(key, "invalid probe", want.input_sha256[7:19], got.input_sha256[7:19]))
        elif got.output_sha256 == want.output_sha256:
            kind = "nondeterministic" if want.repeat_equal and not got.repeat_equal else "match"
            note = " (repeat differs)" if kind == "nondeterministic" else ""
            verdicts.append(KernelVerdict(key, kind, _label(want), _label(got) + note))
        elif got.canary != want.canary or got.error_class != want.error_class:
            verdicts.append(KernelVerdict(key, "precision change", _label(want), _label(got)))
        elif not got.repeat_equal:
            verdicts.append(KernelVerdict(key, "nondeterministic", _label(want), _label(got) + " (repeat differs)"))
        else:
            verdicts.append(KernelVerdict(key, "order drift", _label(want), _label(got)))
    return verdicts


def _changed(want: dict[str, Any], have: dict[str, Any], path: str) -> str:
    a, b = want.get(path), have.get(path)
    return "" if a == b else f"{text(a)} → {text(b)}"


def _moved(verdicts: list[KernelVerdict], predicate: Callable[[str], bool]) -> bool:
    return any(v.kind not in ("match",) and predicate(v.key) for v in verdicts)


def diagnose(verdict: KernelVerdict, verdicts: list[KernelVerdict], spec: KernelResult,
             want: dict[str, Any], have: dict[str, Any]) -> str:
    """The likely cause of one kernel's verdict, from which kernels moved and which recorded knobs changed."""
    key, kind = verdict.key, verdict.kind
    if kind == "invalid probe":
        return "the probe's inputs differ from the lock's: another envlock probe version? re-capture with this envlock"
    if kind == "did not run":
        if spec.device.startswith("cuda"):
            return f"{spec.device} is not available in this process (no GPU visible, or torch without CUDA)"
        return f"the kernel could not run here ({verdict.actual}): is {spec.library} installed?"
    if kind == "nondeterministic":
        return ("this kernel gives different bits from one run to the next in this process: atomics without "
                "torch.use_deterministic_algorithms(True), cuBLAS workspace sharing (CUBLAS_WORKSPACE_CONFIG), "
                "or cudnn.benchmark autotuning")
    if spec.op == "denormal":
        knob = _changed(want, have, "floats.torch.flush_denormal")
        if "ftz=on" in verdict.actual or "daz=on" in verdict.actual:
            cause = ("flush-denormal is on: subnormal floats become zero (torch.set_flush_denormal(True), or a shared "
                    "library built with -ffast-math)")
        elif re.search(r"workers-flushed=[1-9]", verdict.actual):
            cause = ("torch's intra-op worker threads flush subnormals although this thread does not: they kept the "
                    "FTZ/DAZ state of when they started (set_flush_denormal changes the calling thread only)")
        else:
            cause = "denormal handling changed"
        return cause + (f"; flush_denormal {knob}" if knob else "")
    if spec.op in ("identity-mm", "conv1x1") and kind == "precision change":
        bits = re.search(r"bits=(\d+)", verdict.actual)
        kept = int(bits.group(1)) if bits else -1
        # cuBLAS rounds to nearest, so TF32 (10 explicit bits) keeps 10-11 and bf16 (7) keeps 7-8.
        mode = "TF32" if 9 <= kept <= 11 else "bf16" if 6 <= kept <= 8 else "bf16x3" if 14 <= kept <= 17 else ""
        if spec.op == "conv1x1":
            knob = _changed(want, have, "floats.torch.cudnn_allow_tf32")
            return f"cuDNN fp32 convolutions keep {kept} mantissa bits ({mode or 'reduced precision'})" + (
                f": cudnn.allow_tf32 {knob}" if knob else ": cudnn.allow_tf32 / cudnn.conv.fp32_precision")
        if spec.device == "cpu":
            return (f"CPU fp32 matmul keeps {kept} mantissa bits: oneDNN fp32 down-conversion "
                    "(torch.backends.mkldnn.matmul.fp32_precision) or a broken BLAS")
        knobs = [f"{p.split('.')[-1]} {c}" for p in ("floats.torch.matmul_allow_tf32",
                 "floats.torch.float32_matmul_precision", "floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
                 "floats.env.NVIDIA_TF32_OVERRIDE") if (c := _changed(want, have, p))]
        what = f"{mode} enabled for cuBLAS fp32 matmul" if mode else f"cuBLAS fp32 matmul keeps {kept} mantissa bits"
        return what + (f" ({'; '.join(knobs)})" if knobs else "")
    if spec.op == "int-mm" and kind == "precision change":
        return ("the integer canary no longer sums exactly: reduced-precision reductions (allow_fp16/bf16_reduced_"
                "precision_reduction), fp16 accumulation, or a torch upgrade that routes GEMMs elsewhere")
    if kind == "precision change":
        return f"the precision class changed ({verdict.expected} → {verdict.actual}): TF32/bf16 modes or another BLAS"
    # order drift: the same precision, another summation order
    if spec.device == "cpu" and spec.library == "torch":
        for path, cause in (("floats.env.MKL_CBWR", "MKL's conditional numerical reproducibility branch (MKL_CBWR)"),
                           ("floats.torch.mkldnn_matmul_fp32_precision", "oneDNN's fp32 matmul precision"),
                           ("floats.torch.float32_matmul_precision", "torch's float32 matmul precision")):
            change = _changed(want, have, path)
            if change:
                return f"{cause} changed ({change})"
        single = key.endswith("-t1")
        sibling = key[: -len("-t1")] if single else key + "-t1"
        sibling_moved = _moved(verdicts, lambda k: k == sibling)
        threads = _changed(want, have, "threads.torch_intraop")
        if not single and not sibling_moved:
            return f"thread count changed {threads}" if threads else (
                "the multi-threaded result moved but not the single-threaded one: torch's thread count or "
                "OMP_NUM_THREADS")
        capability = _changed(want, have, "blas.torch_cpu_capability")
        version = _changed(want, have, "floats.torch.version")
        return ("ATen's CPU kernels changed" + (f" (CPU capability {capability})" if capability else "")
                + (f" (torch {version})" if version else "") + ": another CPU, ATEN_CPU_CAPABILITY, or torch build")
    if spec.library == "numpy" and spec.op == "sum":
        version = _changed(want, have, "packages.numpy.version")
        return ("numpy's own pairwise summation changed" + (f" (numpy {version})" if version else "")
                + ": another numpy build or its SIMD dispatch (NPY_DISABLE_CPU_FEATURES)")
    if spec.library == "numpy":
        arch = next((c for p in want if p.endswith(".architecture") and p.startswith("blas.libraries.numpy")
                     and (c := _changed(want, have, p))), "")
        single = key.endswith("-t1")
        sibling_moved = _moved(verdicts, lambda k: k == (key[:-3] if single else key + "-t1"))
        if not single and not sibling_moved:
            threads = next((c for p in want if p.endswith(".num_threads") and p.startswith("blas.libraries.numpy")
                            and (c := _changed(want, have, p))), "")
            return f"BLAS thread count changed {threads}" if threads else "BLAS thread count or threading changed"
        if arch:
            return f"BLAS kernel changed {arch}"
        return "numpy's BLAS gives other bits: another BLAS build, version or CPU (OPENBLAS_CORETYPE, MKL_CBWR)"
    # GPU order drift
    index = spec.device.split(":")[-1]
    for path, cause in ((f"gpu.devices.{index}.compute_capability", "different GPU architecture"),
                       (f"gpu.devices.{index}.sm_count", "different SM count (MIG slice?)"),
                       ("cuda.cublas", "cuBLAS version changed"), ("cuda.cudnn", "cuDNN version changed"),
                       ("floats.torch.version", "torch version changed"),
                       ("floats.torch.cudnn_benchmark", "cuDNN benchmark (autotuning) changed")):
        change = _changed(want, have, path)
        if change:
            return f"{cause} ({change})"
    if spec.op == "conv2d":
        return "cuDNN picked another algorithm (cudnn.benchmark autotuning, or another cuDNN)"
    return ("same precision, another summation order with every recorded version equal: cuBLAS heuristics or "
            "torch's BLAS routing (preferred_blas_library)")


def compare_numerics(expected: NumericsSection, actual: NumericsSection | None, errors: dict[str, str],
                     policy: Policy, context: tuple[dict[str, Any], dict[str, Any]]) -> list[Finding]:
    """Findings for the probe: one per kernel that did not match, with the likely cause.

    Rules per kernel (`numerics.<id>`): exact = the same bits (default); compatible = the same precision class and
    canaries (order drift allowed); ignore.
    """
    want, have = context
    verdicts = classify(expected, actual, errors)
    findings = []
    for verdict in verdicts:
        if verdict.kind == "match":
            continue
        rule = rule_for(policy, f"numerics.{verdict.key}")
        if rule.rule == "ignore" or (rule.rule in ("compatible", "min") and verdict.kind == "order drift"):
            continue
        spec = expected.kernels[verdict.key]
        severity = "error" if verdict.kind in ("precision change", "invalid probe") else rule.severity
        findings.append(Finding(
            path=f"numerics.{verdict.key}", expected=verdict.expected, actual=f"{verdict.kind}: {verdict.actual}",
            severity=severity, hint=diagnose(verdict, verdicts, spec, want, have),
        ))
    return findings
