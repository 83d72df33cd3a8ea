"""GPU facts from an `nvidia-smi -q -x` report: a pure parser for dumps taken on another machine."""

from __future__ import annotations

from envlock.errors import ModelError
from envlock.probes.gpu_arch import compute_capability

TYPE_CHECKING = False  # see envlock/errors.py
if TYPE_CHECKING:
    import xml.etree.ElementTree as ET
    from typing import Any

MAX_REPORT_BYTES = 16 * 1024 * 1024
MAX_DEPTH = 32
ROOT_TAG = "nvidia_smi_log"

# What nvidia-smi prints where a value does not apply or cannot be read; all mean "unknown", as a failed NVML
# call does. Any bracketed word ("[N/A]", "[GPU is lost]", "[Not Supported]") is such a status, never a value.
# "None" is unknown here too, except where it is a value: <virtualization_mode> (see VIRTUALIZATION_MODES).
_UNKNOWN = frozenset({
    "", "n/a", "none", "not supported", "not available", "not found", "unknown", "unknown error",
    "insufficient permissions",
    "requested functionality has been deprecated",
})
#: The lock's words for a GPU's virtualization mode, in the order of NVML's nvmlGpuVirtualizationMode_t
#: (0 NONE: bare metal, 1 PASSTHROUGH, 2 VGPU: a vGPU inside a VM, 3 HOST_VGPU, 4 HOST_VSGA), so the NVML
#: collector and this parser record the same word. nvidia-smi prints them as "None", "Pass-Through", "VGPU",
#: "Host VGPU", "Host VSGA"; its "None" means bare metal, not "unknown", so it is recorded as "none".
VIRTUALIZATION_MODES = ("none", "Pass-Through", "VGPU", "Host-VGPU", "Host-VSGA")
_VIRTUALIZATION = {word.lower().replace("-", ""): word for word in VIRTUALIZATION_MODES}
# Matched in full (re is imported where a report is parsed: the job-start path never parses one).
_SAFE_TEXT = r"[A-Za-z0-9][A-Za-z0-9 ._()/+,:#-]{0,127}"
_VERSION = r"[0-9]{1,4}(?:\.[0-9]{1,4}){1,3}"
_MIB = r"([0-9]{1,9})\s*MiB"
_COUNT = r"[0-9]{1,6}"
_SWITCH = ("Enabled", "Disabled")


class _Refused(Exception):
    """A construct a GPU report never contains and a parser must not expand."""


def _refuse(*_args: Any) -> None:
    raise _Refused("entity declarations are not allowed")


def _refuse_external(*_args: Any) -> int:
    raise _Refused("external entities are not allowed")


def _load(text: str, source: str) -> ET.Element:
    """The report's root element, parsed with DTD entities refused and nesting bounded."""
    # xml is imported only when a report is parsed: the job-start path never parses one.
    import xml.etree.ElementTree as ET
    from xml.parsers import expat

    if not isinstance(text, str):
        raise ModelError("gpu", f"{source}: expected text, got {type(text).__name__}")
    if len(text) > MAX_REPORT_BYTES or len(text.encode("utf-8", "replace")) > MAX_REPORT_BYTES:
        raise ModelError("gpu", f"{source}: report is larger than {MAX_REPORT_BYTES // (1024 * 1024)} MiB")
    body = text.lstrip("\ufeff \t\r\n")
    if not body.startswith("<"):
        raise ModelError("gpu", f"{source}: not an XML report (nvidia-smi -q -x output starts with '<')")
    if "<!ENTITY" in body:
        raise ModelError("gpu", f"{source}: entity declarations are not allowed in an nvidia-smi report")

    builder = ET.TreeBuilder()
    depth = 0

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal depth
        depth += 1
        if depth > MAX_DEPTH:
            raise _Refused(f"elements nested deeper than {MAX_DEPTH}")
        builder.start(tag, attrs)

    def end(tag: str) -> None:
        nonlocal depth
        depth -= 1
        builder.end(tag)

    def doctype(_name: str, _system: str | None, _public: str | None, internal_subset: int) -> None:
        # The real reports carry `<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_vNN.dtd">`, which expat
        # never fetches; an internal subset is where entity bombs live.
        if internal_subset:
            raise _Refused("a DOCTYPE with an internal subset is not allowed")

    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = builder.data
    parser.StartDoctypeDeclHandler = doctype
    parser.EntityDeclHandler = _refuse
    parser.UnparsedEntityDeclHandler = _refuse
    parser.ExternalEntityRefHandler = _refuse_external
    try:
        parser.Parse(body, True)
        root: ET.Element | None = builder.close()
    except _Refused as exc:
        raise ModelError("gpu", f"{source}: {exc}") from None
    except expat.ExpatError as exc:
        raise ModelError("gpu", f"{source}: not well-formed XML ({expat.ErrorString(exc.code)}, "
                                f"line {exc.lineno}, column {exc.offset})") from None
    except AssertionError:
        raise ModelError("gpu", f"{source}: not a complete XML document") from None
    if root is None:
        raise ModelError("gpu", f"{source}: not a complete XML document")
    if root.tag != ROOT_TAG:
        raise ModelError("gpu", f"{source}: root element is <{root.tag[:40]}>, not <{ROOT_TAG}>: "
                                "not an nvidia-smi -q -x report")
    return root


def _unknown(value: str) -> bool:
    """Whether nvidia-smi's text (whitespace already collapsed) says the value is missing rather than giving it."""
    return value.lower() in _UNKNOWN or (value.startswith("[") and value.endswith("]"))


def virtualization_word(value: str) -> str:
    """The lock's word for a virtualization mode as nvidia-smi or NVML names it ("None" -> "none"); others kept."""
    import re

    return _VIRTUALIZATION.get(re.sub(r"[\s_-]", "", value.lower()), value)


def _raw_text(element: ET.Element, path: str) -> str:
    found = element.find(path)
    if found is None or len(found):
        return ""
    return " ".join((found.text or "").split())


def _safe(value: str, where: str) -> str:
    import re

    if not re.fullmatch(_SAFE_TEXT, value):
        raise ModelError(where, f"unexpected value {value[:40]!r}")
    return value


def _text(element: ET.Element, path: str, where: str) -> str:
    """The stripped text at `path`, "" when absent or unknown; a value unsafe to record is an error."""
    value = _raw_text(element, path)
    return "" if _unknown(value) else _safe(value, where)


def _virtualization(gpu: ET.Element, where: str) -> str:
    """The GPU's virtualization mode in the lock's words ("none": bare metal), "" when the report does not say."""
    value = _raw_text(gpu, "gpu_virtualization_mode/virtualization_mode")
    if value.lower() != "none" and _unknown(value):
        return ""
    return virtualization_word(_safe(value, where))


def _version(element: ET.Element, path: str, where: str) -> str:
    import re

    value = _text(element, path, where)
    if value and not re.fullmatch(_VERSION, value):
        raise ModelError(where, f"not a version number: {value!r}")
    return value


def _mib(element: ET.Element, path: str, where: str) -> int | None:
    import re

    value = _text(element, path, where)
    if not value:
        return None
    match = re.fullmatch(_MIB, value)
    if match is None:
        raise ModelError(where, f"expected a size like '23028 MiB', got {value!r}")
    return int(match.group(1))


def _count(element: ET.Element, path: str, where: str) -> int | None:
    import re

    value = _text(element, path, where)
    if not value:
        return None
    if not re.fullmatch(_COUNT, value):
        raise ModelError(where, f"expected a whole number, got {value!r}")
    return int(value)


def _switch(element: ET.Element, path: str, where: str) -> str:
    value = _text(element, path, where)
    if value and value not in _SWITCH:
        raise ModelError(where, f"expected Enabled or Disabled, got {value!r}")
    return value


def _mig_devices(gpu: ET.Element, where: str) -> list[dict[str, Any]]:
    """One entry per MIG device listed under <mig_devices>; [] when the report lists none ("None")."""
    container = gpu.find("mig_devices")
    if container is None:
        return []
    devices: list[dict[str, Any]] = []
    for position, mig in enumerate(container.findall("mig_device")):
        place = f"{where}.mig_devices[{position}]"
        entry: dict[str, Any] = {}
        # The XML carries no profile name ("1g.10gb"): that comes from `nvidia-smi -L` or NVML, so it is
        # left out rather than guessed from memory and SM counts.
        for key, path in (
            ("gpu_instance_id", "gpu_instance_id"),
            ("compute_instance_id", "compute_instance_id"),
            ("sm_count", "device_attributes/shared/multiprocessor_count"),
        ):
            number = _count(mig, path, f"{place}.{key}")
            if number is not None:
                entry[key] = number
        memory = _mib(mig, "fb_memory_usage/total", f"{place}.memory_mib")
        if memory is not None:
            entry["memory_mib"] = memory
        devices.append(entry)
    return devices


def _device(gpu: ET.Element, index: int, where: str) -> dict[str, Any]:
    device: dict[str, Any] = {"index": index}
    name = _text(gpu, "product_name", f"{where}.name")
    architecture = _text(gpu, "product_architecture", f"{where}.architecture")
    if name:
        device["name"] = name
    if architecture:
        device["architecture"] = architecture
    capability = compute_capability(name, architecture)
    if capability:
        device["compute_capability"] = capability
    memory = _mib(gpu, "fb_memory_usage/total", f"{where}.memory_mib")
    if memory is not None:
        device["memory_mib"] = memory
    for key, path in (
        ("mig_mode", "mig_mode/current_mig"),
        ("ecc", "ecc_mode/current_ecc"),
        ("persistence", "persistence_mode"),
    ):
        value = _switch(gpu, path, f"{where}.{key}")
        if value:
            device[key] = value
    mig = _mig_devices(gpu, where)
    if mig:
        device["mig_devices"] = mig
    virtualization = _virtualization(gpu, f"{where}.virtualization")
    if virtualization:
        device["virtualization"] = virtualization
    for key, path in (
        ("uuid", "uuid"),
        ("serial", "serial"),
    ):
        value = _text(gpu, path, f"{where}.{key}")
        if value:
            device[key] = value
    return device


def _indices(gpus: list[ET.Element]) -> list[int]:
    """Each GPU's index: its minor number when every GPU has a distinct numeric one, else its report order."""
    import re

    minors = [" ".join((gpu.findtext("minor_number") or "").split()) for gpu in gpus]
    if all(re.fullmatch(_COUNT, minor) for minor in minors) and len(set(minors)) == len(minors):
        return [int(minor) for minor in minors]
    return list(range(len(gpus)))


def parse_nvidia_smi_xml(text: str, source_name: str = "nvidia-smi") -> dict[str, Any]:
    """Raw GPU facts (driver, CUDA the driver supports, devices) from `nvidia-smi -q -x` output."""
    root = _load(text, source_name)
    facts: dict[str, Any] = {"source": source_name}
    driver = _version(root, "driver_version", "gpu.driver")
    if driver:
        facts["driver"] = driver
    cuda = _version(root, "cuda_version", "gpu.cuda_driver")
    if cuda:
        facts["cuda_driver"] = cuda
    gpus = root.findall("gpu")
    facts["devices"] = [
        _device(gpu, index, f"gpu.devices[{position}]")
        for position, (gpu, index) in enumerate(zip(gpus, _indices(gpus), strict=True))
    ]
    return facts
