"""Peak tensor throughput of NVIDIA cards, the denominator of model FLOPs utilisation (MFU).

Every figure is a DENSE (no structured sparsity) peak in FLOP/s from NVIDIA's datasheets or architecture
whitepapers: datasheets print the 2:4-sparsity number first, so those are halved here. ``bf16``/``fp16``/``tf32``
are tensor-core matmul peaks (fp32 accumulate); ``fp32`` is the non-tensor-core FP32 peak.

headstart keeps its own table because Lightning's (``lightning.fabric.utilities.throughput``) does not match the
name "NVIDIA H200", gives sparse figures for the H200 and per-pair figures for the H100 NVL, and uses plain FP32
throughput as the bf16/fp16 peak of consumer cards.
"""

from __future__ import annotations

import re

import torch

# Card key -> dtype label -> dense peak FLOP/s. A card without bf16 (or TF32) tensor cores has no such entry.
PEAKS: dict[str, dict[str, float]] = {
    # Blackwell
    # HGX B200 datasheet (8-GPU totals: 36 PF bf16 and 18 PF tf32 sparse, 600 TF fp32), per GPU, halved.
    "b200": {"bf16": 2.25e15, "fp16": 2.25e15, "tf32": 1.125e15, "fp32": 75e12},
    # GB200 NVL72 datasheet (72-GPU totals: 360 PF bf16 and 180 PF tf32 sparse, 5,760 TF fp32), per GPU, halved.
    "gb200": {"bf16": 2.5e15, "fp16": 2.5e15, "tf32": 1.25e15, "fp32": 80e12},
    # Hopper
    # H100 datasheet, SXM column (1,979 TF bf16 sparse).
    "h100_sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    # H100 datasheet, PCIe column (1,513 TF bf16 sparse).
    "h100_pcie": {"bf16": 756e12, "fp16": 756e12, "tf32": 378e12, "fp32": 51.2e12},
    # H100 NVL, current per-GPU figures (1,671 TF bf16 sparse, 60 TF fp32). The 2023 launch sheet quoted a
    # bridged pair (3,958 TF bf16 sparse for two); Lightning took that pair figure as one GPU's.
    "h100_nvl": {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    # H200 datasheet, SXM column: same compute as the H100 SXM (1,979 TF bf16 sparse), more memory.
    "h200_sxm": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    # H200 datasheet, NVL column (1,671 TF bf16 sparse).
    "h200_nvl": {"bf16": 835e12, "fp16": 835e12, "tf32": 417.5e12, "fp32": 60e12},
    # GH200 Grace Hopper Superchip datasheet: its Hopper GPU matches the H100 SXM (1,979 TF bf16 sparse).
    "gh200": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    # Ada
    # L40S datasheet (733 TF bf16 sparse).
    "l40s": {"bf16": 362.05e12, "fp16": 362.05e12, "tf32": 183e12, "fp32": 91.6e12},
    # L40 datasheet (362.1 TF bf16 sparse); its TF32 rate equals its FP32 rate.
    "l40": {"bf16": 181.05e12, "fp16": 181.05e12, "tf32": 90.5e12, "fp32": 90.5e12},
    # L4 datasheet (242 TF bf16 sparse, 120 TF tf32 sparse).
    "l4": {"bf16": 121e12, "fp16": 121e12, "tf32": 60e12, "fp32": 30.3e12},
    # Ada whitepaper, GeForce RTX 4090: fp32-accumulate tensor rate (330 TF is the fp16-accumulate rate).
    "rtx_4090": {"bf16": 165.2e12, "fp16": 165.2e12, "tf32": 82.6e12, "fp32": 82.6e12},
    # Ampere
    # A100 datasheet: SXM and PCIe columns are the same (624 TF bf16 sparse).
    "a100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
    # A10 datasheet (250 TF bf16 sparse).
    "a10": {"bf16": 125e12, "fp16": 125e12, "tf32": 62.5e12, "fp32": 31.2e12},
    # A10G (AWS G5): no NVIDIA datasheet. 80 SMs at 1.71 GHz at the GA102 GeForce fp32-accumulate tensor rate,
    # i.e. about 70 TF bf16, not the A10's 125 TF (which Lightning uses).
    "a10g": {"bf16": 70e12, "fp16": 70e12, "tf32": 35e12, "fp32": 35e12},
    # RTX A6000 datasheet (309.7 TF tensor sparse; full-rate fp32 accumulate, unlike GeForce).
    "rtx_a6000": {"bf16": 154.8e12, "fp16": 154.8e12, "tf32": 77.4e12, "fp32": 38.7e12},
    # GA102 whitepaper, GeForce RTX 3090: fp32-accumulate tensor rate (142 TF is the fp16-accumulate rate).
    "rtx_3090": {"bf16": 71e12, "fp16": 71e12, "tf32": 35.6e12, "fp32": 35.6e12},
    # Volta and Turing: no bf16, no TF32.
    # V100 datasheet, SXM2 column (SXM3 boards match it).
    "v100_sxm": {"fp16": 125e12, "fp32": 15.7e12},
    # V100 datasheet, PCIe column.
    "v100_pcie": {"fp16": 112e12, "fp32": 14e12},
    # V100S PCIe datasheet.
    "v100s_pcie": {"fp16": 130e12, "fp32": 16.4e12},
    # T4 datasheet (fp16 with fp32 accumulate).
    "t4": {"fp16": 65e12, "fp32": 8.1e12},
}

# (regex, key) tried in order on the lower-cased device name; the first match wins, so a more specific rule
# (a variant of the same chip) must come before the general one. Word boundaries keep "a10" off "a100",
# "b200" off "gb200", "h200" off "gh200" and "l4" off "l40".
RULES: list[tuple[str, str | None]] = [
    # A MIG slice reports its parent's name plus "MIG 1g.5gb"; it has a fraction of the SMs, so no peak.
    (r"\bmig\b", None),
    (r"\bgb200\b", "gb200"),
    (r"\bb200\b", "b200"),
    (r"\bgh200\b", "gh200"),
    (r"\bh200\b.*\bnvl\b", "h200_nvl"),
    (r"\bh200\b", "h200_sxm"),
    (r"\bh100\b.*\bnvl\b", "h100_nvl"),
    # The PCIe card reports either "NVIDIA H100 PCIe" or "NVIDIA H100 80GB HBM2e" (only it has HBM2e).
    (r"\bh100\b.*\b(pcie|hbm2e)\b", "h100_pcie"),
    # "NVIDIA H100 80GB HBM3" and a bare "H100" are the SXM card.
    (r"\bh100\b", "h100_sxm"),
    (r"\ba100\b", "a100"),
    (r"\ba10g\b", "a10g"),
    (r"\ba10\b", "a10"),
    (r"\bl40s\b", "l40s"),
    (r"\bl40\b", "l40"),
    (r"\bl4\b", "l4"),
    # Consumer names are anchored at the end: "RTX 4090 D", "RTX 3090 Ti" and "... Laptop GPU" are other chips.
    (r"\brtx 4090$", "rtx_4090"),
    (r"\brtx 3090$", "rtx_3090"),
    (r"\brtx a6000$", "rtx_a6000"),
    (r"\bv100s\b", "v100s_pcie"),
    (r"\bv100\b.*\bpcie\b", "v100_pcie"),
    (r"\bv100-sxm[23]\b", "v100_sxm"),
    (r"\bt4\b", "t4"),
]

_LABELS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def match_card(device_name: str) -> str | None:
    """The ``PEAKS`` key of a ``torch.cuda.get_device_name()`` string, or None for an unknown card."""
    name = " ".join(device_name.lower().split())
    for pattern, key in RULES:
        if re.search(pattern, name):
            return key
    return None


def _label(key: str, dtype: torch.dtype, tf32: bool | None) -> str | None:
    """The ``PEAKS`` column that matmuls in ``dtype`` run at on card ``key``."""
    label = _LABELS.get(dtype)
    if label == "fp32":
        if tf32 is None:
            tf32 = torch.get_float32_matmul_precision() != "highest"
        # Pre-Ampere cards ignore the TF32 setting and run plain FP32.
        if tf32 and "tf32" in PEAKS[key]:
            label = "tf32"
    return label


def peak_flops(device_name: str, dtype: torch.dtype, tf32: bool | None = None) -> float | None:
    """Dense peak FLOP/s of matmuls in ``dtype`` on the named card; None for an unknown card or a dtype it lacks.

    ``tf32`` says whether float32 matmuls run on TF32 tensor cores; None reads torch's current setting.
    """
    key = match_card(device_name)
    if key is None:
        return None
    return PEAKS[key].get(_label(key, dtype, tf32) or "")


def compute_dtype_of(precision: str | int) -> torch.dtype:
    """The matmul dtype of a Lightning ``precision`` setting ("bf16-mixed", "16-true", "32", ...)."""
    base = str(precision).split("-")[0]
    dtypes = {"bf16": torch.bfloat16, "16": torch.float16, "32": torch.float32, "64": torch.float64}
    if base not in dtypes:
        raise ValueError(f"no compute dtype known for precision {precision!r}")
    return dtypes[base]


def describe(device_name: str, dtype: torch.dtype, tf32: bool | None = None) -> str:
    """One line for the log: the peak MFU is measured against, or why MFU will not be logged."""
    key = match_card(device_name)
    if key is None:
        return f"{device_name or 'unnamed device'}: peak FLOP/s unknown, MFU will not be logged"
    label = _label(key, dtype, tf32)
    peak = PEAKS[key].get(label or "")
    if peak is None:
        return f"{device_name} ({key}): no {label or dtype} peak known, MFU will not be logged"
    return f"{device_name} ({key}): {peak / 1e12:.4g} TFLOP/s dense {label}"
