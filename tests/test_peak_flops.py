"""Dense peak FLOP/s per card: device-name matching, dtype columns and table sanity (no GPU needed)."""

from __future__ import annotations

import pytest
import torch

from headstart.peak_flops import PEAKS, RULES, compute_dtype_of, describe, match_card, peak_flops


@pytest.mark.parametrize(
    ("device_name", "key"),
    [
        ("NVIDIA H100 80GB HBM3", "h100_sxm"),
        ("NVIDIA H100", "h100_sxm"),
        ("NVIDIA H100 PCIe", "h100_pcie"),
        ("NVIDIA H100 80GB HBM2e", "h100_pcie"),
        ("NVIDIA H100 NVL", "h100_nvl"),
        ("NVIDIA H200", "h200_sxm"),
        ("NVIDIA H200 NVL", "h200_nvl"),
        ("NVIDIA GH200 480GB", "gh200"),
        ("NVIDIA GH200 144G HBM3e", "gh200"),
        ("NVIDIA A100-SXM4-80GB", "a100"),
        ("NVIDIA A100-SXM4-40GB", "a100"),
        ("NVIDIA A100-PCIE-40GB", "a100"),
        ("NVIDIA A100 80GB PCIe", "a100"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA A10", "a10"),
        ("NVIDIA L4", "l4"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA L40", "l40"),
        ("NVIDIA GeForce RTX 4090", "rtx_4090"),
        ("NVIDIA GeForce RTX 3090", "rtx_3090"),
        ("NVIDIA RTX A6000", "rtx_a6000"),
        ("Tesla V100-SXM2-16GB", "v100_sxm"),
        ("Tesla V100-SXM2-32GB", "v100_sxm"),
        ("Tesla V100-PCIE-16GB", "v100_pcie"),
        ("Tesla V100S-PCIE-32GB", "v100s_pcie"),
        ("Tesla T4", "t4"),
        ("NVIDIA B200", "b200"),
        ("NVIDIA GB200", "gb200"),
        ("nvidia h200  nvl", "h200_nvl"),  # case and spacing do not matter
        # Unknown cards and other chips that share a prefix with a known one.
        ("NVIDIA H800", None),
        ("NVIDIA H800 PCIe", None),
        ("NVIDIA H20", None),
        ("NVIDIA A100X", None),
        ("NVIDIA L20", None),
        ("NVIDIA GeForce RTX 4090 D", None),
        ("NVIDIA GeForce RTX 4090 Laptop GPU", None),
        ("NVIDIA GeForce RTX 3090 Ti", None),
        ("NVIDIA RTX 6000 Ada Generation", None),
        ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", None),  # a slice, not the whole card
        ("AMD Instinct MI300X", None),
        ("", None),
    ],
)
def test_match_card(device_name, key):
    assert match_card(device_name) == key


def test_every_rule_points_into_the_table():
    assert {key for _, key in RULES if key is not None} <= set(PEAKS)


def test_h200_peak_is_dense_not_sparse():
    assert peak_flops("NVIDIA H200", torch.bfloat16) == 989.4e12


def test_l4_peak_is_dense_not_sparse():
    assert peak_flops("NVIDIA L4", torch.bfloat16) == 121e12


def test_fp32_peak_follows_tf32():
    assert peak_flops("NVIDIA A100-SXM4-80GB", torch.float32, tf32=True) == 156e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", torch.float32, tf32=False) == 19.5e12


def test_fp32_peak_reads_torch_setting_by_default():
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert peak_flops("NVIDIA A100-SXM4-80GB", torch.float32) == 156e12
        torch.set_float32_matmul_precision("highest")
        assert peak_flops("NVIDIA A100-SXM4-80GB", torch.float32) == 19.5e12
    finally:
        torch.set_float32_matmul_precision(before)


def test_cards_without_tf32_run_plain_fp32():
    assert peak_flops("Tesla V100-SXM2-16GB", torch.float32, tf32=True) == 15.7e12


def test_missing_dtype_or_card_gives_none():
    assert peak_flops("Tesla V100-SXM2-16GB", torch.bfloat16) is None
    assert peak_flops("NVIDIA A100-SXM4-80GB", torch.float64) is None
    assert peak_flops("NVIDIA H800", torch.bfloat16) is None


@pytest.mark.parametrize("key", sorted(PEAKS))
def test_peaks_are_ordered(key):
    # Lower precision is never slower: bf16/fp16 >= tf32 >= fp32 wherever the card has them.
    peaks = PEAKS[key]
    assert set(peaks) <= {"bf16", "fp16", "tf32", "fp32"}
    chain = [peaks[label] for label in ("bf16", "tf32", "fp32") if label in peaks]
    assert chain == sorted(chain, reverse=True)
    if "fp16" in peaks:
        assert peaks["fp16"] >= peaks.get("tf32", peaks["fp32"])


@pytest.mark.parametrize(
    ("precision", "dtype"),
    [
        ("bf16-mixed", torch.bfloat16),
        ("bf16-true", torch.bfloat16),
        ("16-mixed", torch.float16),
        ("16-true", torch.float16),
        ("32-true", torch.float32),
        ("32", torch.float32),
        (32, torch.float32),
        ("64-true", torch.float64),
    ],
)
def test_compute_dtype_of(precision, dtype):
    assert compute_dtype_of(precision) == dtype


def test_compute_dtype_of_unknown_precision():
    with pytest.raises(ValueError, match="transformer-engine"):
        compute_dtype_of("transformer-engine")


def test_describe():
    assert describe("NVIDIA H200", torch.bfloat16) == "NVIDIA H200 (h200_sxm): 989.4 TFLOP/s dense bf16"
    assert describe("NVIDIA A100-PCIE-40GB", torch.float32, tf32=True).endswith("156 TFLOP/s dense tf32")
    assert "MFU will not be logged" in describe("NVIDIA H800", torch.bfloat16)
    assert "MFU will not be logged" in describe("", torch.bfloat16)
    assert "no bf16 peak" in describe("Tesla T4", torch.bfloat16)
