"""The training step's opt-in speed options (training.speed): bf16 autocast on the CPU where
the hardware multiplies bf16 matrices, and torch.compile of the training forward."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from app.core.cpus import bf16_matmul_support, cpu_flags, read_cpuinfo
from tests.test_training_resume import small_model, small_split
from training import speed
from training.config import ConfigError, TrainingConfig, parse_config
from training.recommender import RecommenderConfig
from training.sequence_trainer import (
    SequenceTrainConfig,
    SequenceTrainResult,
    _resumable,
    train_sequence_model,
)
from training.speed import (
    Bf16Unsupported,
    resolve_cpu_bf16,
    resolve_cuda_bf16,
    speed_tags,
    training_precision,
)

CPU = torch.device("cpu")
# Trimmed /proc/cpuinfo texts: two processors each, as the kernel lists them.
WITH_AVX512_BF16 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_bf16 avx512_vnni
"""
WITH_AMX = """processor\t: 0
flags\t\t: fpu sse avx2 avx512f amx_bf16 amx_tile amx_int8
"""
# AVX-512 without its bf16 extension; a flag that only looks alike on another line.
WITHOUT = """processor\t: 0
model name\t: avx512_bf16 lookalike
flags\t\t: fpu sse sse2 avx avx2 avx512f avx512bw avx512_vnni
vmx flags\t: amx_bf16
"""


def test_cpu_flags_read_the_first_flags_line_only() -> None:
    assert {"avx512_bf16", "avx512f"} <= cpu_flags(WITH_AVX512_BF16)
    assert "sysret_ss_attrs" not in cpu_flags(WITH_AVX512_BF16)  # the bugs line
    assert "amx_bf16" not in cpu_flags(WITHOUT)  # "vmx flags" is not "flags"
    assert cpu_flags("") == frozenset()


def test_bf16_support_needs_avx512_bf16_or_amx_bf16() -> None:
    assert bf16_matmul_support(WITH_AVX512_BF16) == (True, "the CPU has avx512_bf16")
    assert bf16_matmul_support(WITH_AMX)[0]
    supported, why = bf16_matmul_support(WITHOUT)
    assert not supported and "neither avx512_bf16 nor amx_bf16" in why
    supported, why = bf16_matmul_support(None)  # not Linux: unknown counts as unsupported
    assert not supported and "/proc/cpuinfo" in why


def test_auto_follows_the_hardware_off_never_and_on_insists() -> None:
    assert resolve_cpu_bf16("auto", WITH_AVX512_BF16).bf16
    assert resolve_cpu_bf16("auto", WITH_AMX).bf16
    fallback = resolve_cpu_bf16("auto", WITHOUT)
    assert not fallback.bf16 and fallback.name == "fp32"
    assert "training in fp32" in fallback.reason and "avx512_bf16" in fallback.reason
    assert not resolve_cpu_bf16("off", WITH_AVX512_BF16).bf16
    assert resolve_cpu_bf16("on", WITH_AMX).name == "bf16"
    with pytest.raises(Bf16Unsupported, match="bf16 is 'on' but the CPU has neither"):
        resolve_cpu_bf16("on", WITHOUT)
    with pytest.raises(Bf16Unsupported, match="bf16: auto"):  # says what to do instead
        resolve_cpu_bf16("on", None)
    with pytest.raises(ValueError, match="bf16 must be one of"):
        resolve_cpu_bf16("yes", WITH_AMX)


def test_cuda_keeps_its_autocast_and_on_checks_the_gpu() -> None:
    for mode in ("off", "auto"):
        choice = resolve_cuda_bf16(mode, supported=False)
        assert choice.bf16 and choice.device_type == "cuda"
    assert resolve_cuda_bf16("on", supported=True).bf16
    with pytest.raises(Bf16Unsupported, match="GPU"):
        resolve_cuda_bf16("on", supported=False)


def test_the_autocast_of_each_choice() -> None:
    x = torch.randn(4, 8)
    w = torch.randn(8, 8)
    with resolve_cpu_bf16("auto", WITH_AMX).autocast():
        assert (x @ w).dtype == torch.bfloat16
    with resolve_cpu_bf16("auto", WITHOUT).autocast():
        assert (x @ w).dtype == torch.float32


def test_the_config_keys_are_off_by_default_typed_and_checked() -> None:
    defaults = RecommenderConfig()
    assert defaults.bf16 == "off" and defaults.compile is False
    train = RecommenderConfig(bf16="auto", compile=True).train_config()
    assert train.bf16 == "auto" and train.compile is True
    parsed = parse_config({"recommender": {"bf16": True}})  # YAML 1.1 reads a bare on as true
    assert parsed.recommender.bf16 == "on"
    with pytest.raises(ConfigError, match=r"recommender\.bf16 must be one of"):
        parse_config({"recommender": {"bf16": "fast"}})
    with pytest.raises(ConfigError, match="compile must be bool"):
        parse_config({"recommender": {"compile": "yes"}})
    with pytest.raises(ValueError, match="unknown recommender config keys"):
        parse_config({"recommender": {"bf16_mode": "on"}})


def test_a_config_without_the_options_keeps_its_digest_and_checkpoints() -> None:
    import hashlib
    import json

    config = TrainingConfig()
    before = config.to_dict()
    for key in speed.SPEED_DEFAULTS:
        del before["recommender"][key]
    del before["run"]["budget_shares"]  # also newer than the digests to keep, and at its default
    old_digest = hashlib.sha256(json.dumps(before, sort_keys=True, default=str)
                                .encode()).hexdigest()[:12]
    assert config.digest() == old_digest
    assert parse_config({"recommender": {"bf16": "auto"}}).digest() != old_digest
    # a checkpoint written before the fields existed resumes a run with them off
    setting = {"name": "ours", "train": {"learning_rate": 1e-3}, "model": {}}
    off = {**setting, "train": {"learning_rate": 1e-3, "bf16": "off", "compile": False}}
    on = {**setting, "train": {"learning_rate": 1e-3, "bf16": "auto", "compile": False}}
    assert _resumable(off) == _resumable(setting) != _resumable(on)


def _train(config: SequenceTrainConfig, log: list[str] | None = None
           ) -> tuple[SequenceTrainResult, dict[str, torch.Tensor], list[tuple[bool, Any]]]:
    """Train small_model one epoch; returns the result, its initial weights and the dtype of
    the first feed-forward layer's output at every call (training flag, dtype)."""
    model = small_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen: list[tuple[bool, Any]] = []
    model.blocks[0].ff[0].register_forward_hook(  # type: ignore[index]
        lambda module, _inputs, out: seen.append((module.training, out.dtype)))
    result = train_sequence_model(model, small_split(), config, CPU, 0, progress=False,
                                  log=None if log is None else log.append)
    return result, before, seen


def _check_bf16_run(result: SequenceTrainResult, before: dict[str, torch.Tensor],
                    seen: list[tuple[bool, Any]]) -> None:
    """bf16 in the training forward only; fp32 weights that moved; fp32 validation."""
    assert result.precision == "bf16" and all(h["precision"] == "bf16" for h in result.history)
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    assert {dtype for training, dtype in seen if training} == {torch.bfloat16}
    assert {dtype for training, dtype in seen if not training} == {torch.float32}
    state = result.model.state_dict()
    assert all(value.dtype == torch.float32 for value in state.values())
    assert not torch.equal(state["item_embedding.weight"], before["item_embedding.weight"])
    assert not torch.equal(state["blocks.0.ff.0.weight"], before["blocks.0.ff.0.weight"])


def test_bf16_trains_where_the_cpu_has_it_and_auto_falls_back_where_not() -> None:
    """On this machine's own CPU: "on" trains in bf16 where the flags say it can; where
    they do not, "auto" trains in fp32 and says why, and "on" refuses."""
    supported, why = bf16_matmul_support(read_cpuinfo())
    config = SequenceTrainConfig(batch_size=8, max_epochs=1, patience=1)
    if supported:
        config.bf16 = "on"
        said: list[str] = []
        result, before, seen = _train(config, said)
        _check_bf16_run(result, before, seen)
        assert said[0] == f"ours: training step: bf16 autocast: {why}"
    else:
        config.bf16 = "auto"
        result, _, seen = _train(config)
        assert result.precision == "fp32" and "training in fp32" in result.speed_notes[0]
        assert {dtype for _, dtype in seen} == {torch.float32}
        config.bf16 = "on"
        with pytest.raises(Bf16Unsupported):
            _train(config)


def test_auto_follows_the_flags_it_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wiring on any CPU: flags that say bf16 give a bf16 step, flags that do not an
    fp32 one (bf16 arithmetic itself runs everywhere, emulated where the CPU lacks it)."""
    config = SequenceTrainConfig(batch_size=8, max_epochs=1, patience=1, bf16="auto")
    monkeypatch.setattr(speed, "read_cpuinfo", lambda: WITH_AMX)
    _check_bf16_run(*_train(config))
    monkeypatch.setattr(speed, "read_cpuinfo", lambda: WITHOUT)
    result, _, seen = _train(config)
    assert result.precision == "fp32" and [h["precision"] for h in result.history] == ["fp32"]
    assert {dtype for _, dtype in seen} == {torch.float32}
    assert "neither avx512_bf16 nor amx_bf16" in result.speed_notes[0]
    assert training_precision("off", CPU).name == "fp32"


def test_off_by_default_trains_as_before() -> None:
    result, _, seen = _train(SequenceTrainConfig(batch_size=8, max_epochs=1, patience=1))
    assert result.precision == "fp32" and not result.compiled
    assert [(h["precision"], h["compiled"]) for h in result.history] == [("fp32", False)]
    assert {dtype for _, dtype in seen} == {torch.float32}


def test_compile_wraps_the_training_forward_only(monkeypatch: pytest.MonkeyPatch) -> None:
    # The "eager" backend runs torch.compile's graph capture without inductor's minutes of
    # code generation on a small CPU.
    monkeypatch.setattr(speed, "COMPILE_BACKEND", "eager")
    config = SequenceTrainConfig(batch_size=8, max_epochs=2, patience=5)
    plain, _, _ = _train(config)
    config.compile = True
    said: list[str] = []
    compiled, _, _ = _train(config, said)
    assert compiled.compiled and [h["compiled"] for h in compiled.history] == [True, True]
    assert "torch.compile" in said[0]
    assert type(compiled.model) is type(plain.model)  # what is evaluated and served: eager
    assert [h["train_loss"] for h in compiled.history] == pytest.approx(
        [h["train_loss"] for h in plain.history], abs=1e-4)


def test_a_failing_compile_falls_back_to_eager_and_says_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        def run(*_a: Any) -> torch.Tensor:
            raise RuntimeError("no C++ compiler found\nmore detail")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    said: list[str] = []
    result, _, _ = _train(SequenceTrainConfig(batch_size=8, max_epochs=2, patience=5,
                                              compile=True), said)
    assert not result.compiled and [h["compiled"] for h in result.history] == [False, False]
    assert any("torch.compile failed (RuntimeError: no C++ compiler found)" in line
               for line in said)
    assert result.speed_notes[-1].endswith("RuntimeError: no C++ compiler found")
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in result.history)
    with pytest.warns(RuntimeWarning, match=r"torch\.compile failed"):  # no log: a warning
        _train(SequenceTrainConfig(batch_size=8, max_epochs=1, patience=1, compile=True))


def test_the_options_in_effect_become_mlflow_tags() -> None:
    step = {"ours": {"precision": "bf16", "compiled": False, "notes": []},
            "sasrec_id": {"precision": "fp32", "compiled": True, "notes": []}}
    assert speed_tags(step) == {
        "step_ours_precision": "bf16", "step_ours_compiled": "false",
        "step_sasrec_id_precision": "fp32", "step_sasrec_id_compiled": "true"}
    assert speed_tags({}) == {}
