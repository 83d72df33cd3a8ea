"""A readable summary of a lock (pure: lock in, lines out)."""

from __future__ import annotations

from collections import Counter

from envlock.model import Lock, Target
from envlock.policy import default_policy


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def _target_lines(name: str, target: Target) -> list[str]:
    p, c, b = target.platform, target.cpu, target.blas
    container = f"container ({p.container_kind})" if p.container else "no container"
    lines = [
        f"target {name}",
        f"  platform   {p.system} {p.machine}, kernel {p.kernel}, {p.libc or 'libc unknown'}, "
        f"{p.distro or 'distro unknown'}, {container}",
        f"  cpu        {c.model} [{c.vendor}], microarchitecture {c.microarchitecture} ({c.generic}), "
        f"{c.usable_cores}/{c.logical_cores} cores",
        f"  isa        {' '.join(c.flags) or '(none of the numeric extensions)'}",
    ]
    for lib in b.libraries:
        details = ", ".join(
            part for part in (lib.version, lib.architecture and f"kernel {lib.architecture}",
                              lib.threading_layer and f"{lib.threading_layer} threading",
                              f"{lib.num_threads} threads") if part
        )
        lines.append(f"  {lib.user_api:<10} {lib.id}: {details}")
    if b.torch_blas:
        version = f" {b.torch_blas_version}" if b.torch_blas_version else ""
        lines.append(f"  torch blas {b.torch_blas}{version} (built in), CPU kernels {b.torch_cpu_capability or '?'}")
    if target.threads is not None:
        t = target.threads
        lines.append(f"  threads    torch {t.torch_intraop} intra-op, {t.torch_interop} inter-op")
    g = target.gpu
    if g.count:
        cuda = f", CUDA {g.cuda_driver} supported" if g.cuda_driver else ""
        lines.append(f"  gpu        {g.count} GPU(s), driver {g.driver}{cuda} (from {g.source or 'unknown'})")
        for d in g.devices:
            details = ", ".join(part for part in (
                d.compute_capability and f"compute {d.compute_capability}",
                d.sm_count is not None and f"{d.sm_count} SMs",
                d.memory_mib is not None and f"{d.memory_mib} MiB",
                d.mig and f"MIG: {len(d.mig_instances)} instance(s) "
                + " ".join(f"{m.profile or '?'}/{m.sm_count or '?'}SM" for m in d.mig_instances),
            ) if part)
            lines.append(f"    [{d.index}]    {d.name}" + (f": {details}" if details else ""))
    else:
        lines.append(f"  gpu        none ({g.status or 'no GPU visible'})")
    n = target.numerics
    if n is not None:
        devices = sorted({k.device for k in n.kernels.values()})
        lines.append(f"  numerics   {len(n.kernels)} probe kernels ({n.probe}) on {', '.join(devices) or 'nothing'}")
    return lines


def render_summary(lock: Lock, name: str) -> list[str]:
    """Lines describing what the lock holds."""
    h, py = lock.lock, lock.python
    sources = Counter(p.source for p in lock.packages.values())
    source_text = ", ".join(f"{n} {kind}" for kind, n in sorted(sources.items()))
    lines = [
        f"{name}: envlock lock, schema {h.schema}, written by envlock {h.envlock} at {h.created}",
        f"content      {h.content_hash} (matches the locked facts)",
        f"python       {py.implementation} {py.version} ({py.abi}, {py.platform_tag})",
        f"packages     {len(lock.packages)} ({source_text or 'none'})",
    ]
    t = lock.floats.torch
    if t is not None:
        lines.append(
            f"torch        {t.version}: TF32 matmul {_onoff(t.matmul_allow_tf32)}, TF32 cuDNN "
            f"{_onoff(t.cudnn_allow_tf32)}, fp32 matmul precision {t.float32_matmul_precision}, deterministic "
            f"algorithms {_onoff(t.deterministic_algorithms)}, cuDNN benchmark {_onoff(t.cudnn_benchmark)}, "
            f"flush-denormal {_onoff(t.flush_denormal)}, default dtype {t.default_dtype}"
        )
    else:
        lines.append("torch        not locked (not importable at capture, or captured with --no-torch)")
    if lock.cuda is not None:
        c = lock.cuda
        loaded = ", ".join(f"{name} {value}" for name, value in (("runtime", c.runtime), ("cuDNN", c.cudnn),
                                                                   ("cuBLAS", c.cublas), ("NCCL", c.nccl)) if value)
        lines.append(f"cuda         torch built for CUDA {c.torch_cuda}; loaded: {loaded or 'none'}; "
                     f"kernels for {' '.join(c.arch_list) or '?'}")
    set_vars = [f"{k}={v.value}" for k, v in lock.floats.env.items() if v.set]
    unset = [k for k, v in lock.floats.env.items() if not v.set]
    lines.append(f"env          set: {', '.join(set_vars) or 'none'}; unset: {len(unset)} of {len(lock.floats.env)}")
    for target_name in sorted(lock.targets):
        lines.extend(_target_lines(target_name, lock.targets[target_name]))
    defaults = default_policy().rules
    changed = sorted(k for k, v in lock.policy.rules.items() if defaults.get(k) != v)
    added = " (edited: " + ", ".join(changed) + ")" if changed else " (the defaults)"
    lines.append(
        f"policy       {len(lock.policy.rules)} rules{added}; missing packages: {lock.policy.missing_packages}, "
        f"extra packages: {lock.policy.extra_packages}"
    )
    return lines
