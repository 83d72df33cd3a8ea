"""Library shadowing: an nvidia-* wheel says one NCCL (cuDNN, cuBLAS, CUDA runtime) and the process loads another
from somewhere else. Fed from recorded facts: a /proc/self/maps listing (as probes.cuda reads it) and the package
facts of the H100 host in fixtures/hosts, whose wheels live in /usr/local/lib/python3.10/dist-packages.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from envlock.capturing import build_lock, capture
from envlock.compare import compare_locks, shadow_findings
from envlock.facts import dumps_facts, load_facts
from envlock.lockfile import dumps
from envlock.model import Policy, Rule
from envlock.probes.cuda import loaded_libraries
from envlock.probes.shadowing import Shadow, find_shadowed
from envlock.verifying import verify

H100 = Path(__file__).resolve().parent.parent / "fixtures" / "hosts" / "linux-nvidia550-cuda12.4-sapphirerapids-h100x8"
SITE = "/usr/local/lib/python3.10/dist-packages"
SYSTEM_NCCL = "/usr/lib/x86_64-linux-gnu/libnccl.so.2"
CREATED = "2026-01-01T00:00:00Z"


def maps(*paths: str) -> str:
    """A /proc/self/maps listing with each library mapped (text and data), among lines that are not files."""
    lines = ["55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 131 /usr/bin/python3.10",
             "7f3a10000000-7f3a10021000 rw-p 00000000 00:00 0 ",
             "7ffd5a1e0000-7ffd5a201000 rw-p 00000000 00:00 0                          [stack]"]
    for i, path in enumerate(paths):
        base = 0x7F3B00000000 + i * 0x10000000
        lines.append(f"{base:x}-{base + 0x200000:x} r-xp 00000000 fd:01 {4000 + i} {path}")
        lines.append(f"{base + 0x200000:x}-{base + 0x210000:x} rw-p 00200000 fd:01 {4000 + i} {path}")
    return "\n".join(lines) + "\n"


def h100_facts(nccl_path: str = f"{SITE}/nvidia/nccl/lib/libnccl.so.2", nccl: int = 22005) -> dict[str, Any]:
    """The H100 host's facts with the NCCL the process maps at `nccl_path`, reporting version `nccl`."""
    facts = copy.deepcopy(load_facts(H100 / "facts.json"))
    cuda = facts["cuda"]
    others = [p for name, p in sorted(cuda["library_paths"].items()) if name != "nccl"]
    cuda["library_paths"] = loaded_libraries(maps(*others, nccl_path))
    cuda["library_versions"]["nccl"] = nccl
    return facts


def nccl_wheel(facts: dict[str, Any]) -> dict[str, Any]:
    (wheel,) = [p for p in facts["packages"] if p["name"] == "nvidia-nccl-cu12"]
    return dict(wheel)


# --- finding the shadowed library --------------------------------------------------------------------------


def test_the_maps_listing_is_read_as_probes_cuda_reads_it() -> None:
    paths = loaded_libraries(maps(f"{SITE}/nvidia/cudnn/lib/libcudnn.so.9", SYSTEM_NCCL))
    assert paths == {"cudnn": f"{SITE}/nvidia/cudnn/lib/libcudnn.so.9", "nccl": SYSTEM_NCCL}


def test_a_system_nccl_over_the_wheels_is_shadowing() -> None:
    facts = h100_facts(SYSTEM_NCCL, 21805)
    assert nccl_wheel(facts)["version"] == "2.20.5"
    assert find_shadowed(facts["cuda"], facts["packages"]) == (Shadow(
        field="nccl", wheel="nvidia-nccl-cu12", wheel_version="2.20.5", wheel_dir=f"{SITE}/nvidia/nccl/lib",
        loaded_version="2.18.5", loaded_path=SYSTEM_NCCL),)


def test_loaded_from_the_wheels_own_folder_is_no_shadow() -> None:
    facts = h100_facts()
    assert find_shadowed(facts["cuda"], facts["packages"]) == ()


def test_a_version_difference_inside_the_wheels_folder_is_no_shadow() -> None:
    # The wheel's own copy reports another number than its package version (a patched file, a post release):
    # that is the locked-version rule's business (cuda.nccl), not shadowing.
    facts = h100_facts(nccl=21805)
    assert find_shadowed(facts["cuda"], facts["packages"]) == ()


def test_the_same_release_from_elsewhere_is_no_shadow() -> None:
    facts = h100_facts(SYSTEM_NCCL, 22005)
    assert find_shadowed(facts["cuda"], facts["packages"]) == ()


def test_version_numbers_compare_as_releases_of_the_wheel() -> None:
    # cudart reports 12.4 and cuBLASLt 12.4.2 for wheels 12.4.99 / 12.4.2.65: same release, from elsewhere.
    facts = copy.deepcopy(load_facts(H100 / "facts.json"))
    facts["cuda"]["library_paths"] = {"cudart": "/usr/local/cuda-12.4/lib64/libcudart.so.12",
                                      "cublaslt": "/usr/local/cuda-12.4/lib64/libcublasLt.so.12"}
    assert find_shadowed(facts["cuda"], facts["packages"]) == ()
    facts["cuda"]["library_versions"]["cudart"] = 12010
    (shadow,) = find_shadowed(facts["cuda"], facts["packages"])
    assert (shadow.field, shadow.wheel, shadow.loaded_version) == ("runtime", "nvidia-cuda-runtime-cu12", "12.1")
    assert shadow.wheel_dir == f"{SITE}/nvidia/cuda_runtime/lib"


def test_without_the_wheel_a_system_library_is_no_shadow() -> None:
    facts = h100_facts(SYSTEM_NCCL, 21805)
    facts["packages"] = [p for p in facts["packages"] if p["name"] != "nvidia-nccl-cu12"]
    assert find_shadowed(facts["cuda"], facts["packages"]) == ()


def test_a_cuda13_wheel_without_the_cu_suffix() -> None:
    facts = h100_facts(SYSTEM_NCCL, 22105)
    facts["packages"] = [{"name": "nvidia-nccl", "version": "2.27.7", "location": SITE}]
    (shadow,) = find_shadowed(facts["cuda"], facts["packages"])
    assert (shadow.wheel, shadow.wheel_dir) == ("nvidia-nccl", f"{SITE}/nvidia")
    facts["cuda"]["library_paths"]["nccl"] = f"{SITE}/nvidia/cu13/lib/libnccl.so.2"
    assert find_shadowed(facts["cuda"], facts["packages"]) == ()


@pytest.mark.parametrize("cuda", [None, "x", {"library_paths": [], "library_versions": {}},
                                  {"library_paths": {"nccl": SYSTEM_NCCL}, "library_versions": {"nccl": "2.18"}}])
def test_facts_without_what_it_needs_give_nothing(cuda: Any) -> None:
    assert find_shadowed(cuda, [{"name": "nvidia-nccl-cu12", "version": "2.20.5", "location": SITE}]) == ()
    assert find_shadowed(h100_facts(SYSTEM_NCCL, 21805)["cuda"], None) == ()


# --- the finding -------------------------------------------------------------------------------------------


def test_the_finding_names_both_versions_and_the_library_that_won() -> None:
    facts = h100_facts(SYSTEM_NCCL, 21805)
    (found,) = shadow_findings(find_shadowed(facts["cuda"], facts["packages"]), Policy())
    assert (found.path, found.severity) == ("cuda.shadowed.nccl", "error")
    assert found.expected == f"nccl 2.20.5 from nvidia-nccl-cu12 ({SITE}/nvidia/nccl/lib)"
    assert found.actual == f"nccl 2.18.5 from {SYSTEM_NCCL}"
    assert f"the process loaded {SYSTEM_NCCL} (nccl 2.18.5) over the nvidia-nccl-cu12 wheel's 2.20.5" in found.hint
    assert "LD_LIBRARY_PATH" in found.hint and "/usr/lib/x86_64-linux-gnu" in found.hint


def test_verify_reports_the_shadowing_as_the_cause_of_the_nccl_version(tmp_path: Path) -> None:
    lock = tmp_path / "envlock.lock"
    lock.write_bytes((H100 / "expected.lock").read_bytes())
    report = verify(lock, facts=h100_facts(SYSTEM_NCCL, 21805))
    assert not report.ok
    by_path = {f.path: f for f in report.findings}
    assert set(by_path) == {"cuda.nccl", "cuda.shadowed.nccl"}
    assert by_path["cuda.shadowed.nccl"].severity == "error"
    assert by_path["cuda.nccl"].cause == "cuda.shadowed.nccl"
    assert by_path["cuda.nccl"].hint == ("the process loads nccl 2.18.5, the lock has 2.20.5, and not from its "
                                         "wheel: see cuda.shadowed.nccl")
    assert SYSTEM_NCCL in by_path["cuda.shadowed.nccl"].hint


def test_verify_from_the_wheels_folder_has_no_shadow_finding(tmp_path: Path) -> None:
    lock = tmp_path / "envlock.lock"
    lock.write_bytes((H100 / "expected.lock").read_bytes())
    assert verify(lock, facts=h100_facts()).findings == ()
    report = verify(lock, facts=h100_facts(nccl=21805))  # version only, the wheel's own file
    assert [f.path for f in report.findings] == ["cuda.nccl"]


def test_the_policy_can_lower_or_silence_it(tmp_path: Path) -> None:
    lock = tmp_path / "envlock.lock"
    lock.write_bytes((H100 / "expected.lock").read_bytes())
    facts = h100_facts(SYSTEM_NCCL, 21805)
    report = verify(lock, facts=facts, ignore=["cuda.shadowed.nccl", "cuda.nccl"])
    assert report.findings == ()
    report = verify(lock, facts=facts, warn=["cuda.shadowed.*"], ignore=["cuda.nccl"])
    assert [(f.path, f.severity) for f in report.findings] == [("cuda.shadowed.nccl", "warn")]
    policy = Policy(rules={"cuda.shadowed.*": Rule(rule="ignore", severity="warn")})
    assert shadow_findings(find_shadowed(facts["cuda"], facts["packages"]), policy) == []


def test_compare_locks_skips_it_with_the_cuda_section() -> None:
    facts = h100_facts(SYSTEM_NCCL, 21805)
    lock = build_lock(h100_facts(), created=CREATED)
    shadows = find_shadowed(facts["cuda"], facts["packages"])
    skipped = compare_locks(lock, build_lock(facts, created=CREATED), skip=("cuda",), shadowed=shadows)
    assert skipped.findings == ()


# --- capture -----------------------------------------------------------------------------------------------


def test_capture_warns_of_a_shadowed_library(tmp_path: Path) -> None:
    result = capture(tmp_path / "envlock.lock", facts=h100_facts(SYSTEM_NCCL, 21805), numerics=False)
    (line,) = result.shadowed
    assert line.startswith("cuda.shadowed.nccl: the process loaded /usr/lib/x86_64-linux-gnu/libnccl.so.2")
    assert result.lock.cuda is not None and result.lock.cuda.nccl == "2.18.5"  # the lock records what loaded
    assert capture(tmp_path / "clean.lock", facts=h100_facts(), numerics=False).shadowed == ()


def test_capture_prints_the_warning_on_stderr(cli: Any, tmp_path: Path) -> None:
    facts = tmp_path / "facts.json"
    facts.write_text(dumps_facts(h100_facts(SYSTEM_NCCL, 21805)), encoding="utf-8")
    result = cli("capture", "--facts", str(facts), "-o", str(tmp_path / "envlock.lock"))
    assert result.exit_code == 0, result.output
    assert f"envlock: warning: cuda.shadowed.nccl: the process loaded {SYSTEM_NCCL}" in result.stderr
    assert "envlock: warning" not in result.stdout


def test_verify_json_names_the_path_and_both_versions(cli: Any, tmp_path: Path) -> None:
    lock = tmp_path / "envlock.lock"
    lock.write_text(dumps(build_lock(h100_facts(), created=CREATED), name=lock.name), encoding="utf-8")
    now = tmp_path / "now.json"
    now.write_text(dumps_facts(h100_facts(SYSTEM_NCCL, 21805)), encoding="utf-8")
    result = cli("verify", "--json", "--facts", str(now), str(lock))
    assert result.exit_code == 1, result.output
    (found,) = [f for f in json.loads(result.stdout)["findings"] if f["path"] == "cuda.shadowed.nccl"]
    assert (found["expected"], found["actual"], found["severity"]) == ("2.20.5", "2.18.5", "error")


def test_evaluate_judges_what_gather_observed() -> None:
    from envlock.verifying import Observed, evaluate

    facts = h100_facts(SYSTEM_NCCL, 22005)  # the locked release from elsewhere: no shadow, no finding
    lock = build_lock(h100_facts(), created=CREATED)
    now = build_lock(facts, created=CREATED)
    assert evaluate(lock, Observed(current=now, skipped=("numerics",)), lock.policy).findings == ()
    shadow = Shadow(field="cudnn", wheel="nvidia-cudnn-cu12", wheel_version="9.1.0.70",
                    wheel_dir=f"{SITE}/nvidia/cudnn/lib", loaded_version="8.9.2",
                    loaded_path="/opt/cudnn/lib/libcudnn.so.8")
    report = evaluate(lock, Observed(current=now, skipped=("numerics",), shadowed=(shadow,)), lock.policy)
    assert [(f.path, f.severity) for f in report.findings] == [("cuda.shadowed.cudnn", "error")]
    assert not report.ok
