"""Tests for lightcnn.int8: real int8 through torchao's pt2e flow, checked against fp32."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightcnn as lc
from lightcnn import int8

pytest.importorskip("torchao")


def _model() -> nn.Module:
    # LeNet-5 with weights scaled so the logits span a few units (random init gives ~0.1)
    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def _images(n: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def quantized():
    model = _model()
    calibration = [_images(32, seed) for seed in range(4)]
    return model, int8.quantize_int8(model, calibration)


def test_int8_logits_stay_close_to_fp32(quantized):
    model, q = quantized
    x = _images(128, seed=10)  # not seen during calibration
    with torch.no_grad():
        ref, out = model(x), q(x)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.999
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.95


def test_int8_graph_holds_int8_weights_and_is_four_times_smaller(quantized):
    model, q = quantized
    weights = [t for t in q.state_dict().values() if t.dtype == torch.int8]
    float_weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert sum(t.numel() for t in weights) == sum(w.numel() for w in float_weights)
    assert 3.5 < int8.saved_size_bytes(model) / int8.saved_size_bytes(q) < 4.0


def test_batch_size_stays_dynamic_and_eval_is_allowed(quantized):
    _, q = quantized
    q.eval()  # lc.measure_latency calls .eval(); exported graphs refuse it unless allowed
    with torch.no_grad():
        assert q(_images(1)).shape == (1, 10)
        assert q(_images(7)).shape == (7, 10)


# x86 int8 kernels agree with exact integer arithmetic only where the CPU has an 8-bit dot
# product (VNNI): with AVX2 alone, oneDNN and ONNX Runtime add pairs of u8 x s8 products in
# int16 and saturate (lightcnn.runtime.INT8_DOT_FLAGS; oneDNN, "Nuances of int8 computations")
needs_int8_dot = pytest.mark.skipif(
    lc.runtime.int8_dot_product() is None,
    reason="no 8-bit dot-product instructions (AVX2 alone): int8 kernels saturate int16 pair sums")


@needs_int8_dot
def test_compiled_int8_equals_the_reference_graph(quantized):
    _, q = quantized
    compiled = int8.compile_cpu(q)
    assert int8.saved_size_bytes(compiled) == int8.saved_size_bytes(q)  # the wrapped graph's tensors
    x = _images(16, seed=3)
    with torch.no_grad():
        ref = q(x)
        out = compiled(x)
    # oneDNN's integer kernels round like the reference quantize/dequantize ops, up to an
    # occasional one-step difference in a requantized activation
    assert (out - ref).abs().max() <= 0.02 * ref.abs().max()


def test_calibration_accepts_labelled_batches():
    model = _model()
    loader = [(_images(16, s), torch.zeros(16, dtype=torch.long)) for s in range(2)]
    q = int8.quantize_int8(model, loader)
    with torch.no_grad():
        assert q(_images(4)).shape == (4, 10)


def test_qat_trains_and_converts_to_int8():
    model = _model()
    x, y = _images(64, seed=5), torch.arange(64) % 10
    prepared = int8.prepare_int8_qat(model, x[:8])
    history = lc.fit(prepared, [(x, y)] * 5, epochs=2, lr=0.01, progress=False)  # calls .train()
    assert history.train_loss[-1] < history.train_loss[0]
    prepared.eval()
    with torch.no_grad():
        ref = prepared(x)  # fake quantization, eval mode: what the int8 model should compute
    converted = int8.convert_int8_qat(prepared)
    assert any(t.dtype == torch.int8 for t in converted.state_dict().values())
    with torch.no_grad():
        out = converted(x)
    # close, not identical: convert re-derives the qparams from the observers and rounds
    # the weights once more (measured here: max difference about a tenth of the largest
    # logit); chapter 05 measures what matters, the test accuracy of both
    assert F.cosine_similarity(out.flatten(), ref.flatten(), dim=0) > 0.99
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9


def test_bad_arguments_are_reported():
    model = _model()
    with pytest.raises(ValueError, match="calibration yielded no batch"):
        int8.quantize_int8(model, [])
    with pytest.raises(ValueError, match="N >= 2"):
        int8.quantize_int8(model, [_images(1)])
    with pytest.raises(TypeError, match="calibration must yield tensors"):
        int8.quantize_int8(model, [[1, 2]])
    with pytest.raises(TypeError, match="example must be a torch.Tensor"):
        int8.export_model(model, [1, 2])
    with pytest.raises(TypeError, match="prepare_int8_qat"):
        int8.convert_int8_qat(model)
    with pytest.raises(TypeError):
        int8.quantize_int8("not a model", [_images(2)])


def test_compile_cpu_compiles_more_models_of_one_class_than_dynamos_default_limit():
    # Dynamo caches 8 graphs per forward function by default and runs the rest eagerly
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    x = torch.randn(2, 3)
    for i in range(10):
        torch.manual_seed(i)
        compiled = int8.compile_cpu(torch.nn.Sequential(torch.nn.Linear(3, 3)))
        with torch.inference_mode():
            compiled(x)
    assert counters["stats"]["unique_graphs"] - before == 10


def test_compile_cpu_compiles_the_examples_in_the_state_the_timings_run_in():
    """A graph compiled by compile_cpu's examples is the one lc.compare_latency runs:
    timing it compiles nothing more (a plain call under lc.setup's deterministic mode
    would have compiled a graph that the timing's deployment state does not match)."""
    from torch._dynamo.utils import counters

    torch.use_deterministic_algorithms(True)      # as lc.setup leaves it
    try:
        x = torch.randn(2, 1, 4, 4)
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        # the thread count of the timings (the tests run on one thread, the timings on 2)
        compiled = int8.compile_cpu(model, examples=[x, x[:1]], threads=2)
        before = counters["stats"]["unique_graphs"]
        for batch in (x, x[:1]):
            lc.compare_latency({"compiled": compiled}, len(batch), input_shape=(1, 4, 4),
                               warmup=1, repeats=2, example=batch)
        assert counters["stats"]["unique_graphs"] == before
        assert torch.are_deterministic_algorithms_enabled()     # the caller's state is back
    finally:
        torch.use_deterministic_algorithms(False)
    with pytest.raises(TypeError, match="examples"):
        int8.compile_cpu(nn.Linear(3, 3), examples=[[1.0, 2.0]])
    with pytest.raises(ValueError, match="threads"):
        int8.compile_cpu(nn.Linear(3, 3), threads=0)


def test_compile_cpu_without_freezing_computes_the_same_int8_outputs():
    # chapter 05 times an int8 graph compiled with and without Inductor's freezing; both
    # must compute what the reference graph computes, and the setting is the call's
    import torch._inductor.config as inductor_config

    model, x = _model(), _images(4)
    q = int8.quantize_int8(model, [_images(8)])
    with torch.no_grad():
        ref = q(x)
    try:
        unfrozen = int8.compile_cpu(copy.deepcopy(q), examples=[x], threads=1, freezing=False)
        assert inductor_config.freezing is False
        frozen = int8.compile_cpu(q, examples=[x], threads=1)
        assert inductor_config.freezing is True
        with torch.inference_mode():
            for compiled in (unfrozen, frozen):
                out = compiled(x)
                assert (out.argmax(1) == ref.argmax(1)).all()
                assert torch.allclose(out, ref, atol=0.05 * ref.abs().max().item())
    finally:
        inductor_config.freezing = True
    with pytest.raises(TypeError, match="freezing"):
        int8.compile_cpu(nn.Linear(3, 3), freezing=1)
