"""The encoder mode chosen by measurement (f2d.precision.measure_modes): the machinery GPUs use
to pick fp32/TF32/fp16/bf16 and CUDA graphs, exercised here with the modes this CPU has."""
from __future__ import annotations

import pytest
import torch

from f2d.identity import IdentityEncoder
from f2d.precision import ModeRunner, measure_modes, measured_mode, modes_for


@pytest.fixture(scope="module")
def encoder(weight_files):
    return IdentityEncoder.from_files(weight_files["msid", "pt"], weight_files["mapping", "pt"])


def test_choice_is_the_fastest_mode_within_tolerance_of_fp32(encoder, reference):
    choice = measure_modes(encoder, "cpu", modes=("fp32", "bf16"), batches=(1, 2), repeats=2,
                           sample=reference["batch.input"])
    by_mode = {r.mode: r for r in choice.results}
    assert set(by_mode) == {"fp32", "bf16"}
    assert by_mode["fp32"].error == 0.0 and by_mode["fp32"].ok
    assert by_mode["bf16"].error > 1e-6  # bf16 really ran
    assert by_mode["bf16"].ok == (by_mode["bf16"].error <= 1e-4)
    chosen = by_mode[choice.mode]
    assert chosen.ok
    assert all(r.ms_per_face[1] >= chosen.ms_per_face[1] for r in choice.results if r.ok)
    assert "<- chosen" in choice.table() and choice.mode in choice.table()
    # The chosen mode's tokens stay within 1e-4 of the official ones.
    first, last = ModeRunner(encoder, choice.mode, "cpu")(reference["batch.input"])
    err = max((first - reference["batch.first.null_exp"]).abs().max().item(),
              (last - reference["batch.last.null_exp"]).abs().max().item())
    assert err <= 1e-4


def test_a_looser_tolerance_admits_bf16(encoder, reference):
    choice = measure_modes(encoder, "cpu", modes=("fp32", "bf16"), batches=(1,), repeats=1, tolerance=1.0,
                           sample=reference["batch.input"])
    assert all(r.ok for r in choice.results)


def test_runner_leaves_the_encoder_alone_and_cuda_only_modes_are_refused(encoder):
    before = encoder.precision
    ModeRunner(encoder, "bf16", "cpu")
    assert encoder.precision == before
    with pytest.raises(ValueError, match="needs a CUDA device"):
        ModeRunner(encoder, "fp16+graph", "cpu")
    with pytest.raises(ValueError, match="unknown mode"):
        ModeRunner(encoder, "int8", "cpu")
    assert "tf32" not in modes_for("cpu") and "fp16+graph" in modes_for("cuda")


def test_auto_measures_on_accelerators_only_and_never_fails_a_load(encoder, reference, monkeypatch, caplog):
    from f2d import precision

    monkeypatch.setattr(precision, "_MEASURED", {})
    # The CPU's answer is the rule (float32), without timing anything.
    assert precision.choose_mode(encoder, "cpu") == "fp32"
    assert measured_mode("cpu") is None
    # Measured where asked: modes outside 1e-4 of float32 are not even timed (loading waits less).
    with torch.inference_mode():  # as ComfyUI runs its nodes
        assert precision.choose_mode(encoder, "cpu", measure=True) == "fp32"
    choice = measured_mode("cpu")
    by_mode = {r.mode: r for r in choice.results}
    assert choice.mode == "fp32" and by_mode["fp32"].ok
    if "bf16" in by_mode:  # CPUs with bf16 hardware: out of tolerance, so nothing needed timing
        assert not by_mode["bf16"].ok and by_mode["bf16"].ms_per_face == by_mode["fp32"].ms_per_face == {}
        assert [l.split()[-1] for l in choice.table().splitlines()[1:]] == ["chosen", "no"]
    assert precision.precision_for("cpu") == "fp32"
    # A device where measuring breaks (no real kernels on "meta") falls back to the rule, with a warning.
    with caplog.at_level("WARNING"):
        assert precision.choose_mode(encoder, "meta") == "fp16"
    assert "could not measure the identity encoder's precision modes on meta" in caplog.text
    # No mapping (training's frozen MSID): nothing to compare, the rule.
    bare = IdentityEncoder(encoder.msid, None)
    assert precision.choose_mode(bare, "meta") == "fp16"
