"""`nvidia-smi -q -x` reports -> raw GPU facts; compute capability from product names."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from envlock.model import ModelError
from envlock.probes.gpu import parse_gpu
from envlock.probes.gpu_arch import compute_capability
from envlock.probes.nvsmi import MAX_REPORT_BYTES, VIRTUALIZATION_MODES, parse_nvidia_smi_xml, virtualization_word

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "gpu-samples" / "nvidia-smi"
OWN = Path(__file__).resolve().parents[1] / "fixtures" / "nvidia-smi"

needs_samples = pytest.mark.skipif(
    not SAMPLES.is_dir(), reason=f"shared nvidia-smi samples not present at {SAMPLES} (read in place, never copied)"
)

# file -> driver, highest CUDA the driver supports, device count, first name, first memory (MiB), capability.
# None: the report does not say; "": a capability envlock does not know for that name.
EXPECTED: dict[str, tuple[str | None, str | None, int, str, int, str]] = {
    "3090-v13.xml": ("590.44.01", "13.1", 1, "NVIDIA GeForce RTX 3090", 24576, "8.6"),
    "a10g.xml": ("515.105.01", "11.7", 1, "NVIDIA A10G", 23028, "8.6"),
    "dual_2070-v13.xml": ("590.44.01", "13.1", 2, "NVIDIA GeForce RTX 2070", 8192, "7.5"),
    "gt-1030.xml": ("470.74", "11.4", 1, "NVIDIA GeForce GT 1030", 1998, "6.1"),
    "gtx-1070-ti.xml": (None, None, 1, "GeForce GTX 1070 Ti", 4096, "6.1"),
    "gtx-1660-ti.xml": ("418.43", "10.1", 1, "Graphics Device", 5912, ""),
    "quadro-p2000-v12.xml": ("525.125.06", "12.0", 1, "Quadro P2000", 5120, "6.1"),
    "quadro-p400.xml": ("418.43", "10.1", 1, "Quadro P400", 1998, "6.1"),
    "rtx-3060-v12.xml": ("570.124.04", "12.8", 1, "NVIDIA GeForce RTX 3060", 12288, "8.6"),
    "rtx-3080-v12.xml": ("536.40", "12.2", 1, "NVIDIA GeForce RTX 3080", 10240, "8.6"),
    "rtx-3080-v13.xml": ("595.58.03", "13.2", 1, "NVIDIA GeForce RTX 3080", 10240, "8.6"),
    "rtx-3090-v12.xml": ("525.147.05", "12.0", 1, "NVIDIA GeForce RTX 3090", 24576, "8.6"),
    "tesla_p4.xml": ("513.46", "11.6", 1, "GRID P4-1Q", 1024, "6.1"),
}


def _sample(name: str) -> dict[str, Any]:
    return parse_nvidia_smi_xml((SAMPLES / name).read_text(encoding="utf-8"), name)


def _own(name: str) -> dict[str, Any]:
    return parse_nvidia_smi_xml((OWN / name).read_text(encoding="utf-8"))


@needs_samples
def test_every_shared_sample_is_in_the_table() -> None:
    assert sorted(p.name for p in SAMPLES.glob("*.xml")) == sorted(EXPECTED)


@needs_samples
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_shared_sample(name: str) -> None:
    driver, cuda, count, first_name, memory, capability = EXPECTED[name]
    facts = _sample(name)
    assert facts["source"] == name
    assert facts.get("driver") == driver
    assert facts.get("cuda_driver") == cuda
    assert len(facts["devices"]) == count
    first = facts["devices"][0]
    assert first["name"] == first_name
    assert first["memory_mib"] == memory
    assert first.get("compute_capability", "") == capability
    assert [device["index"] for device in facts["devices"]] == list(range(count))
    # No report among the samples has MIG: the key is left out, never filled with a guess.
    assert all("mig_mode" not in device and "mig_devices" not in device for device in facts["devices"])
    assert json.loads(json.dumps(facts)) == facts
    assert None not in facts.values()


@needs_samples
def test_a10g_switches_and_passthrough() -> None:
    device = _sample("a10g.xml")["devices"][0]
    assert device == {
        "index": 0,
        "name": "NVIDIA A10G",
        "architecture": "Ampere",
        "compute_capability": "8.6",
        "memory_mib": 23028,
        "ecc": "Enabled",
        "persistence": "Disabled",
        "virtualization": "Pass-Through",
        "uuid": "GPU-9a9a6c50-2a47-2f51-a902-b82c3b127e94",
        "serial": "0000000000000",
    }


@needs_samples
def test_grid_vgpu_slice() -> None:
    device = _sample("tesla_p4.xml")["devices"][0]
    assert device["virtualization"] == "VGPU"
    assert device["architecture"] == "Pascal"
    # persistence_mode and minor_number are N/A inside the guest: unknown, so left out / report order.
    assert "persistence" not in device
    assert device["index"] == 0
    assert "serial" not in device


@needs_samples
def test_two_gpu_host_keeps_each_device() -> None:
    devices = _sample("dual_2070-v13.xml")["devices"]
    assert [d["uuid"] for d in devices] == [
        "GPU-12345678-aaaa-bbbb-cccc-0123456789ab",
        "GPU-12345678-aaaa-bbbb-cccc-0123456789cd",
    ]
    assert {d["architecture"] for d in devices} == {"Turing"}


@needs_samples
def test_partial_report_gives_only_what_it_says() -> None:
    facts = _sample("gtx-1070-ti.xml")
    assert set(facts) == {"source", "devices"}
    assert facts["devices"] == [{
        "index": 0,
        "name": "GeForce GTX 1070 Ti",
        "compute_capability": "6.1",
        "memory_mib": 4096,
        "uuid": "GPU-f9ba66fc-a7f5-94c5-da19-019ef2f9c665",
    }]


@needs_samples
def test_graphics_device_name_records_unknown_capability() -> None:
    device = _sample("gtx-1660-ti.xml")["devices"][0]
    assert device["name"] == "Graphics Device"
    assert "architecture" not in device
    assert "compute_capability" not in device


@needs_samples
def test_windows_driver_report_without_minor_number() -> None:
    device = _sample("rtx-3080-v12.xml")["devices"][0]
    assert device["index"] == 0
    assert "persistence" not in device
    assert "ecc" not in device


def test_a100_mig_report() -> None:
    facts = _own("a100-sxm4-80gb-mig-2gpu.xml")
    assert facts["driver"] == "550.54.15"
    assert facts["cuda_driver"] == "12.4"
    first, second = facts["devices"]
    assert first["name"] == "NVIDIA A100-SXM4-80GB"
    assert first["compute_capability"] == "8.0"
    assert first["memory_mib"] == 81920
    assert first["mig_mode"] == "Enabled"
    assert first["ecc"] == "Enabled"
    assert first["mig_devices"] == [
        {"gpu_instance_id": 2, "compute_instance_id": 0, "sm_count": 42, "memory_mib": 40192},
        {"gpu_instance_id": 9, "compute_instance_id": 0, "sm_count": 14, "memory_mib": 9728},
    ]
    assert second["index"] == 1
    assert second["mig_mode"] == "Disabled"
    assert "mig_devices" not in second


def test_h100_mig_compute_instances_have_their_own_sm_count() -> None:
    device = _own("h100-80gb-hbm3-mig.xml")["devices"][0]
    assert device["name"] == "NVIDIA H100 80GB HBM3"
    assert device["architecture"] == "Hopper"
    assert device["compute_capability"] == "9.0"
    assert device["memory_mib"] == 81559
    assert device["mig_mode"] == "Enabled"
    mig = device["mig_devices"]
    assert [(m["gpu_instance_id"], m["compute_instance_id"], m["sm_count"]) for m in mig] == [
        (1, 0, 60), (2, 0, 32), (2, 1, 16),
    ]
    assert {m["memory_mib"] for m in mig} == {40448}
    assert all("profile" not in m for m in mig)


def _report(gpu_body: str, header: str = "<driver_version>550.54.15</driver_version>") -> str:
    return (
        '<?xml version="1.0" ?>\n<!DOCTYPE nvidia_smi_log SYSTEM "nvsmi_device_v12.dtd">\n'
        f"<nvidia_smi_log>{header}<gpu id=\"00000000:01:00.0\">{gpu_body}</gpu></nvidia_smi_log>"
    )


def test_no_gpu_is_data_not_an_error() -> None:
    facts = parse_nvidia_smi_xml('<?xml version="1.0" ?><nvidia_smi_log><driver_version>550.54.15</driver_version>'
                                 "<cuda_version>N/A</cuda_version><attached_gpus>0</attached_gpus></nvidia_smi_log>")
    assert facts == {"source": "nvidia-smi", "driver": "550.54.15", "devices": []}


def test_unknown_values_are_left_out() -> None:
    facts = parse_nvidia_smi_xml(_report(
        "<product_name>NVIDIA L4</product_name><fb_memory_usage><total>N/A</total></fb_memory_usage>"
        "<mig_mode><current_mig>N/A</current_mig></mig_mode><persistence_mode>[Insufficient Permissions]"
        "</persistence_mode><gpu_virtualization_mode><virtualization_mode>None</virtualization_mode>"
        "</gpu_virtualization_mode><serial>N/A</serial>"
    ))
    # virtualization_mode "None" is a value (bare metal), not one of the unknowns.
    assert facts["devices"] == [{"index": 0, "name": "NVIDIA L4", "compute_capability": "8.9",
                                 "virtualization": "none"}]


@needs_samples
@pytest.mark.parametrize("name", ["3090-v13.xml", "dual_2070-v13.xml", "gt-1030.xml", "gtx-1660-ti.xml",
                                  "quadro-p2000-v12.xml", "quadro-p400.xml", "rtx-3060-v12.xml",
                                  "rtx-3080-v13.xml"])
def test_virtualization_none_is_bare_metal_not_unknown(name: str) -> None:
    assert {d["virtualization"] for d in _sample(name)["devices"]} == {"none"}


@pytest.mark.parametrize("word", ["N/A", "[N/A]", "None", "Not Supported", "[Not Supported]", "Unknown Error",
                                  "[Unknown Error]", "[Insufficient Permissions]", "[GPU is lost]",
                                  "[GPU requires reset]", "Not Available", " n/a "])
def test_status_words_read_as_a_failed_nvml_call_does(word: str) -> None:
    """Where NVML raises (not supported, no permission, lost GPU) the collector leaves the key out: so does this."""
    facts = parse_nvidia_smi_xml(_report(
        f"<product_name>NVIDIA L4</product_name><fb_memory_usage><total>{word}</total></fb_memory_usage>"
        f"<mig_mode><current_mig>{word}</current_mig></mig_mode><ecc_mode><current_ecc>{word}</current_ecc>"
        f"</ecc_mode><persistence_mode>{word}</persistence_mode><serial>{word}</serial><uuid>{word}</uuid>"
        f"<product_architecture>{word}</product_architecture><minor_number>{word}</minor_number>"
        f"<mig_devices><mig_device><gpu_instance_id>{word}</gpu_instance_id><device_attributes><shared>"
        f"<multiprocessor_count>{word}</multiprocessor_count></shared></device_attributes></mig_device>"
        "</mig_devices>",
        f"<driver_version>{word}</driver_version><cuda_version>{word}</cuda_version>",
    ))
    assert facts == {"source": "nvidia-smi", "devices": [{
        "index": 0, "name": "NVIDIA L4", "compute_capability": "8.9", "mig_devices": [{}],
    }]}


@pytest.mark.parametrize("word", ["N/A", "[N/A]", "Not Supported", "[Not Supported]", "[Unknown Error]"])
def test_virtualization_status_words_are_unknown(word: str) -> None:
    facts = parse_nvidia_smi_xml(_report(
        "<product_name>NVIDIA L4</product_name><gpu_virtualization_mode>"
        f"<virtualization_mode>{word}</virtualization_mode></gpu_virtualization_mode>"
    ))
    assert "virtualization" not in facts["devices"][0]


@pytest.mark.parametrize(("text", "word"), [("None", "none"), ("Pass-Through", "Pass-Through"), ("VGPU", "VGPU"),
                                            ("Host VGPU", "Host-VGPU"), ("Host VSGA", "Host-VSGA")])
def test_virtualization_words_are_nvml_modes(text: str, word: str) -> None:
    facts = parse_nvidia_smi_xml(_report(
        "<product_name>NVIDIA A10G</product_name><gpu_virtualization_mode>"
        f"<virtualization_mode>{text}</virtualization_mode></gpu_virtualization_mode>"
    ))
    assert facts["devices"][0]["virtualization"] == word
    assert word in VIRTUALIZATION_MODES
    assert virtualization_word(word) == word


def test_disabled_is_a_value_as_nvml_reports_it() -> None:
    facts = parse_nvidia_smi_xml(_report(
        "<product_name>NVIDIA A100-SXM4-80GB</product_name><mig_mode><current_mig>Disabled</current_mig>"
        "</mig_mode><ecc_mode><current_ecc>Disabled</current_ecc></ecc_mode>"
        "<persistence_mode>Disabled</persistence_mode>"
    ))
    device = parse_gpu(facts).devices[0]
    assert (device.mig, device.ecc, device.persistence) == (False, False, False)


def test_nvidia_smi_and_nvml_captures_of_one_machine_agree() -> None:
    """The a100 MIG report's GPU 1, and what NVML's collector gives for the same GPU (envlock.probes.nvml)."""
    smi = parse_nvidia_smi_xml((OWN / "a100-sxm4-80gb-mig-2gpu.xml").read_text(encoding="utf-8"))
    nvml = {"source": "nvml", "driver": "550.54.15", "cuda_driver": "12.4", "devices": [
        {"index": 1, "name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0", "memory_mib": 81920,
         "mig_mode": "Disabled", "ecc": "Enabled", "persistence": "Enabled",
         "virtualization": VIRTUALIZATION_MODES[0],  # nvmlDeviceGetVirtualizationMode: NVML_..._MODE_NONE
         "uuid": "GPU-a1000000-0000-4000-8000-000000000002", "serial": "1000000000002"},
    ]}
    smi["devices"] = smi["devices"][1:]
    assert parse_gpu(smi).devices == parse_gpu(nvml).devices
    assert parse_gpu(smi).devices[0].virtualization == "none"


def test_raw_facts_spelling_none_give_the_same_lock_word() -> None:
    raw = {"driver": "550.54.15", "devices": [{"index": 0, "name": "NVIDIA L4", "virtualization": "None"}]}
    assert parse_gpu(raw).devices[0].virtualization == "none"


def test_partial_report_without_driver_still_says_where_the_gpus_came_from() -> None:
    section = parse_gpu(parse_nvidia_smi_xml(_report("<product_name>NVIDIA L4</product_name>", header="")))
    assert (section.count, section.driver, section.source) == (1, "", "nvidia-smi")


def test_mig_device_with_unreadable_ids() -> None:
    facts = parse_nvidia_smi_xml(_report(
        "<product_name>NVIDIA A30</product_name><mig_mode><current_mig>Enabled</current_mig></mig_mode>"
        "<mig_devices><mig_device><index>0</index><gpu_instance_id>N/A</gpu_instance_id>"
        "<compute_instance_id>N/A</compute_instance_id><fb_memory_usage><total>5952 MiB</total>"
        "</fb_memory_usage></mig_device></mig_devices>"
    ))
    assert facts["devices"][0]["mig_devices"] == [{"memory_mib": 5952}]


def test_minor_numbers_give_the_index_when_all_are_distinct() -> None:
    gpu = "<gpu><product_name>NVIDIA A2</product_name><minor_number>{}</minor_number></gpu>"
    text = f"<nvidia_smi_log>{gpu.format(3)}{gpu.format(1)}</nvidia_smi_log>"
    assert [d["index"] for d in parse_nvidia_smi_xml(text)["devices"]] == [3, 1]
    text = f"<nvidia_smi_log>{gpu.format(0)}{gpu.format('N/A')}</nvidia_smi_log>"
    assert [d["index"] for d in parse_nvidia_smi_xml(text)["devices"]] == [0, 1]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "not an XML report"),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.", "not an XML report"),
        ('{"driver": "550"}', "not an XML report"),
        ("<nvidia_smi_log><gpu>", "not well-formed XML"),
        ("<nvidia_smi_log><driver_version>&x;</driver_version></nvidia_smi_log>", "not well-formed XML"),
        ("<html><body/></html>", "root element is <html>"),
        (
            '<?xml version="1.0"?><!DOCTYPE nvidia_smi_log [<!ENTITY a "aaaaaaaaaa">'
            '<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
            "<nvidia_smi_log><driver_version>&c;</driver_version></nvidia_smi_log>",
            "entity declarations are not allowed",
        ),
        (
            '<!DOCTYPE nvidia_smi_log SYSTEM "x.dtd" [<!ELEMENT nvidia_smi_log ANY>]><nvidia_smi_log/>',
            "internal subset",
        ),
        ("<nvidia_smi_log>" + "<a>" * 200 + "</a>" * 200 + "</nvidia_smi_log>", "nested deeper"),
    ],
    ids=["empty", "error-text", "json", "truncated", "undefined-entity", "wrong-root", "entity-bomb",
         "internal-subset", "deep"],
)
def test_hostile_input_is_a_model_error(text: str, fragment: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_nvidia_smi_xml(text, "node7.xml")
    assert caught.value.where == "gpu"
    assert fragment in caught.value.message
    assert "node7.xml" in caught.value.message


def test_oversized_report_is_refused_before_parsing() -> None:
    text = "<nvidia_smi_log>" + " " * MAX_REPORT_BYTES + "</nvidia_smi_log>"
    with pytest.raises(ModelError, match="larger than 16 MiB"):
        parse_nvidia_smi_xml(text)


def test_non_text_input_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="expected text"):
        parse_nvidia_smi_xml(b"<nvidia_smi_log/>")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (_report("<fb_memory_usage><total>lots</total></fb_memory_usage>"), "gpu.devices[0].memory_mib"),
        (_report("<fb_memory_usage><total>16 GiB</total></fb_memory_usage>"), "gpu.devices[0].memory_mib"),
        (_report("", "<driver_version>550; rm -rf /</driver_version>"), "gpu.driver"),
        (_report("", "<driver_version>latest</driver_version>"), "gpu.driver"),
        (_report("", "<cuda_version>12.4\n$(id)</cuda_version>"), "gpu.cuda_driver"),
        (_report("<product_name>A100`reboot`</product_name>"), "gpu.devices[0].name"),
        (_report("<ecc_mode><current_ecc>Maybe</current_ecc></ecc_mode>"), "gpu.devices[0].ecc"),
        (
            _report("<mig_devices><mig_device><device_attributes><shared><multiprocessor_count>-4"
                    "</multiprocessor_count></shared></device_attributes></mig_device></mig_devices>"),
            "gpu.devices[0].mig_devices[0].sm_count",
        ),
    ],
    ids=["memory-word", "memory-unit", "driver-shell", "driver-word", "cuda-newline", "name-backtick", "ecc-word",
         "negative-sm"],
)
def test_malformed_value_names_its_place(text: str, where: str) -> None:
    with pytest.raises(ModelError) as caught:
        parse_nvidia_smi_xml(text)
    assert caught.value.where == where


@pytest.mark.parametrize(
    ("name", "architecture", "expected"),
    [
        ("Tesla P100-PCIE-16GB", "", "6.0"),
        ("Quadro GP100", "", "6.0"),
        ("NVIDIA GeForce GTX 1080 Ti", "", "6.1"),
        ("Tesla P40", "Pascal", "6.1"),
        ("GRID P4-1Q", "Pascal", "6.1"),
        ("GRID P40-24Q", "", "6.1"),
        ("Quadro P4000", "", "6.1"),
        ("Tesla V100-SXM2-16GB", "Volta", "7.0"),
        ("Tesla V100S-PCIE-32GB", "", "7.0"),
        ("Tesla T4", "Turing", "7.5"),
        ("GRID T4-16Q", "", "7.5"),
        ("NVIDIA GeForce RTX 2080 Ti", "", "7.5"),
        ("NVIDIA GeForce GTX 1650", "", "7.5"),
        ("Quadro RTX 6000", "Turing", "7.5"),
        ("NVIDIA A100-SXM4-80GB", "Ampere", "8.0"),
        ("NVIDIA A100 80GB PCIe", "", "8.0"),
        ("NVIDIA A30", "", "8.0"),
        ("NVIDIA A10G", "Ampere", "8.6"),
        ("NVIDIA A10-24Q", "", "8.6"),
        ("NVIDIA A40", "", "8.6"),
        ("NVIDIA A16", "", "8.6"),
        ("NVIDIA A2", "", "8.6"),
        ("NVIDIA RTX A6000", "Ampere", "8.6"),
        ("NVIDIA GeForce RTX 3090 Ti", "", "8.6"),
        ("NVIDIA Jetson AGX Orin", "", "8.7"),
        ("NVIDIA GeForce RTX 4090", "Ada Lovelace", "8.9"),
        ("NVIDIA L4", "", "8.9"),
        ("NVIDIA L40S", "", "8.9"),
        ("NVIDIA RTX 6000 Ada Generation", "", "8.9"),
        ("NVIDIA H100 80GB HBM3", "Hopper", "9.0"),
        ("NVIDIA H200", "", "9.0"),
        ("NVIDIA GH200 480GB", "", "9.0"),
        ("NVIDIA B200", "Blackwell", "10.0"),
        ("NVIDIA GB200", "", "10.0"),
        ("NVIDIA B300 SXM6 AC", "", "10.3"),
        ("NVIDIA GeForce RTX 5090", "Blackwell", "12.0"),
        ("NVIDIA RTX PRO 6000 Blackwell Server Edition", "Blackwell", "12.0"),
        # Architecture decides alone only where it has one capability.
        ("Graphics Device", "Turing", "7.5"),
        ("Graphics Device", "Ada Lovelace", "8.9"),
        ("Graphics Device", "Hopper", "9.0"),
        ("Graphics Device", "Volta", "7.0"),
        ("Graphics Device", "Pascal", ""),
        ("Graphics Device", "Ampere", ""),
        ("Graphics Device", "Blackwell", ""),
        ("Graphics Device", "", ""),
        ("GRID M60-8Q", "Maxwell", "5.2"),
        # Maxwell and Kepler (NVIDIA's legacy CUDA GPU list).
        ("Tesla K80", "Kepler", "3.7"),
        ("Tesla K40m", "", "3.5"),
        ("Tesla K20Xm", "", "3.5"),
        ("Tesla K10.G1.8GB", "", "3.0"),
        ("GRID K2", "Kepler", "3.0"),
        ("GeForce GTX 680", "", "3.0"),
        ("GeForce GTX 780 Ti", "", "3.5"),
        ("GeForce GTX TITAN Black", "", "3.5"),
        ("Quadro K6000", "", "3.5"),
        ("Quadro K2200", "Maxwell", "5.0"),
        ("GeForce GTX 750 Ti", "", "5.0"),
        ("Tesla M10", "", "5.0"),
        ("Tesla M60", "Maxwell", "5.2"),
        ("Tesla M40 24GB", "", "5.2"),
        ("GeForce GTX 980 Ti", "", "5.2"),
        ("GeForce GTX TITAN X", "", "5.2"),
        ("NVIDIA TITAN X (Pascal)", "Pascal", "6.1"),
        ("Quadro M6000 24GB", "", "5.2"),
        ("NVIDIA Jetson Nano", "", "5.3"),
        ("Jetson TX2", "", "6.2"),
        ("Tesla K80", "Maxwell", ""),
        ("Graphics Device", "Kepler", ""),
        ("", "", ""),
        # A name the architecture contradicts is not trusted.
        ("NVIDIA GeForce RTX 3090", "Turing", ""),
    ],
)
def test_compute_capability(name: str, architecture: str, expected: str) -> None:
    assert compute_capability(name, architecture) == expected


def test_kepler_report_from_driver_470() -> None:
    facts = _own("tesla-k80-driver-470-2gpu.xml")
    assert (facts["driver"], facts["cuda_driver"]) == ("470.223.02", "11.4")
    first, second = facts["devices"]
    assert (first["name"], first["compute_capability"], first["memory_mib"]) == ("Tesla K80", "3.7", 11441)
    assert "mig_mode" not in first and first["virtualization"] == "none"
    # The second board reports no MIG, no virtualization section and ECC as [Not Supported]: unknown, left out.
    assert second["index"] == 1 and not {"mig_mode", "virtualization", "ecc"} & set(second)
    section = parse_gpu(facts)
    assert [d.compute_capability for d in section.devices] == ["3.7", "3.7"]


def test_report_without_cuda_version_and_not_found_fields() -> None:
    facts = _own("gtx-970-no-cuda-version.xml")
    assert facts["driver"] == "418.56" and "cuda_driver" not in facts
    (device,) = facts["devices"]
    assert (device["compute_capability"], device["memory_mib"]) == ("5.2", 4041)
    assert "serial" not in device  # "Not Found" is unknown, never a refusal of the report
    assert parse_gpu(facts).driver == "418.56"


@pytest.mark.parametrize("word", ["Not Found", "N/A", "[Not Supported]", "[N/A]"])
def test_old_driver_status_words_are_unknown(word: str) -> None:
    facts = parse_nvidia_smi_xml(_report(f"<serial>{word}</serial><fb_memory_usage><total>{word}</total>"
                                         f"</fb_memory_usage>", f"<cuda_version>{word}</cuda_version>"))
    assert "cuda_driver" not in facts and not {"serial", "memory_mib"} & set(facts["devices"][0])


# --- property-based fuzz: any report envlock is handed is data or one refusal, never a crash --------------------

_FUZZ_BASE = (Path(__file__).resolve().parent.parent / "fixtures" / "nvidia-smi" / "a100-sxm4-80gb-mig-2gpu.xml"
              ).read_text(encoding="utf-8")
_WORDS = st.sampled_from(["N/A", "Not Found", "[Not Supported]", "None", "", "-1", "99999999999999999999", "١٢",
                          "\u202e", "\x00", "&amp;", "<x/>", "<!ENTITY a 'b'>", "]]>", "9.0.0.0.0", "Enabled"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(_FUZZ_BASE)), st.integers(0, 40), _WORDS | st.text(max_size=12)),
                max_size=6))
def test_a_mangled_report_is_data_or_one_refusal(edits: list[tuple[int, int, str]]) -> None:
    text = _FUZZ_BASE
    for at, cut, word in edits:
        text = text[:at] + word + text[at + cut:]
    try:
        facts = parse_nvidia_smi_xml(text, "report.xml")
        parse_gpu(facts)
    except ModelError as exc:
        assert "\n" not in str(exc).strip()
