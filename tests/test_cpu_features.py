"""CPU features from /proc/cpuinfo text: parsing, the one-word summary, native BF16."""

import pytest

from export.core import cpu_features as cf

_SPR_FLAGS = ("fpu sse sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni avx512_bf16 "
              "avx512_fp16 amx_tile amx_bf16 amx_int8")
SAPPHIRE_RAPIDS = (f"processor\t: 0\nvendor_id\t: GenuineIntel\n"
                   f"model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: {_SPR_FLAGS}\n\n"
                   f"processor\t: 1\nflags\t\t: {_SPR_FLAGS}\n")
CASCADE_LAKE = ("model name\t: Intel(R) Xeon(R) Gold 6248\n"
                "flags\t\t: sse avx avx2 fma avx512f avx512bw avx512_vnni\n")
COOPER_LAKE = CASCADE_LAKE.replace("avx512_vnni", "avx512_vnni avx512_bf16")
SKYLAKE_X = "flags\t\t: sse avx avx2 fma avx512f avx512bw\n"
ALDER_LAKE = "flags\t\t: sse avx avx2 fma avx_vnni\n"
HASWELL = "flags\t\t: sse avx avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"


def test_features_of_an_amx_xeon():
    f = cf.cpu_features(SAPPHIRE_RAPIDS)
    assert f["avx2"] and f["avx512f"] and f["avx512_vnni"] and f["avx_vnni"]
    assert f["avx512_bf16"] and f["amx_bf16"] and f["amx_int8"] and f["avx512_fp16"]
    assert f["neon"] is False
    assert cf.summary(f) == "AMX"
    assert cf.native_bf16(f) is True


@pytest.mark.parametrize("text,word,bf16", [
    (COOPER_LAKE, "AVX-512+BF16", True),
    (CASCADE_LAKE, "AVX-512+VNNI", False),
    (SKYLAKE_X, "AVX-512", False),
    (ALDER_LAKE, "AVX2+VNNI", False),
    (HASWELL, "AVX2", False),
    (GRAVITON3, "NEON+SVE", True),
])
def test_summary_and_native_bf16(text, word, bf16):
    f = cf.cpu_features(text)
    assert cf.summary(f) == word
    assert cf.native_bf16(f) is bf16


def test_flags_come_from_the_first_processor_only_and_whole_words():
    f = cf.cpu_features("flags\t: avx2 avx512_bf16x\nflags\t: amx_bf16\n")
    assert f["avx2"] and not f["avx512_bf16"] and not f["amx_bf16"]


def test_unknown_when_there_is_nothing_to_read(monkeypatch):
    f = cf.cpu_features("model name\t: something without flags\n")
    assert set(f.values()) == {None}
    assert cf.summary(f) == "unknown" and cf.native_bf16(f) is None
    monkeypatch.setattr(cf, "CPUINFO", "/nonexistent/cpuinfo")
    assert set(cf.cpu_features().values()) == {None}
    assert cf.describe()["features"] is None


def test_describe_is_json_ready():
    import json

    d = cf.describe(SAPPHIRE_RAPIDS)
    assert d["isa"] == "AMX" and d["native_bf16"] is True and d["features"]["amx_int8"] is True
    json.dumps(d)


def test_this_machine_answers_from_its_own_flags():
    try:
        with open(cf.CPUINFO) as fh:
            text = fh.read()
    except OSError as exc:
        pytest.skip(f"no {cf.CPUINFO} here ({exc})")
    flags = cf.parse_flags(text)
    if not flags:
        pytest.skip(f"{cf.CPUINFO} here has no flags line")
    assert cf.native_bf16() is bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    assert cf.summary() == cf.summary(cf.cpu_features(text)) != "unknown"


@pytest.mark.parametrize("text,isa", [
    (SAPPHIRE_RAPIDS, "amx"), (COOPER_LAKE, "avx512-bf16"), (CASCADE_LAKE, "avx512-vnni"),
    (ALDER_LAKE, "avx-vnni"), (SKYLAKE_X, "avx512"), (HASWELL, "avx2"), (GRAVITON3, "neon"),
])
def test_isa_class_names_the_kernels_int8_and_bf16_get(text, isa, monkeypatch):
    monkeypatch.delenv(cf.ISA_CLASS_ENV, raising=False)
    assert cf.isa_class(cf.cpu_features(text)) == isa
    monkeypatch.setenv(cf.ISA_CLASS_ENV, "avx2")  # the override plays another CPU
    assert cf.isa_class(cf.cpu_features(text)) == "avx2"


def test_cpu_model_is_read_from_cpuinfo():
    assert cf.cpu_model(SAPPHIRE_RAPIDS) == "Intel(R) Xeon(R) Platinum 8480+"
