"""trainer.precision=auto follows the hardware; an explicit choice wins; the doctor reports it."""

from __future__ import annotations

import warnings

import pytest

from uniflow import hardware
from uniflow.hardware import cpu_flags, cpu_has_native_bf16, resolve_precision

AVX2_ONLY = "flags\t\t: fpu sse sse2 ssse3 sse4_1 sse4_2 avx avx2 fma f16c\n"
AVX512_BF16 = "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n"
SAPPHIRE_RAPIDS = "flags\t\t: avx2 avx512f amx_tile amx_int8 amx_bf16\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"), [(AVX2_ONLY, False), (AVX512_BF16, True), (SAPPHIRE_RAPIDS, True), ("", False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, cpuinfo, native):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Some CPU\n" + cpuinfo)
    assert cpu_has_native_bf16(cpu_flags(path)) is native


def test_missing_cpuinfo_means_no_known_flags(tmp_path):
    assert cpu_flags(tmp_path / "absent") == frozenset()
    assert not cpu_has_native_bf16(frozenset())


def test_auto_is_float32_on_a_cpu_without_native_bf16(monkeypatch):
    # Detection mocked through the real probe: an AVX2-only flag set.
    monkeypatch.setattr(hardware, "cpu_flags", lambda *a: frozenset(AVX2_ONLY.split(":")[1].split()))
    choice = resolve_precision("auto", "cpu")
    assert choice.precision == "32-true"
    assert choice.requested == "auto"
    assert "no native bf16" in choice.reason


def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda *a: frozenset(AVX512_BF16.split(":")[1].split()))
    assert resolve_precision("auto", "cpu").precision == "bf16-mixed"


@pytest.mark.parametrize(("cuda_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_cuda_follows_the_device(cuda_bf16, expected):
    # The CPU's flags do not matter on a GPU.
    choice = resolve_precision("auto", "gpu", cuda_bf16=cuda_bf16, cpu_bf16=not cuda_bf16)
    assert choice.precision == expected
    assert "CUDA" in choice.reason


@pytest.mark.parametrize("explicit", ["32-true", "bf16-mixed", "16-mixed"])
def test_an_explicit_precision_wins(explicit):
    for cpu_bf16 in (True, False):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            choice = resolve_precision(explicit, "cpu", cpu_bf16=cpu_bf16)
        assert (choice.precision, choice.requested) == (explicit, explicit)


def test_explicit_bf16_on_an_emulating_cpu_warns_with_the_slowdown_and_the_override():
    with pytest.warns(UserWarning, match=r"18x slower.*trainer\.precision=32-true"):
        resolve_precision("bf16-mixed", "cpu", cpu_bf16=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning where bf16 is native, nor for fp32
        resolve_precision("bf16-mixed", "cpu", cpu_bf16=True)
        resolve_precision("32-true", "cpu", cpu_bf16=False)


def test_auto_is_the_default_and_a_valid_choice():
    from uniflow.config import ConfigError, load_config
    from uniflow.stages import RunConfig

    assert RunConfig().trainer.precision == "auto"
    with pytest.raises(ConfigError, match=r"trainer\.precision"):
        load_config("experiments/tokenizer/embedded.yaml", ["trainer.precision=fast"])


def test_doctor_reports_precision_devices_and_components(capsys, tmp_path):
    from uniflow.__main__ import main

    assert main(["doctor", "--output-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    for label in ("torch", "cpu flags", "precision=auto", "ffcv", "FID Inception", "LPIPS VGG16", "disk"):
        assert label in out, label
    line = next(row for row in out.splitlines() if row.startswith("precision=auto"))
    assert line.split()[1] == resolve_precision("auto").precision


@pytest.mark.parametrize(
    ("environ", "capped"),
    [
        ({}, False),
        ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, True),
        ({"DNNL_MAX_CPU_ISA": "avx512_core"}, True),
        ({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, False),
        ({"ONEDNN_MAX_CPU_ISA": "ALL"}, False),
        ({"ATEN_CPU_CAPABILITY": "avx2"}, True),
        ({"ATEN_CPU_CAPABILITY": "avx512"}, False),
    ],
)
def test_kernel_caps_in_the_environment_rule_out_native_bf16(environ, capped):
    # How an AVX512-BF16 CPU is made to behave like an AVX2 one (and how we measure that case).
    flags = frozenset(AVX512_BF16.split(":")[1].split())
    assert cpu_has_native_bf16(flags, environ) is not capped
    assert (hardware.isa_cap(environ) is not None) is capped
