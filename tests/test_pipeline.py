"""Tests for lightcnn.pipeline: steps run in order, rows per step, failures named."""

import pytest
import torch

import lightcnn as lc
from lightcnn import pipeline


@pytest.fixture
def context(tiny_budget, isolated_cache):
    train_loader, test_loader = lc.get_dataloaders(64, tiny_budget, augment=False, seed=0)
    calibration = [x for x, _ in train_loader][:2]
    return pipeline.Context(train_loader, test_loader, calibration=calibration)


def _lenet():
    torch.manual_seed(0)
    return lc.create_model("lenet5").eval()


def test_steps_run_in_order_and_each_is_scored(context):
    model = _lenet()
    steps = [("prune", pipeline.prune_channels(macs_share=0.5, epochs=1)),
             ("sparse", pipeline.prune_weights(0.5, epochs=1)),
             ("share", pipeline.share_weights(bits=4)),
             ("distill", pipeline.distill(1))]
    context.teacher = _lenet()
    records = pipeline.run_pipeline(model, steps, context)
    assert [r.name for r in records] == ["start", "prune", "sparse", "share", "distill"]
    for r in records:
        assert r.accuracy == lc.evaluate(r.model, context.test_loader)["accuracy"]
    assert lc.count_macs(records[1].model) <= 0.5 * lc.count_macs(model)
    assert lc.pruning.sparsity(records[2].model) == pytest.approx(0.5, abs=0.01)
    assert records[3].size_bytes == lc.weight_sharing.weight_sharing_bytes(records[3].model)["total"]
    assert records[4].size_bytes is None          # counts do not carry over to later steps
    assert torch.equal(records[0].model.features[0].weight, model.features[0].weight)   # a copy
    rows = pipeline.pipeline_rows(records, prefix="p: ", batch_sizes=(1,), warmup=1, repeats=2,
                                  threads=1)
    assert [r["name"] for r in rows] == ["p: start", "p: prune", "p: sparse", "p: share", "p: distill"]
    assert rows[0]["baseline"] is None and all(r["baseline"] == "p: start" for r in rows[1:])
    assert rows[3]["size_bytes"] == records[3].size_bytes
    assert rows[2]["nonzero_params"] < rows[1]["nonzero_params"]


def test_a_failing_step_is_named_with_the_model_it_was_given(context):
    traced = torch.fx.symbolic_trace(_lenet())
    with pytest.raises(pipeline.PipelineError,
                       match=r"step 1 \('int8'\) failed on a GraphModule: ValueError: the model "
                             "is already a captured"):
        pipeline.run_pipeline(traced, [("int8", pipeline.quantize_int8())], context)
    with pytest.raises(pipeline.PipelineError, match=r"step 2 \('kd'\).*needs a teacher"):
        pipeline.run_pipeline(_lenet(), [("noop", lambda m, c: m), ("kd", pipeline.distill(1))],
                              context)
    shared = [("share", pipeline.share_weights(bits=2)), ("prune", pipeline.prune_weights(0.5, 1))]
    with pytest.raises(pipeline.PipelineError, match=r"step 2 \('prune'\).*prune before sharing"):
        pipeline.run_pipeline(_lenet(), shared, context)
    with pytest.raises(pipeline.PipelineError, match=r"step 1 \('bad'\) returned int"):
        pipeline.run_pipeline(_lenet(), [("bad", lambda m, c: 3)], context)


def test_bad_pipelines_and_steps_are_refused(context):
    with pytest.raises(ValueError, match="unique"):
        pipeline.run_pipeline(_lenet(), [("a", lambda m, c: m), ("a", lambda m, c: m)], context)
    with pytest.raises(ValueError, match=r"\(name, step\) pairs"):
        pipeline.run_pipeline(_lenet(), [lambda m, c: m], context)
    with pytest.raises(TypeError, match="context must be"):
        pipeline.run_pipeline(_lenet(), [], context={})
    with pytest.raises(ValueError, match="epochs must be an int >= 0"):
        pipeline.prune_channels(epochs=-1)
    with pytest.raises(ValueError, match="needs epochs >= 1"):
        pipeline.prune_weights(0.5, epochs=0)
    with pytest.raises(ValueError, match="sparsity"):
        pipeline.prune_weights(1.5, epochs=1)


def test_slim_and_binarize_steps(context):
    model = lc.create_model("baseline_cnn", widths=(8, 16, 16)).eval()
    records = pipeline.run_pipeline(model, [("slim", pipeline.slim(macs_share=0.6, penalty_epochs=1, epochs=1)),
                                            ("bwn", pipeline.binarize("bwn", epochs=1))], context)
    assert lc.count_macs(records[1].model) <= 0.6 * lc.count_macs(model)
    assert lc.binary.binary_layers(records[2].model)                    # binarized layers
    counts = lc.binary.binary_weight_bytes(records[2].model)
    # the deployed bytes replace each binarized layer's float weights by packed signs
    assert records[2].size_bytes == (lc.model_size_bytes(records[2].model) - counts["fp32_bytes"]
                                     - counts["bias_bytes"] + counts["binary_bytes"])
    assert records[2].size_bytes < lc.model_size_bytes(records[1].model)


def test_slim_and_binarize_refuse_what_they_cannot_handle(context):
    with pytest.raises(pipeline.PipelineError, match=r"step 1 \('slim'\).*no batch norm"):
        pipeline.run_pipeline(_lenet(), [("slim", pipeline.slim())], context)
    shared = [("share", pipeline.share_weights(bits=2)), ("bin", pipeline.binarize("bwn", 0))]
    with pytest.raises(pipeline.PipelineError, match=r"step 2 \('bin'\).*shared"):
        pipeline.run_pipeline(_lenet(), shared, context)
    with pytest.raises(ValueError, match="scheme must be one of"):
        pipeline.binarize("ternary", 1)
    with pytest.raises(ValueError, match="penalty_epochs >= 1"):
        pipeline.slim(penalty_epochs=0)


def test_share_weights_takes_bits_per_layer_as_deep_compression_does(context):
    model = _lenet()
    bits = {name: 3 if isinstance(layer, torch.nn.Conv2d) else 2
            for name, layer in lc.pruning.prunable_layers(model).items()}
    record = pipeline.run_pipeline(model, [("share", pipeline.share_weights(bits))], context)[-1]
    books = lc.weight_sharing.shared_layers(record.model)
    assert {name: b.codebook.numel() for name, b in books.items()} == {n: 2 ** b for n, b in bits.items()}
    reference = lc.weight_sharing.share_weights(model, bits, keep_zeros=True)
    assert record.size_bytes == lc.weight_sharing.weight_sharing_bytes(reference)["total"]
    with pytest.raises(ValueError, match="bits"):
        pipeline.share_weights({"features.0": 9})
    with pytest.raises(TypeError, match="bits"):
        pipeline.share_weights({"features.0": "4"})


def test_prune_channels_rounds_widths_as_prune_to_macs_does(context):
    model = lc.create_model("baseline_cnn", widths=(24, 40, 56)).eval()
    record = pipeline.run_pipeline(model, [("prune", pipeline.prune_channels(0.5, epochs=0, round_to=8))],
                                   context)[-1]
    reference, _ = lc.channel_pruning.prune_to_macs(model, share=0.5, round_to=8)
    widths = [m.out_channels for m in record.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [m.out_channels for m in reference.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 8 == 0 for w in widths)
    with pytest.raises(ValueError, match="round_to"):
        pipeline.prune_channels(round_to=0)
