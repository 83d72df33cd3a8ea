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
from envlock.model import KernelResult, NumericsSection, Policy, kernel_key
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


def _known_both(knob: tuple[str, str], want: dict[str, Any], have: dict[str, Any]) -> list[tuple[str, str]]:
    """[knob] when both sides recorded it (a lock from before the field was recorded did not), else []."""
    return [knob] if knob[0] in want and knob[0] in have else []


def _moved(verdicts: list[KernelVerdict], predicate: Callable[[str], bool]) -> bool:
    return any(v.kind not in ("match",) and predicate(v.key) for v in verdicts)


@dataclass(frozen=True)
class Diagnosis:
    """The likely cause of one kernel's verdict, in words, and the path of the knob it blames ("" if none)."""

    hint: str
    cause: str = ""


def _first(knobs: list[tuple[str, str]], want: dict[str, Any], have: dict[str, Any],
           form: str = "{label} changed ({change})") -> Diagnosis | None:
    """The first knob that changed, blamed; the others that changed too, named after it."""
    moved = [(path, label, change) for path, label in knobs if (change := _changed(want, have, path))]
    if not moved:
        return None
    path, label, change = moved[0]
    also = "; also changed: " + ", ".join(f"{lbl} ({c})" for _, lbl, c in moved[1:]) if moved[1:] else ""
    return Diagnosis(form.format(label=label, change=change) + also, path)


def _single_variant(key: str, spec: KernelResult, expected: NumericsSection) -> str:
    """The locked single-thread variant of a threaded kernel (`<key>-t1`), or ""."""
    if spec.threads == 1:
        return ""
    for other, result in sorted(expected.kernels.items()):
        if result.threads == 1 and (result.op, result.library, result.device, result.dtype, result.shape) == (
                spec.op, spec.library, spec.device, spec.dtype, spec.shape):
            return other
    return ""


def _thread_knob(spec: KernelResult, want: dict[str, Any], have: dict[str, Any]) -> tuple[str, str]:
    """The recorded thread count that drives this kernel (its path, and how it changed)."""
    if spec.library == "torch":
        paths = ["threads.torch_intraop"]
    else:
        paths = sorted(p for p in {*want, *have} if p.startswith(f"blas.libraries.{spec.library}-")
                       and p.endswith(".num_threads"))
    for path in paths:
        if change := _changed(want, have, path):
            return path, change
    return (paths[0] if paths else ""), ""


def _did_not_run(spec: KernelResult, why: str, want: dict[str, Any], have: dict[str, Any],
                 between_locks: bool) -> Diagnosis:
    if between_locks:
        return Diagnosis("B has no result for this kernel: B was captured without its library or device")
    missing = re.search(r"No module named '([\w.]+)'", why)
    if missing:
        module = missing.group(1).split(".")[0]
        installed = f"packages.{module}.version" in have
        cause = f"packages.{module}" if not installed else ("floats.torch" if module == "torch" else "")
        return Diagnosis(f"the kernel needs {module}, which is not importable here"
                         + ("" if installed else f" ({module} is not installed)"), cause)
    if spec.device.startswith("cuda"):
        cause = "gpu.count" if _changed(want, have, "gpu.count") else ""
        return Diagnosis(f"{spec.device} is not available in this process (no GPU visible, or torch without CUDA)",
                         cause)
    if f"packages.{spec.library}.version" in want and f"packages.{spec.library}.version" not in have:
        return Diagnosis(f"{spec.library} is not installed here", f"packages.{spec.library}")
    if spec.library == "torch" and "floats.torch.version" in want and "floats.torch.version" not in have:
        return Diagnosis("torch is not importable here", "floats.torch")
    if why == "not run":
        return Diagnosis("this kernel was not run here: the probe found no result for it")
    return Diagnosis(f"the kernel failed here ({why})")


def diagnose(verdict: KernelVerdict, verdicts: list[KernelVerdict], expected: NumericsSection,
             actual: NumericsSection | None, want: dict[str, Any], have: dict[str, Any],
             between_locks: bool = False) -> Diagnosis:
    """The likely cause of one kernel's verdict: a locked variant that proves it first, then the recorded knobs
    that can affect this kernel (never one that cannot, such as TF32 for a CPU sum)."""
    key, kind = verdict.key, verdict.kind
    spec = expected.kernels[key]
    if kind == "invalid probe":
        if between_locks:
            return Diagnosis("A and B ran the probe on other inputs: captured by other envlock probe versions")
        return Diagnosis("the probe's inputs differ from the lock's: another envlock probe version? re-capture with "
                         "this envlock")
    if kind == "did not run":
        return _did_not_run(spec, verdict.actual, want, have, between_locks)
    if kind == "nondeterministic":
        where = "in B (not in A)" if between_locks else "in this process"
        return Diagnosis(f"this kernel gives different bits from one run to the next {where}: atomics without "
                         "torch.use_deterministic_algorithms(True), cuBLAS workspace sharing "
                         "(CUBLAS_WORKSPACE_CONFIG), or cudnn.benchmark autotuning",
                         "floats.torch.deterministic_algorithms"
                         if _changed(want, have, "floats.torch.deterministic_algorithms") else "")
    got = actual.kernels.get(key) if actual is not None else None
    if spec.op == "denormal":
        return _denormal(verdict, want, have)
    if kind == "precision change":
        return _precision(verdict, spec, want, have)
    # Order drift: the same precision, another summation order. A locked variant that gave these very bits proves
    # which knob moved them.
    single = _single_variant(key, spec, expected)
    thread_path, threads = _thread_knob(spec, want, have)
    if single and got is not None and got.output_sha256 == expected.kernels[single].output_sha256:
        if threads:
            return Diagnosis(f"{'BLAS ' if spec.library == 'numpy' else ''}thread count changed {threads}",
                             thread_path)
        return Diagnosis(f"these are the bits of the locked single-thread run ({single}): this kernel ran on one "
                         "thread (torch.set_num_threads(1), OMP_NUM_THREADS=1, or one usable core)", thread_path)
    if single and not _moved(verdicts, lambda k: k == single):
        # The single-thread run still matches: the kernels are unchanged, the threading is not.
        if threads:
            return Diagnosis(f"{'BLAS ' if spec.library == 'numpy' else ''}thread count changed {threads}",
                             thread_path)
        if spec.library == "numpy":
            return Diagnosis("BLAS thread count or threading changed", thread_path)
        return Diagnosis("the multi-threaded result moved but not the single-threaded one: torch's thread count "
                         "or OMP_NUM_THREADS", thread_path)
    return _drift(spec, want, have, lambda other: _moved(verdicts, lambda k: k == other))


def _denormal(verdict: KernelVerdict, want: dict[str, Any], have: dict[str, Any]) -> Diagnosis:
    knob = _changed(want, have, "floats.torch.flush_denormal")
    if "ftz=on" in verdict.actual or "daz=on" in verdict.actual:
        cause = ("flush-denormal is on: subnormal floats become zero (torch.set_flush_denormal(True), or a shared "
                 "library built with -ffast-math)")
    elif re.search(r"workers-flushed=[1-9]", verdict.actual):
        cause = ("torch's intra-op worker threads flush subnormals although this thread does not: they kept the "
                 "FTZ/DAZ state of when they started (set_flush_denormal changes the calling thread only)")
    else:
        cause = "denormal handling changed"
    return Diagnosis(cause + (f"; flush_denormal {knob}" if knob else ""),
                     "floats.torch.flush_denormal" if knob else "")


TF32_KNOBS = ("floats.torch.matmul_allow_tf32", "floats.torch.float32_matmul_precision",
              "floats.torch.matmul_fp32_precision", "floats.env.TORCH_ALLOW_TF32_CUBLAS_OVERRIDE",
              "floats.env.NVIDIA_TF32_OVERRIDE")


#: How a knob is named in a precision diagnosis, where its last segment would not say it.
KNOB_NAMES = {"floats.torch.cudnn_allow_tf32": "cudnn.allow_tf32",
              "floats.torch.cudnn_conv_fp32_precision": "cudnn.conv.fp32_precision"}


def _precision(verdict: KernelVerdict, spec: KernelResult, want: dict[str, Any], have: dict[str, Any]) -> Diagnosis:
    def blame(paths: tuple[str, ...]) -> tuple[str, str]:
        knobs = [(p, f"{KNOB_NAMES.get(p, p.split('.')[-1])} {c}") for p in paths if (c := _changed(want, have, p))]
        return "; ".join(k for _, k in knobs), (knobs[0][0] if knobs else "")

    if spec.op in ("identity-mm", "conv1x1"):
        bits = re.search(r"bits=(\d+)", verdict.actual)
        kept = int(bits.group(1)) if bits else -1
        # cuBLAS rounds to nearest, so TF32 (10 explicit bits) keeps 10-11 and bf16 (7) keeps 7-8.
        mode = "TF32" if 9 <= kept <= 11 else "bf16" if 6 <= kept <= 8 else "bf16x3" if 14 <= kept <= 17 else ""
        if spec.op == "conv1x1":
            said, cause = blame(("floats.torch.cudnn_allow_tf32", "floats.torch.cudnn_conv_fp32_precision",
                                 "floats.env.NVIDIA_TF32_OVERRIDE"))
            return Diagnosis(f"cuDNN fp32 convolutions keep {kept} mantissa bits ({mode or 'reduced precision'})"
                             + (f": {said}" if said else ": cudnn.allow_tf32 / cudnn.conv.fp32_precision"), cause)
        if spec.device == "cpu":
            said, cause = blame(("floats.torch.mkldnn_matmul_fp32_precision", "floats.torch.float32_matmul_precision"))
            return Diagnosis(f"CPU fp32 matmul keeps {kept} mantissa bits: oneDNN fp32 down-conversion "
                             + (f"({said})" if said else "(torch.backends.mkldnn.matmul.fp32_precision) or a broken "
                                "BLAS"), cause)
        said, cause = blame(TF32_KNOBS)
        what = f"{mode} enabled for cuBLAS fp32 matmul" if mode else f"cuBLAS fp32 matmul keeps {kept} mantissa bits"
        return Diagnosis(what + (f" ({said})" if said else ""), cause)
    if spec.op == "int-mm":
        said, cause = blame((f"floats.torch.matmul_allow_{'bf16' if spec.dtype == 'bfloat16' else 'fp16'}"
                             "_reduced_precision_reduction", "floats.torch.version"))
        return Diagnosis("the integer canary no longer sums exactly: reduced-precision reductions (allow_fp16/bf16_"
                         "reduced_precision_reduction), fp16 accumulation, or a torch upgrade that routes GEMMs "
                         "elsewhere" + (f" ({said})" if said else ""), cause)
    if spec.device == "cpu":
        knobs: tuple[str, ...] = ("floats.torch.mkldnn_matmul_fp32_precision", "floats.torch.float32_matmul_precision",
                                  "floats.torch.version") if spec.library == "torch" else ("packages.numpy.version",)
    elif spec.dtype == "float32":
        knobs = (*TF32_KNOBS, "floats.torch.version")
    else:
        knobs = (f"floats.torch.matmul_allow_{'bf16' if spec.dtype == 'bfloat16' else 'fp16'}"
                 "_reduced_precision_reduction", "floats.torch.version")
    said, cause = blame(knobs)
    return Diagnosis(f"the precision class changed ({verdict.expected} → {verdict.actual})"
                     + (f": {said}" if said else ": TF32/bf16 modes or another BLAS"), cause)


#: CPU ops torch runs through oneDNN (conv2d; half-precision matmul), whose ISA cap is an environment variable.
ONEDNN_CPU_OPS = ("conv2d", "mm")
ONEDNN_ISA_KNOBS = [("floats.env.DNNL_MAX_CPU_ISA", "oneDNN's ISA cap (DNNL_MAX_CPU_ISA)"),
                    ("floats.env.ONEDNN_MAX_CPU_ISA", "oneDNN's ISA cap (ONEDNN_MAX_CPU_ISA)")]


def _normal_stream(spec: KernelResult, moved: Callable[[str], bool], want: dict[str, Any], have: dict[str, Any],
                   knobs: list[tuple[str, str]]) -> Diagnosis:
    """randn moved: the generator itself when its uniform stream (the locked `rand`) moved too, else the normal
    transform on top of it (vectorised per CPU capability)."""
    uniform = kernel_key("rand", spec.library, spec.device, spec.dtype, spec.shape, spec.threads)
    if moved(uniform):
        found = _first([("floats.torch.version", "torch"), ("packages.torch.version", "torch")], want, have)
        return Diagnosis(f"the random generator's own stream changed ({uniform} moved too)"
                         + (f": {found.hint}" if found else ": another torch build's generator"),
                         found.cause if found else f"numerics.{uniform}")
    found = _first(knobs, want, have)
    return Diagnosis(f"the normal transform changed, not the generator ({uniform} still matches): "
                     + (found.hint if found else "ATen's vectorised randn path (ATEN_CPU_CAPABILITY, the CPU) or "
                        "the torch build"), found.cause if found else "")


def _drift(spec: KernelResult, want: dict[str, Any], have: dict[str, Any],
           moved: Callable[[str], bool] = lambda key: False) -> Diagnosis:
    """Order drift the thread count does not explain: the knobs that can change this kernel's code path (`moved`:
    whether another locked kernel moved too)."""
    if spec.device == "cpu" and spec.library == "torch":
        knobs = [("floats.env.ATEN_CPU_CAPABILITY", "ATEN_CPU_CAPABILITY"),
                 ("blas.torch_cpu_capability", "ATen's CPU capability"), ("cpu.microarchitecture", "the CPU"),
                 ("floats.torch.version", "torch")]
        if spec.op == "mm":
            knobs = [("floats.env.MKL_CBWR", "MKL's conditional numerical reproducibility branch (MKL_CBWR)"),
                     ("floats.torch.mkldnn_matmul_fp32_precision", "oneDNN's fp32 matmul precision"),
                     ("floats.torch.float32_matmul_precision", "torch's float32 matmul precision"),
                     ("blas.torch_blas", "torch's BLAS"), ("blas.torch_blas_version", "torch's BLAS version"), *knobs]
        if spec.op in ONEDNN_CPU_OPS and (spec.op != "mm" or spec.dtype != "float32"):
            knobs = [*ONEDNN_ISA_KNOBS, *knobs]
        if spec.op == "randn":
            return _normal_stream(spec, moved, want, have, knobs)
        found = _first(knobs, want, have)
        if found:
            return found
        if (spec.op in ONEDNN_CPU_OPS and spec.dtype != "float32") or spec.op == "conv2d":
            return Diagnosis("oneDNN picked another kernel: another CPU or ISA cap (DNNL_MAX_CPU_ISA / "
                             "ONEDNN_MAX_CPU_ISA), or another torch build")
        return Diagnosis("ATen's CPU kernels changed: another CPU, ATEN_CPU_CAPABILITY, or torch build")
    if spec.library == "numpy" and spec.op == "sum":
        found = _first([("packages.numpy.version", "numpy"), ("cpu.microarchitecture", "the CPU")], want, have,
                       "numpy's own pairwise summation changed ({label} {change})")
        return Diagnosis((found.hint if found else "numpy's own pairwise summation changed")
                         + ": another numpy build or its SIMD dispatch (NPY_DISABLE_CPU_FEATURES)",
                         found.cause if found else "")
    if spec.library == "numpy":
        libs = sorted(p.rsplit(".", 1)[0] for p in {*want, *have}
                      if p.startswith("blas.libraries.numpy-") and p.endswith(".internal_api"))
        arch = _first([(f"{lib}.architecture", "the BLAS kernel") for lib in libs], want, have,
                      "BLAS kernel changed {change}")
        return arch or _first([*((f"{lib}.version", "the BLAS version") for lib in libs),
                               ("floats.env.MKL_CBWR", "MKL_CBWR"), ("packages.numpy.version", "numpy"),
                               ("cpu.microarchitecture", "the CPU"),
                               *_known_both(("cpu.cache_l2", "the L2 cache size OpenBLAS blocks GEMMs for"), want,
                                            have)], want, have) or Diagnosis(
            "numpy's BLAS gives other bits: another BLAS build, version or CPU (OPENBLAS_CORETYPE, MKL_CBWR)")
    index = spec.device.split(":")[-1]
    knobs = [(f"gpu.devices.{index}.compute_capability", "different GPU architecture"),
             (f"gpu.devices.{index}.sm_count", "different SM count (MIG slice?)")]
    if spec.op in ("mm", "identity-mm", "int-mm"):
        knobs += [("cuda.cublas", "cuBLAS version changed"),
                  ("floats.env.CUBLAS_WORKSPACE_CONFIG", "cuBLAS workspace changed")]
        if spec.dtype != "float32":
            name = "bf16" if spec.dtype == "bfloat16" else "fp16"
            knobs.append((f"floats.torch.matmul_allow_{name}_reduced_precision_reduction",
                          f"{name} reduced-precision reductions changed"))
    if spec.op in ("conv2d", "conv1x1", "sdpa"):
        knobs += [("cuda.cudnn", "cuDNN version changed"),
                  ("floats.torch.cudnn_benchmark", "cuDNN benchmark (autotuning) changed")]
    if spec.op == "randn" and moved(kernel_key("rand", spec.library, spec.device, spec.dtype, spec.shape, 0)):
        knobs.insert(0, ("floats.torch.version", "the random generator's stream changed (rand moved too): torch"))
    knobs.append(("floats.torch.version", "torch version changed"))
    if spec.op in ("index-add", "scatter-add", "conv2d"):
        knobs.append(("floats.torch.deterministic_algorithms", "deterministic algorithms changed"))
    found = _first(knobs, want, have, "{label} ({change})")
    if found:
        return found
    if spec.op == "conv2d":
        return Diagnosis("cuDNN picked another algorithm (cudnn.benchmark autotuning, or another cuDNN)")
    if spec.op == "sdpa":
        return Diagnosis("torch picked another attention backend (flash, memory-efficient, cuDNN or math: "
                         "torch.nn.attention.sdpa_kernel) or another kernel of it")
    return Diagnosis("same precision, another summation order with every recorded version equal: cuBLAS heuristics "
                     "or torch's BLAS routing (preferred_blas_library)")


def compare_numerics(expected: NumericsSection, actual: NumericsSection | None, errors: dict[str, str],
                     policy: Policy, context: tuple[dict[str, Any], dict[str, Any]], *,
                     between_locks: bool = False) -> list[Finding]:
    """Findings for the probe: one per kernel that did not match, with the likely cause.

    Rules per kernel (`numerics.<id>`): exact = the same bits (default); compatible = the same precision class and
    canaries (order drift allowed); ignore.
    """
    want, have = context
    verdicts = classify(expected, actual, errors)
    prints = classify_fingerprints(expected, actual, errors)
    findings = []
    for verdict in verdicts + prints:
        if verdict.kind == "match":
            continue
        rule = rule_for(policy, f"numerics.{verdict.key}")
        if rule.rule == "ignore" or (rule.rule in ("compatible", "min") and verdict.kind == "order drift"):
            continue
        severity = "error" if verdict.kind in ("precision change", "invalid probe", "model changed") else rule.severity
        if verdict.key.startswith(FINGERPRINTS):
            found = diagnose_fingerprint(verdict, verdicts, expected, actual, want, have, between_locks)
        else:
            found = diagnose(verdict, verdicts, expected, actual, want, have, between_locks)
        findings.append(Finding(
            path=f"numerics.{verdict.key}", expected=verdict.expected, actual=f"{verdict.kind}: {verdict.actual}",
            severity=severity, hint=found.hint, cause=found.cause,
        ))
    return findings


#: Fingerprint verdicts are keyed `fingerprints.<name>`, so their findings are `numerics.fingerprints.<name>`.
FINGERPRINTS = "fingerprints."


def classify_fingerprints(expected: NumericsSection, actual: NumericsSection | None,
                          errors: dict[str, str]) -> list[KernelVerdict]:
    """Each locked fingerprint's verdict: the kernels' verdicts, and "model changed" when a module's parameters
    (not the environment) differ."""
    have = actual.fingerprints if actual is not None else {}
    verdicts = []
    for name, want in sorted(expected.fingerprints.items()):
        key, got = f"{FINGERPRINTS}{name}", have.get(name)
        label = want.output_sha256[7:19]
        if got is None:
            verdicts.append(KernelVerdict(key, "did not run", label, errors.get(key, "not run")))
        elif got.input_sha256 != want.input_sha256:
            verdicts.append(KernelVerdict(key, "invalid probe", f"inputs {want.input_sha256[7:19]}",
                                          f"inputs {got.input_sha256[7:19]}"))
        elif got.params_sha256 != want.params_sha256:
            verdicts.append(KernelVerdict(key, "model changed", f"parameters {want.params_sha256[7:19]}",
                                          f"parameters {got.params_sha256[7:19]}"))
        elif got.output_sha256 == want.output_sha256:
            kind = "nondeterministic" if want.repeat_equal and not got.repeat_equal else "match"
            verdicts.append(KernelVerdict(key, kind, label, got.output_sha256[7:19]
                                          + (" (repeat differs)" if kind != "match" else "")))
        elif not got.repeat_equal:
            verdicts.append(KernelVerdict(key, "nondeterministic", label,
                                          got.output_sha256[7:19] + " (repeat differs)"))
        else:
            verdicts.append(KernelVerdict(key, "order drift", label, got.output_sha256[7:19]))
    return verdicts


def diagnose_fingerprint(verdict: KernelVerdict, verdicts: list[KernelVerdict], expected: NumericsSection,
                         actual: NumericsSection | None, want: dict[str, Any], have: dict[str, Any],
                         between_locks: bool = False) -> Diagnosis:
    """The likely cause of a fingerprint's verdict: its own single-thread run first, then a built-in kernel that
    moved too (its cause is the fingerprint's), then the knobs that change any torch op."""
    name = verdict.key.removeprefix(FINGERPRINTS)
    spec = expected.fingerprints[name]
    got = actual.fingerprints.get(name) if actual is not None else None
    if verdict.kind == "did not run":
        if between_locks:
            return Diagnosis("B has no result for this fingerprint: B was captured without it in [policy] "
                             "fingerprints, or with --no-numerics")
        return Diagnosis(f"{spec.source} gave no fingerprint named {name} here (it returns other names now?)")
    if verdict.kind == "invalid probe":
        return Diagnosis(f"the example inputs {spec.source} passes differ from the lock's: its code changed, or it "
                         "makes them from an unseeded random generator; re-capture if intended")
    if verdict.kind == "model changed":
        return Diagnosis("the model's parameters differ from the lock's (other weights, or an unseeded "
                         "initialisation): the model changed, not the environment; re-capture if intended")
    if verdict.kind == "nondeterministic":
        return Diagnosis("the model gives different bits from one call to the next in this process: dropout or "
                         "another random op outside eval() mode, an unseeded generator, or atomics without "
                         "torch.use_deterministic_algorithms(True)",
                         "floats.torch.deterministic_algorithms"
                         if _changed(want, have, "floats.torch.deterministic_algorithms") else "")
    as_torch = KernelResult(op="fingerprint", library="torch", device="cpu", dtype="float32", shape="1x1x1",
                            input_sha256=spec.input_sha256, output_sha256=spec.output_sha256)
    thread_path, threads = _thread_knob(as_torch, want, have)
    single = spec.single_thread_sha256
    if got is not None and single and single != spec.output_sha256 and got.output_sha256 == single:
        if threads:
            return Diagnosis(f"thread count changed {threads}: these are the bits of the locked single-thread run",
                             thread_path)
        return Diagnosis("these are the bits of the locked single-thread run: the model ran on one thread "
                         "(torch.set_num_threads(1), OMP_NUM_THREADS=1, or one usable core)", thread_path)
    if got is not None and single and got.single_thread_sha256 == single:
        return Diagnosis(f"thread count changed {threads}" if threads else "the multi-threaded result moved but not "
                         "the single-threaded one: torch's thread count or OMP_NUM_THREADS", thread_path)
    moved = [v for v in verdicts if v.kind in ("order drift", "precision change")]
    if moved:
        first = moved[0]
        found = diagnose(first, verdicts, expected, actual, want, have, between_locks)
        return Diagnosis(f"the built-in kernel {first.key} moved too ({first.kind}): {found.hint}",
                         f"numerics.{first.key}")
    drift = _drift(as_torch, want, have)
    if drift.cause:
        return drift
    return Diagnosis("the model's outputs moved while every built-in kernel and recorded setting held: an op of the "
                     "model's own that the probe does not cover changed (another torch build, CPU path or "
                     "library), or the function's code changed")
