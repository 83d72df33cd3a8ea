"""A readable summary of a lock (pure: lock in, lines out).

It says what the lock knows in plain words and leaves out what it does not: no placeholder ("unknown", "?",
"None") ever stands in for a value.
"""

from __future__ import annotations

from collections import Counter

from envlock.compare.hints import size
from envlock.errors import printable
from envlock.model import CpuSection, GpuDevice, GpuSection, Lock, MigInstance, NumericsSection, Target
from envlock.policy import default_policy
from envlock.probes.nvsmi import VIRTUALIZATION_MODES

#: Where the GPU facts came from (`gpu.source`), as a reader would say it.
GPU_SOURCES = {"nvml": "read through NVML", "nvidia-smi": "read from nvidia-smi",
               "proc": "from /proc/driver/nvidia/version"}
#: `gpu.devices.*.virtualization` (NVML's modes, in their order) in words.
VIRTUALIZATION = dict(zip(VIRTUALIZATION_MODES, ("bare metal", "passed through to a VM", "a vGPU in a VM",
                                                 "vGPU host", "vSGA host"), strict=True))
#: How a package was installed (`packages.*.source`), in words.
PACKAGE_SOURCES = {"index": "from an index", "vcs": "from version control", "url": "from a URL",
                   "local": "from local files", "editable": "editable", "unknown": "from an unrecorded source"}
#: The `CPU implementer` codes of /proc/cpuinfo on Arm machines (Linux arch/arm64/include/asm/cputype.h).
ARM_IMPLEMENTERS = {"0x41": "Arm", "0x42": "Broadcom", "0x43": "Cavium", "0x46": "Fujitsu", "0x48": "HiSilicon",
                    "0x4e": "NVIDIA", "0x50": "Applied Micro", "0x51": "Qualcomm", "0x53": "Samsung",
                    "0x61": "Apple", "0xc0": "Ampere"}
#: What the CPU probe records when /proc/cpuinfo does not say.
_NOT_KNOWN = ("", "unknown")


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _severity(severity: str) -> str:
    return "an error" if severity == "error" else "a warning"


def _cpu_name(c: CpuSection) -> str:
    """The CPU's model and maker as far as the lock knows them; "" when it knows neither."""
    model = "" if c.model in _NOT_KNOWN else c.model
    vendor = "" if c.vendor in _NOT_KNOWN else c.vendor
    if vendor.startswith("0x"):
        # An Arm machine's /proc/cpuinfo names its maker by an implementer code only.
        maker = ARM_IMPLEMENTERS.get(vendor.lower(), "")
        if not model:
            return f"{maker} CPU (implementer {vendor})" if maker else f"CPU of implementer {vendor}"
        vendor = f"{maker}, implementer {vendor}" if maker else f"implementer {vendor}"
    if model and vendor:
        return f"{model} [{vendor}]"
    return model or (f"{vendor} CPU" if vendor else "")


def _cpu_text(c: CpuSection) -> str:
    name = _cpu_name(c)
    parts = [name] if name else []
    if c.microarchitecture not in _NOT_KNOWN:
        generic = (f" (generic {c.generic})"
                   if c.generic not in _NOT_KNOWN and c.generic != c.microarchitecture else "")
        parts.append(f"microarchitecture {c.microarchitecture}{generic}")
    parts.append(f"{c.usable_cores} of {_plural(c.logical_cores, 'logical core')} usable")
    caches = [f"{label} {size(value)}" for label, value in (("L1d", c.cache_l1d), ("L1i", c.cache_l1i),
                                                            ("L2", c.cache_l2), ("L3", c.cache_l3)) if value]
    if caches:
        parts.append("caches " + ", ".join(caches))
    return ", ".join(parts)


def _mig_line(m: MigInstance, shared_gpu_instance: bool) -> str:
    ids = f"GPU instance {m.gpu_instance_id}"
    if shared_gpu_instance or m.compute_instance_id:
        ids += f", compute instance {m.compute_instance_id}"
    label = f"MIG {m.profile} ({ids})" if m.profile else f"MIG {ids}"
    details = ", ".join(part for part in (
        m.sm_count is not None and _plural(m.sm_count, "SM"),
        m.memory_mib is not None and f"{m.memory_mib} MiB",
    ) if part)
    return label + (f": {details}" if details else "")


def _device_lines(d: GpuDevice) -> list[str]:
    details = [part for part in (
        d.compute_capability and f"compute capability {d.compute_capability}",
        # With MIG on, a whole-GPU SM count is not what a process gets: each instance has its own, below.
        d.sm_count is not None and not d.mig and _plural(d.sm_count, "SM"),
        d.memory_mib is not None and f"{d.memory_mib} MiB",
        d.ecc is not None and f"ECC {_onoff(d.ecc)}",
        d.virtualization and VIRTUALIZATION.get(d.virtualization, f"virtualization {d.virtualization}"),
    ) if part]
    if d.mig:
        details.append(f"MIG on, {_plural(len(d.mig_instances), 'instance')}" if d.mig_instances
                       else "MIG on, no instances")
    lines = [f"    [{d.index}]    {d.name}" + (f": {', '.join(details)}" if details else "")]
    per_gpu_instance = Counter(m.gpu_instance_id for m in d.mig_instances)
    lines.extend(f"           {_mig_line(m, per_gpu_instance[m.gpu_instance_id] > 1)}" for m in d.mig_instances)
    return lines


def _gpu_lines(g: GpuSection) -> list[str]:
    if not g.count:
        status = g.status or "no GPU visible"
        if g.driver:
            found = "NVIDIA driver found"
            status = (status.replace(found, f"NVIDIA driver {g.driver} found", 1) if found in status
                      else f"{status}; NVIDIA driver {g.driver}")
        return [f"  gpu        none ({status})"]
    parts = [_plural(g.count, "GPU")]
    if g.driver:
        cuda = f", supports CUDA up to {g.cuda_driver}" if g.cuda_driver else ""
        parts.append(f"NVIDIA driver {g.driver}{cuda}")
    elif g.cuda_driver:
        parts.append(f"the driver supports CUDA up to {g.cuda_driver}")
    source = GPU_SOURCES.get(g.source, f"from {g.source}") if g.source else ""
    lines = [f"  gpu        {', '.join(parts)}" + (f" ({source})" if source else "")]
    for d in g.devices:
        lines.extend(_device_lines(d))
    return lines


def _numerics_line(n: NumericsSection | None) -> str:
    if n is None:
        return "  numerics   not recorded: the numerics probe did not run when this lock was captured"
    if not n.kernels:
        return f"  numerics   the numerics probe ({n.probe}) ran but recorded no kernel results"
    devices = Counter(k.device for k in n.kernels.values())
    where = (next(iter(devices)) if len(devices) == 1
             else ", ".join(f"{device} ({count})" for device, count in sorted(devices.items())))
    mine = "; fingerprints: " + ", ".join(f"{name} ({r.source})" for name, r in sorted(n.fingerprints.items())) \
        if n.fingerprints else ""
    return f"  numerics   {_plural(len(n.kernels), 'probe kernel')} ({n.probe}) on {where}{mine}"


def _target_lines(name: str, target: Target) -> list[str]:
    p, b = target.platform, target.blas
    if p.container:
        container = f"in a {p.container_kind} container" if p.container_kind else "in a container"
    else:
        container = "not in a container"
    platform = ", ".join(part for part in (f"{p.system} {p.machine}", f"kernel {p.kernel}", p.libc, p.distro,
                                           container) if part)
    lines = [
        f"target {name}",
        f"  platform   {platform}",
        f"  cpu        {_cpu_text(target.cpu)}",
        f"  isa        {' '.join(target.cpu.flags) or '(none of the numeric extensions)'}",
    ]
    for lib in b.libraries:
        details = ", ".join(
            part for part in (lib.version, lib.architecture and f"kernel {lib.architecture}",
                              lib.threading_layer and f"{lib.threading_layer} threading",
                              _plural(lib.num_threads, "thread")) if part
        )
        lines.append(f"  {lib.user_api:<10} {lib.id}: {details}")
    if b.torch_blas:
        version = f" {b.torch_blas_version}" if b.torch_blas_version else ""
        kernels = f", CPU kernels {b.torch_cpu_capability}" if b.torch_cpu_capability else ""
        lines.append(f"  torch blas {b.torch_blas}{version} (built into torch){kernels}")
    if target.threads is not None:
        t = target.threads
        lines.append(f"  threads    torch: {t.torch_intraop} intra-op, {t.torch_interop} inter-op")
    lines.extend(_gpu_lines(target.gpu))
    lines.append(_numerics_line(target.numerics))
    return lines


def _torch_line(lock: Lock) -> str:
    t = lock.floats.torch
    if t is None:
        return "torch        not locked (not importable at capture, or captured with --no-torch)"
    settings = [
        f"TF32 matmul {_onoff(t.matmul_allow_tf32)}",
        f"TF32 cuDNN {_onoff(t.cudnn_allow_tf32)}",
        t.float32_matmul_precision and f"fp32 matmul precision {t.float32_matmul_precision}",
        f"deterministic algorithms {_onoff(t.deterministic_algorithms)}",
        f"cuDNN benchmark {_onoff(t.cudnn_benchmark)}",
        f"flush-denormal {_onoff(t.flush_denormal)}",
        f"default dtype {t.default_dtype}",
    ]
    return f"torch        {t.version}: {', '.join(s for s in settings if s)}"


def _policy_line(lock: Lock) -> str:
    defaults = default_policy().rules
    rules = lock.policy.rules
    edited = sorted(k for k, v in rules.items() if defaults.get(k) != v)
    removed = sorted(k for k in defaults if k not in rules)
    changes = [part for part in (edited and "edited: " + ", ".join(edited),
                                 removed and "removed: " + ", ".join(removed)) if part]
    which = f" ({'; '.join(changes)})" if changes else " (the defaults)"
    return (f"policy       {_plural(len(rules), 'rule')}{which}; a missing package is "
            f"{_severity(lock.policy.missing_packages)}, an extra one {_severity(lock.policy.extra_packages)}")


def render_summary(lock: Lock, name: str) -> list[str]:
    """Lines describing what the lock holds."""
    h, py = lock.lock, lock.python
    sources = Counter(p.source for p in lock.packages.values())
    source_text = ", ".join(f"{n} {PACKAGE_SOURCES.get(kind, kind)}"
                            for kind, n in sorted(sources.items(), key=lambda item: (-item[1], item[0])))
    lines = [
        f"{printable(name)}: envlock lock, schema {h.schema}, written by envlock {h.envlock} at {h.created}",
        f"content      {h.content_hash} (matches the locked facts)",
        f"python       {py.implementation} {py.version} ({py.abi}, {py.platform_tag})",
        f"packages     {len(lock.packages)} ({source_text})" if lock.packages else "packages     none",
        _torch_line(lock),
    ]
    if lock.cuda is not None:
        c = lock.cuda
        loaded = ", ".join(f"{name} {value}" for name, value in (("runtime", c.runtime), ("cuDNN", c.cudnn),
                                                                   ("cuBLAS", c.cublas), ("NCCL", c.nccl)) if value)
        parts = [f"torch built for CUDA {c.torch_cuda}",
                 f"loaded: {loaded}" if loaded else "no CUDA library versions recorded"]
        if c.arch_list:
            parts.append(f"kernels for {' '.join(c.arch_list)}")
        lines.append(f"cuda         {'; '.join(parts)}")
    env = lock.floats.env
    set_vars = [f"{k}={v.value}" for k, v in env.items() if v.set]
    if not env:
        lines.append("env          no environment variables recorded")
    elif set_vars:
        lines.append(f"env          set: {', '.join(set_vars)}; unset: {len(env) - len(set_vars)} of {len(env)}")
    else:
        lines.append(f"env          none of the {len(env)} variables that change numbers is set")
    for target_name in sorted(lock.targets):
        lines.extend(_target_lines(target_name, lock.targets[target_name]))
    lines.append(_policy_line(lock))
    return lines
