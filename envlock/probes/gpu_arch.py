"""Compute capability from an NVIDIA product name: a small explicit table of published facts, "" when unknown."""

from __future__ import annotations

TYPE_CHECKING = False  # re is imported where a name is looked up: a machine without an NVIDIA GPU never does
if TYPE_CHECKING:
    import re

# Product-name patterns, most specific first: one product family can share digits with another
# ("RTX 6000 Ada" vs "Quadro RTX 6000" vs "RTX A6000" vs "RTX PRO 6000 Blackwell").
# Values from NVIDIA's CUDA GPU list (https://developer.nvidia.com/cuda-gpus) and its legacy list
# (https://developer.nvidia.com/cuda-legacy-gpus): e.g. Tesla K80 3.7, Tesla K40/K20 and GTX 780/TITAN 3.5,
# Tesla K10 and GTX 680 3.0, Tesla M60/M40 and GTX 980 5.2, GTX 750 Ti and Quadro K2200 5.0 (Maxwell, despite
# the K), Jetson Nano/TX1 5.3, Jetson TX2 6.2, Xavier 7.2, Orin 8.7. A name that matches nothing (or a board
# sold in two generations, such as the GT 730) gives "" — a lock records an unknown capability rather than a guess.
_NAME_TABLE: tuple[tuple[str, str], ...] = (
    # Blackwell
    (r"\bRTX PRO \d{4}\b.*\bBlackwell\b", "12.0"),
    (r"\bRTX 50[5-9]0\b", "12.0"),
    (r"\bG?B300\b", "10.3"),
    (r"\bG?B(?:100|200)\b", "10.0"),
    # Hopper
    (r"\bGH200\b", "9.0"),
    (r"\bH(?:20|100|200|800)\b", "9.0"),
    # Ada Lovelace
    (r"\bRTX \d{4}(?: SFF)? Ada\b", "8.9"),
    (r"\bRTX 40[5-9]0\b", "8.9"),
    (r"\bL(?:4|20|40S?)\b", "8.9"),
    # Ampere
    (r"\bOrin\b", "8.7"),
    (r"\bA(?:100|30|800)\b", "8.0"),
    (r"\bRTX 30[5-9]0\b", "8.6"),
    (r"\bRTX A\d{4}\b", "8.6"),
    (r"\bA(?:2|10G?|16|40)\b", "8.6"),
    # Turing
    (r"\bQuadro RTX [3-8]000\b", "7.5"),
    (r"\bTITAN RTX\b", "7.5"),
    (r"\bRTX 20[6-8]0\b", "7.5"),
    (r"\bGTX 16[3-6]0\b", "7.5"),
    (r"\bT4\b", "7.5"),
    (r"\bT(?:400|600|1000|1200)\b", "7.5"),
    # Volta
    (r"\bXavier\b", "7.2"),
    (r"\bG?V100S?\b", "7.0"),
    (r"\bTITAN V\b", "7.0"),
    # Pascal
    (r"\bG?P100\b", "6.0"),
    (r"\bGTX 10[5-8]0\b", "6.1"),
    (r"\bGT 1030\b", "6.1"),
    (r"\bTITAN Xp\b", "6.1"),
    (r"\bTITAN X \(Pascal\)", "6.1"),
    (r"\bQuadro P\d{3,4}\b", "6.1"),
    (r"\bP(?:4|6|40)\b", "6.1"),
    (r"\bTX2\b", "6.2"),
    # Maxwell (before Kepler: "Quadro K2200" is Maxwell, "GTX TITAN X" is Maxwell, "TITAN X (Pascal)" is not)
    (r"\bJetson Nano\b|\bTX1\b", "5.3"),
    (r"\bTesla M(?:4|6|40|60)\b", "5.2"),
    (r"\bGRID M(?:6|60)\b", "5.2"),
    (r"\bM(?:6|60)-\d", "5.2"),
    (r"\bGTX 9[5-8]0\b", "5.2"),
    (r"\bGTX TITAN X\b", "5.2"),
    (r"\bQuadro M[2-6]000\b", "5.2"),
    (r"\bTesla M10\b|\bGRID M10\b", "5.0"),
    (r"\bGTX 750\b", "5.0"),
    (r"\bQuadro K(?:620|1200|2200)\b", "5.0"),
    # Kepler
    (r"\bK80\b", "3.7"),
    (r"\bK(?:20|40)(?:Xm|X|m|c|s)?\b", "3.5"),
    (r"\bGTX 780\b", "3.5"),
    (r"\bGTX TITAN(?: Black| Z)?\b", "3.5"),
    (r"\bQuadro K(?:5200|6000)\b", "3.5"),
    (r"\bK10\b", "3.0"),
    (r"\bGRID K[12]\b", "3.0"),
    (r"\bGTX 6[5-9]0\b", "3.0"),
    (r"\bGTX 7[67]0\b", "3.0"),
    (r"\bQuadro K(?:420|600|2000|4000|4200|5000)\b", "3.0"),
)


_COMPILED: tuple[tuple[re.Pattern[str], str], ...] | None = None


def _compiled() -> tuple[tuple[re.Pattern[str], str], ...]:
    """The name table compiled, on first use: a machine without an NVIDIA GPU never pays for its 50 patterns."""
    global _COMPILED
    if _COMPILED is None:
        import re

        _COMPILED = tuple((re.compile(pattern, re.IGNORECASE), cc) for pattern, cc in _NAME_TABLE)
    return _COMPILED


# Only architectures that have exactly one capability among the GPUs nvidia-smi reports.
# Volta also covers Jetson Xavier (7.2), but Jetson has no nvidia-smi report; Pascal, Ampere and
# Blackwell each span several capabilities, so they decide nothing on their own.
_ARCH_ONLY = {"volta": "7.0", "turing": "7.5", "ada lovelace": "8.9", "hopper": "9.0"}

# The capabilities each architecture name can have, to refuse a name match the report contradicts.
_ARCH_FAMILY = {
    "kepler": ("3.0", "3.2", "3.5", "3.7"),
    "maxwell": ("5.0", "5.2", "5.3"),
    "pascal": ("6.0", "6.1", "6.2"),
    "volta": ("7.0", "7.2"),
    "turing": ("7.5",),
    "ampere": ("8.0", "8.6", "8.7"),
    "ada lovelace": ("8.9",),
    "hopper": ("9.0",),
    "blackwell": ("10.0", "10.3", "11.0", "12.0", "12.1"),
}

# A GRID / vGPU slice is named after its board plus a profile suffix ("GRID P4-1Q", "NVIDIA A10-24Q").
_VGPU_SUFFIX = r"-\d+[A-Z]$"


def compute_capability(name: str, architecture: str = "") -> str:
    """The CUDA compute capability ("8.6") for a product name and architecture, or "" when unknown."""
    base = " ".join(name.split())
    import re

    base = re.sub(_VGPU_SUFFIX, "", base)
    arch = " ".join(architecture.split()).lower()
    for pattern, cc in _compiled():
        if pattern.search(base):
            allowed = _ARCH_FAMILY.get(arch)
            if allowed is not None and cc not in allowed:
                return ""
            return cc
    return _ARCH_ONLY.get(arch, "")
