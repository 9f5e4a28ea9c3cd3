"""Bad input, across the whole public API (issue 32).

Every public callable of every module of lightcnn (the names in its ``__all__``: functions,
and classes through their constructors) is first called with a valid example, built from
the tables below, then again with ONE argument replaced by nonsense: None (where the
annotation does not allow it), a string, -1, NaN, an empty list, an empty dict. Each of
those calls must raise ``TypeError`` or ``ValueError`` (or lightcnn's ``DatasetError`` /
``ZooError``) with a message that names the argument (STYLE.md rule 7), not crash inside
the function nor go on silently.

A nonsense value is skipped where the annotation admits it: None for ``X | None``, a
string for ``str`` (except parameters that name one of a fixed set of choices, such as
``method`` or ``scheme``), a list for ``Sequence``/``list``/``Iterable``, a dict for
``Mapping``/``dict``, and the few values that ``ALLOWED`` lists (a negative axis, a
negative delta). Every public callable needs an entry in ``EXAMPLES`` (the arguments its
valid call needs beyond those of ``PARAMS``) or in ``EXEMPT`` (with the reason), so a new
function cannot skip the sweep.

Functions of modules that other people own and that still fail are listed in
``KNOWN_FAILURES`` and run as ``xfail(strict=False)``, one entry per function, until their
owners fix them.

``python tests/test_api_sweep.py`` runs the sweep without pytest and prints the counts per
module (calls, raising cleanly, raising a TypeError/ValueError that does not name the
argument, crashing inside, accepted silently); ``-v`` lists every failing call.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import inspect
import os
import pkgutil
import random
import re
import shutil
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightcnn as lc

# ---------------------------------------------------------------------------------------
# The nonsense, and what may pass
# ---------------------------------------------------------------------------------------

NONSENSE = {"None": lambda: None, "str": lambda: "nonsense", "-1": lambda: -1,
            "nan": lambda: float("nan"), "list": lambda: [], "dict": lambda: {}}

# Parameters that name one of a fixed set of choices: "nonsense" must be rejected even
# though the annotation says str.
CHOICES = {"method", "scheme", "fmt", "init", "observer", "scope", "config", "activation",
           "block", "version", "optimizer", "schedule", "backend", "estimator", "precision",
           "outcome", "argument", "cost", "quality"}

# Nonsense that is not nonsense for one parameter: "module.function.parameter" -> labels.
ALLOWED = {
    "architectures.compound_scaling.phi": {"-1"},          # phi < 0 scales down from B0
    "quantization.qparams.x_min": {"-1"},                  # a negative range end
    "plotting.plot_histograms.low": {"-1"},                # a linear axis's left end
    "quantization.qparams.x_max": {"-1"},
    "quantization.quantize.zero_point": {"-1"},            # a signed zero point
    "quantization.fake_quantize.zero_point": {"-1"},
    "quantization.dequantize.zero_point": {"-1"},
    "quantization.quantize.axis": {"-1"},                  # Python's last axis
    "quantization.fake_quantize.axis": {"-1"},
    "quantization.dequantize.axis": {"-1"},
    "quantization.Observer.per_channel_axis": {"-1"},
    "quantization.MinMaxObserver.per_channel_axis": {"-1"},
    "quantization.PercentileObserver.per_channel_axis": {"-1"},
    "quantization.MSEObserver.per_channel_axis": {"-1"},
    "quantization.FakeQuantize.per_channel_axis": {"-1"},
    "quantization.quantization_mse.axis": {"-1"},
    "integer.fixed_point_multiply.n": {"-1"},              # a shift left: M in [1, 2)
    "integer.accumulate.w_zero_point": {"-1"},             # int8 zero points are signed
    "integer.accumulate_terms.w_zero_point": {"-1"},
    "integer.integer_forward.w_zero_point": {"-1"},
    "distillation.raise_class_bias.delta": {"-1"},         # lowering a class's bias
    "search.Trial.score": {"-1"},                          # any finite score
    "plotting.plot_curves.reference": {"-1"},              # a reference line below zero
    "profile.Table.notes": {"list"},                       # no footnotes
    "deploy.deployments.compile_batches": {"list"},        # compile at the first call
    "profile.Latency.times_ms": {"list"},                  # no samples kept
    "channel_pruning.ChannelGroup.producers": {"list"},    # plain dataclass lists
    "channel_pruning.ChannelGroup.prunable": {"list"},
    "channel_pruning.ChannelGroup.modules": {"list"},
    "channel_pruning.ChannelGroup.channels": {"list"},
    # () or []: a row of counts only, no latency (chapters 06 and 09 time those elsewhere)
    "profile.profile_model.batch_sizes": {"list"},
    "profile.profile_models.batch_sizes": {"list"},
    "profile.simulated_row.batch_sizes": {"list"},
    # free text: the caller's name for ``names`` in FeatureHooks' messages
    "distillation.FeatureHooks.argument": {"str"},
}

# Callables that the sweep does not call, with the reason.
EXEMPT = {
    "launch.install_commands": "its source is the first cell of every notebook (render_cell "
                               "copies it): a check there changes every chapter's cell, so "
                               "it keeps its own checks of repo_url and branch",
    "launch.ensure_lightcnn": "its source is the first cell of every notebook (see "
                              "install_commands)",
    "channel_pruning.Importance": "a type alias (Callable[[nn.Module], Tensor | None]), "
                                  "not a function",
    "zoo.get_trained": "trains and caches a model (minutes)",
    "zoo.get_pruned": "fine-tunes a trained model (minutes)",
    "zoo.get_decomposed": "decomposes and fine-tunes a trained model (minutes); its bad "
                          "settings are tested in tests/test_zoo.py",
    "zoo.get_quantized": "quantizes and fine-tunes a trained model (minutes); its bad "
                         "settings are tested in tests/test_zoo.py",
    "zoo.build": "trains every zoo entry (hours)",
    "zoo.check": "retrains a zoo entry (minutes)",
    "runtime.fresh_process_latency": "starts a fresh Python process per measurement",
    "runtime.drift_experiment": "starts several processes and trains (minutes)",
    "distributed.init_distributed": "joins the process group torchrun sets up",
}

# Callables swept with nonsense only: their valid call is too slow to make every run (the
# example is still there, for a reader and for a run with LIGHTCNN_SWEEP_ALL=1).
NO_VALID_CALL = {
    "int8.convert_int8_qat": "converting a QAT graph takes 10-20 CPU seconds (torchao's "
                             "to_eval re-traces its batch-norm patterns)",
    "binary_openvino.benchmark_binary_conv": "builds and compiles OpenVINO models for every "
                                             "configuration (seconds)",
    "binary_openvino.benchmark_bnn": "compiles the float network with Inductor and both "
                                     "networks with OpenVINO at each batch size (a minute)",
}

# Failures in modules whose owners have not fixed them yet: "module.function" -> what the
# sweep saw when this table was written (how many nonsense calls crashed, raised without
# naming the argument (unclear) or passed (silent), and the arguments concerned; details:
# python tests/test_api_sweep.py -v MODULE). They run as xfail(strict=False); delete an
# entry once its function passes.
KNOWN_FAILURES: dict[str, str] = {}

# Modules whose functions must pass (never listed in KNOWN_FAILURES).
OWNED = {"data", "budget", "models", "blocks", "architectures", "design", "search",
         "fusion", "quantization", "sparse", "lowrank", "weight_sharing", "compression",
         "leaderboard", "pipeline", "plotting", "results", "claims", "launch",
         "equalization", "integer"}

# lightcnn's own errors that a function may raise for a bad argument, besides
# TypeError/ValueError (and their subclasses such as CompressedFileError).
DOCUMENTED_ERRORS = (TypeError, ValueError, lc.DatasetError, lc.weights.ZooError)

CALL_TIMEOUT_S = 20   # a call that takes longer is counted as a crash (see _call)

# ---------------------------------------------------------------------------------------
# Example objects: tiny and cheap; factories, so no call sees another's mutations
# ---------------------------------------------------------------------------------------

_TMP = Path(tempfile.mkdtemp(prefix="lightcnn-sweep-"))
URL = "https://github.com/example/lightcnn"


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return lc.BaselineCNN(widths=(4, 8, 8)).eval()


def tiny_net() -> nn.Module:
    # one conv: torch.export and the ONNX exporter take seconds per graph node group
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 10)).eval()


def tiny_dataset(n: int = 8) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 1, 28, 28, generator=g), torch.arange(n) % 10)


def tiny_loader() -> DataLoader:
    return DataLoader(tiny_dataset(), batch_size=4)


def tiny_budget() -> lc.Budget:
    return lc.Budget("ci", train_size=20, test_size=20, epochs=1, finetune_epochs=1,
                     proxy_epochs=1, survey_epochs=1, overfit_train_size=20, overfit_epochs=1,
                     search_train_size=20, search_final_epochs=1, val_size=20, calib_size=4,
                     latency_warmup=1, latency_repeats=2)


def randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def signs(*shape: int) -> torch.Tensor:
    return randn(*shape).sign()


def ov_binary_conv():
    return lc.binary_openvino.binary_conv_model(lc.binary.BinaryConv2d(8, 8, 3, scheme="bnn"),
                                                (1, 8, 6, 6))


def binary_cnn(widths: tuple[int, int, int] = (4, 8, 8)) -> nn.Module:
    torch.manual_seed(0)
    return lc.binary.binarize(lc.BaselineCNN(widths=widths).eval(), "bnn")


def shared_cnn() -> nn.Module:
    return lc.weight_sharing.share_weights(tiny_cnn(), bits=2, iters=2, keep_zeros=True)


def latency() -> "lc.Latency":
    return lc.Latency(median_ms=1.0, q1_ms=0.9, q3_ms=1.1, batch_size=1, threads=1, repeats=3,
                      times_ms=(0.9, 1.0, 1.1))


def history() -> "lc.History":
    return lc.History(train_loss=[1.0, 0.5], test_loss=[1.1, 0.6], test_accuracy=[0.5, 0.7],
                      lr=[0.1, 0.05], seconds=[1.0, 1.0])


ARCHITECTURE = ((1, 8, 3, 1), (1, 8, 3, 3))


def contract_row(name: str, baseline: str | None, chapter: str = "01_sweep",
                 size: int = 1000) -> dict:
    return dict(name=name, baseline=baseline, accuracy=0.9, params=10, nonzero_params=10,
                macs=100, size_bytes=size, latency_ms_b1=1.0, latency_ms_b256=10.0,
                budget="full", chapter=chapter, technique="reference" if baseline is None
                else "baseline", cpu="test CPU")


def contract_rows() -> list[dict]:
    return [contract_row("base", None), contract_row("small", "base", size=500)]


def result_rows() -> list[dict]:
    return [{k: v for k, v in row.items() if k in lc.results.REQUIRED_KEYS}
            for row in contract_rows()]


@functools.cache
def notebook() -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("The model reaches 91.3% accuracy."),
                nbformat.v4.new_code_cell("print(0.913)", outputs=[nbformat.v4.new_output(
                    "stream", name="stdout", text="91.3\n")])]
    path = _TMP / "chapter.ipynb"
    nbformat.write(nb, path)
    return path


def notebook_copy() -> Path:
    path = _TMP / "copy.ipynb"
    shutil.copy(notebook(), path)
    return path


def claim() -> "lc.claims.Claim":
    return lc.claims.Claim(cell=0, text="91.3%", value="91.3", unit="%",
                           sentence="The model reaches 91.3% accuracy.", kind="measured")


@functools.cache
def onnx_file() -> Path:
    return lc.deploy.export_onnx(tiny_net(), _TMP / "tiny.onnx", randn(1, 1, 28, 28))


@functools.cache
def qat_prepared() -> nn.Module:
    # torch.export takes seconds: prepare once, hand out copies
    return lc.int8.prepare_int8_qat(tiny_net(), randn(2, 1, 28, 28))


@functools.cache
def compressed_file() -> Path:
    path = _TMP / "tiny.lcz"
    lc.compression.save_compressed(shared_cnn(), path)
    return path


@functools.cache
def sparse_file() -> Path:
    path = _TMP / "tiny.lcs"
    lc.sparse.save_sparse(tiny_cnn(), path)
    return path


def shipped_zoo() -> Path:
    return Path(lc.__file__).resolve().parents[1] / "zoo"


def channel_plan(model: nn.Module) -> dict:
    return lc.channel_pruning.plan_channel_pruning(model, 0.25)


def symbols() -> np.ndarray:
    return np.array([0, 1, 1, 2, 0, 0, 3, 0], dtype=np.int64)


def huffman_args() -> dict:
    payload, nbits, lengths = lc.compression.huffman_encode(symbols())
    return dict(payload=payload, nbits=nbits, lengths=lengths, count=len(symbols()))


def integer_layer() -> dict:
    """A conv layer with uint8 input codes and int8 weight codes (lightcnn.integer)."""
    g = torch.Generator().manual_seed(0)
    return dict(layer=nn.Conv2d(2, 4, 3), q_x=torch.randint(0, 256, (1, 2, 5, 5), generator=g),
                x_zero_point=3, q_w=torch.randint(-128, 128, (4, 2, 3, 3), generator=g),
                w_zero_point=0)


def sparse_weight() -> torch.Tensor:
    w = randn(4, 4)
    w[w.abs() < 0.7] = 0
    return w


# Arguments by parameter name, used wherever a function has no entry of its own for it.
PARAMS = {
    "model": tiny_cnn, "student": tiny_cnn, "teacher": tiny_cnn,
    "x": lambda: randn(2, 1, 28, 28),
    "loader": tiny_loader, "train_loader": tiny_loader, "test_loader": tiny_loader,
    "dataset": tiny_dataset,
    "epochs": lambda: 1, "bits": lambda: 4, "sparsity": lambda: 0.5,
    "weight": lambda: randn(8, 4, 3, 3),
    "budget": tiny_budget, "progress": lambda: False,
    "warmup": lambda: 1, "repeats": lambda: 2, "threads": lambda: 1,
    "batch_sizes": lambda: (1,), "batch_size": lambda: 2,
}

# optional arguments given anyway, to keep every call fast
FAST = ("warmup", "repeats", "threads", "batch_sizes", "progress")

R = lambda **kw: (lambda: kw)   # noqa: E731  (an entry whose arguments are plain values)

# "module.function" -> a factory of the arguments its valid call needs beyond PARAMS
# (a dict; "*args" gives positional arguments). {} when PARAMS and the defaults suffice.
EXAMPLES = {
    # architectures: tiny stage tables instead of ImageNet's
    "architectures.compound_scaling": R(phi=1.0),
    "architectures.MobileNetV1": R(stages=[(8, 1, 1)], num_classes=10),
    "architectures.MobileNetV2": R(stages=[(1, 8, 1, 1)], num_classes=10),
    "architectures.MobileNetV3": R(stages=[(3, 16, 8, False, "RE", 1)], last_channels=16,
                                   num_classes=10),
    "architectures.ShuffleNetV1": R(num_classes=10, width_mult=0.25),
    "architectures.ShuffleNetV2": R(num_classes=10, width_mult=0.5),
    "architectures.SqueezeNet": R(num_classes=10, width_mult=0.25),
    "architectures.EfficientNet": R(stages=[(1, 3, 8, 1, 1)], num_classes=10),
    "architectures.GhostNet": R(stages=[(3, 8, 8, False, 1)], num_classes=10),
    **{f"architectures.{name}": R(width_mult=0.25) for name in (
        "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
        "shufflenet_v1", "shufflenet_v2", "squeezenet1_0", "squeezenet1_1",
        "efficientnet_b0", "ghostnet")},
    # binary
    "binary.Scheme": R(name="plain", stochastic=False, weight_scale=False,
                       binary_activations=False, activation_scale=False),
    "binary.sign_ste": {}, "binary.approx_sign": {}, "binary.stochastic_sign_ste": {},
    "binary.BinaryConv2d": R(**{"*args": (4, 4, 3)}),
    "binary.BinaryLinear": R(**{"*args": (8, 4)}),
    "binary.activation_scale_map": lambda: dict(x=randn(1, 2, 6, 6), kernel_size=(3, 3),
                                                stride=(1, 1), padding=(1, 1)),
    "binary.binarize": R(scheme="bnn"),
    "binary.binary_layers": lambda: dict(model=binary_cnn()),
    "binary.clip_latent_weights": lambda: dict(model=binary_cnn()),
    "binary.register_clipping": lambda: (lambda m: dict(
        model=m, optimizer=torch.optim.SGD(m.parameters(), lr=0.1)))(binary_cnn()),
    "binary.packed_weight_bytes": R(out_features=4, fan_in=9),
    "binary.binary_weight_bytes": lambda: dict(model=binary_cnn()),
    "binary.count_binary_macs": lambda: dict(model=binary_cnn()),
    "binary.xnor_speedup": R(channels=64, weight_size=9),
    "binary.binary_cnn": {},
    # binary_kernels
    "binary_kernels.available_backends": {}, "binary_kernels.gemm_instructions": {},
    "binary_kernels.popcount_peak": {},
    "binary_kernels.measure_xnor_gemm": R(m=4, k=64, n=4, warmup=1, repeats=1),
    "binary_kernels.pack_signs": lambda: dict(x=signs(4, 64)),
    "binary_kernels.unpack_signs": lambda: dict(
        words=lc.binary_kernels.pack_signs(signs(4, 64)), n=64),
    "binary_kernels.popcount": lambda: dict(words=lc.binary_kernels.pack_signs(signs(4, 64))),
    "binary_kernels.xnor_gemm": lambda: dict(
        a=lc.binary_kernels.pack_signs(signs(4, 64)),
        b=lc.binary_kernels.pack_signs(signs(3, 64)), n_bits=64),
    "binary_kernels.integer_thresholds": lambda: dict(
        layer=lc.binary.BinaryConv2d(4, 4, 3, scheme="bnn")),
    "binary_kernels.PackedBinaryConv2d": lambda: dict(
        layer=lc.binary.BinaryConv2d(4, 4, 3, scheme="bnn")),
    "binary_kernels.PackedBinaryLinear": lambda: dict(
        layer=lc.binary.BinaryLinear(64, 4, scheme="bnn")),
    "binary_kernels.PackedMaxPool2d": lambda: dict(pool=nn.MaxPool2d(2)),
    "binary_kernels.PackSigns": R(backend="torch"),
    "binary_kernels.parallel_threshold": R(macs=0),
    "binary_kernels.pack_model": lambda: dict(model=binary_cnn()),
    # binary_openvino (OpenVINO's BinaryConvolution)
    "binary_openvino.binary_conv_model": lambda: dict(
        layer=lc.binary.BinaryConv2d(8, 8, 3, scheme="bnn"), input_shape=(1, 8, 6, 6)),
    "binary_openvino.compile_model": lambda: dict(model=ov_binary_conv()),
    "binary_openvino.runtime_layer_types": lambda: dict(
        compiled=lc.binary_openvino.compile_model(ov_binary_conv())),
    "binary_openvino.run_binary_conv": lambda: dict(
        layer=lc.binary.BinaryConv2d(8, 8, 3, scheme="bnn"), x=signs(1, 8, 6, 6)),
    "binary_openvino.export_bnn": lambda: dict(model=binary_cnn(widths=(8, 8, 8))),
    "binary_openvino.compile_bnn": lambda: dict(model=binary_cnn(widths=(8, 8, 8))),
    "binary_openvino.openvino_bnn": lambda: dict(model=binary_cnn(widths=(8, 8, 8)),
                                                 batch_sizes=(1,), threads=1),
    "binary_openvino.benchmark_binary_conv": R(channels=(8,), sizes=(4,), threads=(1,),
                                               warmup=1, repeats=1),
    "binary_openvino.benchmark_bnn": lambda: dict(
        fp32=tiny_cnn(), bnn=binary_cnn(widths=(8, 8, 8)), example=randn(2, 1, 28, 28),
        batch_sizes=(1, 2), warmup=1, repeats=1),
    # blocks
    "blocks.make_divisible": R(value=12.0),
    "blocks.channel_shuffle": lambda: dict(x=randn(1, 4, 3, 3), groups=2),
    "blocks.ConvBNAct": R(in_channels=4, out_channels=4),
    "blocks.DepthwiseSeparable": R(in_channels=4, out_channels=4),
    "blocks.SqueezeExcite": R(channels=4, squeeze_channels=2),
    "blocks.InvertedResidual": R(in_channels=4, out_channels=4, expanded_channels=8),
    "blocks.Fire": R(in_channels=4, squeeze_channels=2, expand1x1_channels=4,
                     expand3x3_channels=4),
    "blocks.ShuffleUnitV1": R(in_channels=12, out_channels=12),
    "blocks.ShuffleUnitV2": R(in_channels=4, out_channels=4),
    "blocks.GhostModule": R(in_channels=4, out_channels=4),
    "blocks.GhostBottleneck": R(in_channels=4, mid_channels=8, out_channels=4),
    # budget
    "budget.Budget": lambda: tiny_budget().as_dict(),
    "budget.get_budget": R(name="ci"),
    # channel_pruning
    "channel_pruning.l1_importance": lambda: dict(module=nn.Conv2d(2, 4, 3)),
    "channel_pruning.l2_importance": lambda: dict(module=nn.Conv2d(2, 4, 3)),
    "channel_pruning.bn_scale_importance": lambda: dict(module=nn.BatchNorm2d(4)),
    "channel_pruning.RandomImportance": {},
    "channel_pruning.ChannelGroup": R(layer="features.0.0", producers=["features.0.0"],
                                      size=4, prunable=[True], modules=[[("features.0.1", 0)]],
                                      channels=[0, 1, 2, 3]),
    "channel_pruning.channel_groups": {},
    "channel_pruning.plan_channel_pruning": R(ratio=0.5),
    "channel_pruning.ratio_for_macs": {},
    "channel_pruning.prune_to_macs": {},
    "channel_pruning.remove_channels": lambda: (lambda m: dict(model=m, plan=channel_plan(m)))(
        tiny_cnn()),
    "channel_pruning.zero_channels": lambda: (lambda m: dict(model=m, plan=channel_plan(m)))(
        tiny_cnn()),
    "channel_pruning.resize_to_state_dict": lambda: dict(
        state_dict=lc.channel_pruning.remove_channels(
            tiny_cnn(), channel_plan(tiny_cnn())).state_dict()),
    "channel_pruning.bn_l1_penalty": {},
    "channel_pruning.slimming_loss": R(strength=1e-4),
    # claims
    "claims.Claim": lambda: vars(claim()),
    "claims.Report": R(notebook="chapter.ipynb", results=None),
    "claims.prose_numbers": lambda: dict(notebook_path=notebook()),
    "claims.output_numbers": lambda: dict(notebook_path=notebook()),
    "claims.printed_numbers": lambda: dict(notebook_path=notebook()),
    "claims.code_numbers": lambda: dict(notebook_path=notebook()),
    "claims.match_number": lambda: dict(claim=claim(), outputs={"91.3"}),
    "claims.check_chapter": lambda: dict(notebook_path=notebook()),
    "claims.format_report": lambda: dict(report=lc.claims.check_chapter(notebook())),
    "claims.main": lambda: dict(argv=[str(notebook())]),
    # compression
    "compression.huffman_code_lengths": R(counts={0: 5, 1: 3, 2: 1}),
    "compression.canonical_codes": R(lengths={0: 1, 1: 2, 2: 2}),
    "compression.huffman_encode": lambda: dict(symbols=symbols()),
    "compression.huffman_decode": huffman_args,
    "compression.entropy_bits": lambda: dict(symbols=symbols()),
    "compression.relative_indices": lambda: dict(positions=np.array([0, 3, 40]), bits=4),
    "compression.absolute_indices": lambda: dict(
        gaps=lc.compression.relative_indices(np.array([0, 3, 40]), 4), bits=4),
    "compression.LayerStreams": lambda: dict(
        name="w", shape=(2, 2), codebook=np.zeros(2, np.float32),
        indices=np.zeros(4, np.uint8), gaps=np.zeros(4, np.uint8), gap_bits=5),
    "compression.layer_streams": lambda: dict(model=shared_cnn()),
    "compression.save_compressed": lambda: dict(model=shared_cnn(),
                                                path_or_file=_TMP / "saved.lcz"),
    "compression.load_compressed": lambda: dict(path_or_file=compressed_file()),
    "compression.compressed_size_bytes": lambda: dict(model=shared_cnn()),
    # data (LIGHTCNN_DATA points at the verified files)
    "data.find_data_dir": R(download=False),
    "data.verify_file": lambda: dict(
        path=lc.data._file_in(lc.find_data_dir(download=False), "t10k-labels-idx1-ubyte")),
    "data.load_fashion_mnist": R(train=False),
    "data.balanced_subset": lambda: dict(labels=torch.arange(100) % 10, size=20),
    "data.FashionMNIST": R(train=False, size=20),
    "data.get_dataloaders": {},
    "data.get_dataloaders_with_val": R(val_size=10),
    "data.validation_split": lambda: dict(labels=torch.arange(100) % 10, val_size=20),
    "data.normalize": lambda: dict(images=torch.zeros(2, 28, 28, dtype=torch.uint8)),
    "data.main": R(argv=[]),
    # deploy
    "deploy.export_onnx": lambda: dict(model=tiny_net(), path=_TMP / "export.onnx",
                                       example=randn(1, 1, 28, 28), dynamic_batch=False),
    "deploy.OnnxModel": lambda: dict(path=onnx_file()),
    "deploy.OpenVinoModel": lambda: dict(path=onnx_file()),
    "deploy.list_executed_layers": lambda: dict(model=lc.deploy.OpenVinoModel(onnx_file())),
    "deploy.quantize_onnx_int8": lambda: dict(fp32_path=onnx_file(), path=_TMP / "int8.onnx",
                                              calibration=randn(8, 1, 28, 28), batch_size=4),
    "deploy.max_abs_difference": lambda: dict(a=tiny_net(), b=tiny_net(), x=randn(2, 1, 28, 28)),
    "deploy.deployments": lambda: dict(model=tiny_net(), name="tiny", folder=_TMP / "deploy",
                                       example=randn(2, 1, 28, 28), engines=("eager",)),
    "deploy.Deployment": lambda: dict(model=tiny_net(), engine="eager", precision="fp32",
                                      size_bytes=1),
    "deploy.engine_accuracy": lambda: dict(model=tiny_net(), images=randn(4, 1, 28, 28),
                                           labels=torch.arange(4), batch_size=2),
    "deploy.engine_outputs": lambda: dict(model=tiny_net(), images=randn(4, 1, 28, 28), batch_size=2),
    # design
    "design.DesignCNN": R(widths=(4, 8, 8)),
    "design.design_cnn": R(widths=(4, 8, 8)),
    "design.fit_widths_to_macs": R(target_macs=100_000, depths=(1, 1, 1), max_base=16),
    # distillation
    "distillation.soft_targets": lambda: dict(logits=randn(4, 10)),
    "distillation.distillation_loss": lambda: dict(
        student_logits=randn(4, 10), teacher_logits=randn(4, 10), labels=torch.arange(4)),
    "distillation.DistillationLoss": {},
    "distillation.attention_map": lambda: dict(features=randn(2, 4, 7, 7)),
    "distillation.attention_transfer_loss": lambda: dict(
        student_features=randn(2, 4, 7, 7), teacher_features=randn(2, 8, 7, 7)),
    "distillation.hint_loss": lambda: dict(
        student_features=randn(2, 4, 7, 7), teacher_features=randn(2, 8, 7, 7),
        regressor=nn.Conv2d(4, 8, 1)),
    "distillation.FeatureHooks": R(names=["features.0"]),
    "distillation.Distiller": {},
    "distillation.distill": {},
    "distillation.split_targets": lambda: dict(y=torch.arange(4)),
    "distillation.cache_teacher_logits": {},
    "distillation.TeacherLogitsDataset": lambda: dict(logits=randn(8, 10)),
    "distillation.with_teacher_logits": {},
    "distillation.without_class": R(class_index=0),
    "distillation.balancing_bias": lambda: dict(logits=randn(8, 10), class_index=0),
    "distillation.raise_class_bias": R(class_index=0, delta=0.5),
    # distributed (one process: world size 1)
    **{f"distributed.{name}": {} for name in (
        "is_distributed", "get_rank", "get_world_size", "is_main_process", "unwrap",
        "distributed_loader", "shard_dataset", "broadcast_buffers")},
    "distributed.broadcast_tensors": lambda: dict(tensors={"a": torch.zeros(2)}),
    "distributed.all_reduce_sum": R(values=[1.0, 2.0]),
    # equalization
    "equalization.channel_ranges": lambda: dict(layer=nn.Conv2d(2, 4, 3)),
    "equalization.equalization_scales": lambda: dict(r1=torch.ones(4), r2=torch.full((4,), 2.0)),
    "equalization.equalize_pair": lambda: dict(first=nn.Conv2d(2, 4, 3),
                                               second=nn.Conv2d(4, 3, 1)),
    "equalization.find_pairs": {},
    "equalization.replace_relu6": {},
    "equalization.cross_layer_equalize": {},
    "equalization.quantize_weight": {},
    "equalization.output_error": lambda: dict(layer=nn.Conv2d(1, 4, 3),
                                              quantized_weight=randn(4, 1, 3, 3)),
    "equalization.correct_bias": lambda: dict(calibration=[randn(2, 1, 28, 28)]),
    # fusion
    "fusion.FusionReport": R(max_diff=0.0, batch_norms_before=1, batch_norms_after=0,
                             ms_before={1: 1.0}, ms_after={1: 0.5}),
    "fusion.fuse_conv_bn": {},
    "fusion.measure_fusion": {},
    # int8
    "int8.export_model": lambda: dict(model=tiny_net(), example=randn(2, 1, 28, 28)),
    "int8.quantize_int8": lambda: dict(model=tiny_net(), calibration=[randn(2, 1, 28, 28)]),
    "int8.prepare_int8_qat": lambda: dict(model=tiny_net(), example=randn(2, 1, 28, 28)),
    "int8.convert_int8_qat": lambda: dict(prepared=copy.deepcopy(qat_prepared())),
    "int8.compile_cpu": lambda: dict(model=tiny_net()),
    "int8.saved_size_bytes": lambda: dict(model=tiny_net()),
    # integer
    "integer.quantize_multiplier": R(multiplier=0.25),
    "integer.fixed_point_multiply": lambda: dict(values=torch.arange(-4, 4), m0=2**30, n=1),
    "integer.quantize_bias": lambda: dict(bias=randn(4), x_scale=0.1, w_scale=0.01),
    "integer.accumulate": lambda: integer_layer(),
    "integer.accumulate_terms": lambda: integer_layer(),
    "integer.integer_forward": lambda: dict(integer_layer(), x_scale=0.05, w_scale=0.01,
                                            y_scale=0.1, y_zero_point=128),
    # launch
    "launch.install_commands": lambda: dict(importable=True, cwd=_TMP, repo_url=URL),
    "launch.ensure_lightcnn": R(repo_url=URL),
    "launch.render_cell": R(repo_url=URL),
    "launch.first_cell": R(repo_url=URL),
    "launch.notebook_paths": {},
    "launch.read_repository": {},
    "launch.write_first_cell": lambda: dict(path=notebook_copy(), repo_url=URL),
    "launch.main": R(argv=["--check"]),
    # leaderboard
    "leaderboard.contract_problems": lambda: dict(chapter="01_sweep", rows=contract_rows()),
    "leaderboard.check_contract": lambda: dict(results={"01_sweep": contract_rows()}),
    "leaderboard.leaderboard_rows": lambda: dict(results={"01_sweep": contract_rows()}),
    "leaderboard.best_by_technique": lambda: dict(
        rows=lc.leaderboard.leaderboard_rows({"01_sweep": contract_rows()})),
    # lowrank
    "lowrank.break_even_rank": R(m=8, n=8),
    "lowrank.build_decomposed": lambda: dict(model=tiny_cnn(), method="tucker2",
                                             ranks={"features.2.0": (2, 2)}),
    "lowrank.error_curve": lambda: dict(weight=randn(8, 4, 3, 3), fractions=[0.5, 1.0]),
    "lowrank.round_rank": R(rank=19, high=64, round_to=8),
    "lowrank.cp_conv": lambda: dict(conv=nn.Conv2d(4, 4, 3), rank=2, n_iter_max=5),
    "lowrank.decompose_layer": lambda: dict(layer=nn.Linear(8, 8), method="svd", rank=2),
    "lowrank.decompose_model": R(method="svd", ranks={"classifier.2": 2}),
    "lowrank.decomposed_macs": lambda: dict(layer=nn.Linear(8, 8), method="svd", rank=2),
    "lowrank.energy_rank": lambda: dict(singular_values=torch.tensor([3.0, 2.0, 1.0]),
                                        energy=0.9),
    "lowrank.evbmf_rank": lambda: dict(matrix=randn(8, 6)),
    "lowrank.hosvd": lambda: dict(weight=randn(8, 4, 3, 3), ranks=(2, 2)),
    "lowrank.max_rank": lambda: dict(layer=nn.Linear(8, 8), method="svd"),
    "lowrank.rank_for_macs": lambda: dict(layer=nn.Linear(8, 8), method="svd",
                                          macs_fraction=0.5),
    "lowrank.spatial_separable_conv": lambda: dict(conv=nn.Conv2d(4, 4, 3), rank=2),
    "lowrank.svd_linear": lambda: dict(layer=nn.Linear(8, 8), rank=2),
    "lowrank.truncated_svd": lambda: dict(matrix=randn(8, 6), rank=2),
    "lowrank.tucker2_conv": lambda: dict(conv=nn.Conv2d(4, 4, 3), ranks=(2, 2)),
    "lowrank.tucker2_ranks_vbmf": lambda: dict(conv=nn.Conv2d(8, 8, 3)),
    # models
    "models.BaselineCNN": R(widths=(4, 8, 8)),
    "models.LeNet5": {},
    "models.register_model": lambda: dict(fn=_sweep_model_factory()),
    "models.create_model": R(name="lenet5"),
    # pipeline
    "pipeline.Context": {},
    "pipeline.StepRecord": lambda: dict(name="start", model=tiny_cnn(), accuracy=0.5,
                                        seconds=1.0),
    "pipeline.run_pipeline": lambda: dict(
        steps=[("prune", lc.pipeline.prune_weights(0.5, 1))],
        context=lc.pipeline.Context(tiny_loader(), tiny_loader())),
    "pipeline.pipeline_rows": lambda: dict(
        records=[lc.pipeline.StepRecord("start", tiny_cnn(), 0.5, 1.0)],
        batch_sizes=(1,), warmup=1, repeats=2, threads=1),
    "pipeline.prune_weights": {},
    "pipeline.prune_channels": {},
    "pipeline.slim": {},
    "pipeline.share_weights": R(bits=2),
    "pipeline.distill": {},
    "pipeline.decompose": R(method="svd", macs_ratio=2.0),
    "pipeline.binarize": R(scheme="bnn"),
    # plotting
    "plotting.plot_images": lambda: dict(images=randn(4, 1, 28, 28), labels=list("abcd")),
    "plotting.plot_history": lambda: dict(history=history()),
    "plotting.plot_confusion_matrix": lambda: dict(matrix=torch.eye(3, dtype=torch.long),
                                                   classes=["a", "b", "c"]),
    "plotting.plot_filters": lambda: dict(weight=randn(4, 1, 3, 3)),
    "plotting.plot_feature_maps": lambda: dict(maps=randn(4, 7, 7)),
    "plotting.plot_tradeoff": lambda: dict(rows=[
        dict(name="a", macs=100, accuracy=0.5), dict(name="b", macs=200, accuracy=0.6)]),
    "plotting.plot_curves": R(x=[1, 2], series={"a": [0.1, 0.2]}, xlabel="x", ylabel="y"),
    "plotting.plot_histograms": R(values={"a": [0.1, 0.2]}, xlabel="x"),
    # profile
    **{f"profile.{name}": {} for name in (
        "count_params", "count_nonzero_params", "count_macs", "count_macs_by_module",
        "count_macs_thop", "model_size_bytes")},
    "profile.Latency": lambda: vars(latency()),
    "profile.Ratio": R(value=1.0, q1=0.9, q3=1.1, median=1.0, paired=True),
    "profile.speedup": lambda: dict(baseline=latency(), model=latency()),
    "profile.speedups": lambda: dict(latency={"a": latency(), "b": latency()}, baseline="a"),
    "profile.measure_latency": {},
    "profile.time_interleaved": lambda: dict(fns={"a": lambda: None}),
    "profile.compare_latency": lambda: dict(models={"a": tiny_cnn()}),
    "profile.profile_model": R(name="a"),
    "profile.profile_models": lambda: dict(models={"a": tiny_cnn()}),
    "profile.simulated_row": R(name="a", accuracy=0.9, size_bytes=1000),
    "profile.Table": lambda: dict(rows=[{"a": 1}], columns=[("a", "A", str)]),
    "profile.compare": lambda: dict(rows=[lc.profile_model(
        tiny_cnn(), "a", batch_sizes=(1,), warmup=1, repeats=2, threads=1)]),
    "profile.pareto_front": R(rows=[dict(macs=1, accuracy=0.5), dict(macs=2, accuracy=0.6)]),
    "profile.time_by_op_category": {},
    # pruning
    **{f"pruning.{name}": {} for name in (
        "prunable_layers", "remove_masks", "masks_of", "sparsity", "layer_sparsity",
        "random_reinit")},
    "pruning.magnitude_prune": {},
    "pruning.layerwise_masks": {},
    "pruning.global_masks": {},
    "pruning.apply_masks": lambda: (lambda m: dict(
        model=m, masks=lc.pruning.global_masks(m, 0.5)))(tiny_cnn()),
    "pruning.load_masked_state_dict": lambda: dict(state_dict=tiny_cnn().state_dict()),
    "pruning.sparsity_for_ratio": R(ratio=2.0),
    "pruning.sensitivity_scan": R(evaluate=lambda m: 0.5, sparsities=[0.5]),
    "pruning.agp_sparsity": R(step=5, final_sparsity=0.8, total_steps=10),
    "pruning.AGPPruner": R(final_sparsity=0.8, total_steps=10),
    "pruning.iterative_prune": R(sparsities=[0.5], finetune=lambda m: None),
    "pruning.rewind": lambda: (lambda m: dict(model=m, initial_state=m.state_dict()))(
        tiny_cnn()),
    # quantization
    "quantization.qrange": R(bits=8),
    "quantization.qparams": R(x_min=-1.0, x_max=1.0, bits=8, symmetric=False),
    "quantization.quantize": R(scale=0.1, zero_point=0, bits=8),
    "quantization.dequantize": lambda: dict(q=torch.arange(4), scale=0.1, zero_point=0),
    "quantization.fake_quantize": R(scale=0.1, zero_point=0, bits=8),
    "quantization.Observer": {}, "quantization.MinMaxObserver": {},
    "quantization.PercentileObserver": {}, "quantization.MSEObserver": {},
    "quantization.FakeQuantize": {},
    "quantization.QuantWrapper": lambda: dict(
        module=nn.Conv2d(2, 4, 3), weight_fake_quant=lc.quantization.FakeQuantize(),
        input_fake_quant=lc.quantization.FakeQuantize()),
    "quantization.prepare_qat": {},
    "quantization.ptq_simulate": lambda: dict(calib_batches=[randn(2, 1, 28, 28)]),
    "quantization.pack_bits": lambda: dict(q=torch.arange(10) % 16),
    "quantization.unpack_bits": lambda: dict(
        blob=lc.quantization.pack_bits(torch.arange(10) % 16, 4), numel=10),
    "quantization.kmeans_codebook": R(bits=2, iters=2),
    "quantization.kmeans_quantize": R(bits=2, iters=2),
    "quantization.finetune_centroids_grad": lambda: dict(
        weight_grad=randn(16), indices=torch.arange(16) % 4, num_centroids=4),
    "quantization.product_quantize": lambda: dict(weight=randn(8, 8), subvector_dim=2,
                                                  bits=2, iters=2),
    "quantization.product_dequantize": lambda: dict(zip(
        ("codebooks", "codes"), lc.quantization.product_quantize(randn(8, 8), 2, 2, 2)),
        shape=(8, 8)),
    "quantization.uniform_bytes": R(numel=100, bits=8),
    "quantization.uniform_model_bytes": R(bits=8),
    "quantization.kmeans_bytes": R(numel=100, bits=4),
    "quantization.product_bytes": R(rows=8, cols=8, subvector_dim=2, bits=4),
    "quantization.quantization_mse": R(bits=4, symmetric=True),
    # report
    "report.engine_speedups": lambda: dict(latency={"a": latency()}, engines={"a": "eager"},
                                           fp32={"eager": "a"}),
    "report.compare_engines": lambda: dict(models={"a": (tiny_cnn(), "eager")},
                                           fp32={"eager": "a"}),
    "report.engine_table": lambda: dict(rows=lc.report.compare_engines(
        {"a": (tiny_cnn(), "eager")}, {"eager": "a"}, batch_sizes=(1,), warmup=1, repeats=2,
        threads=1)),
    "report.verdict": R(ok=True),
    "report.mean_std": R(values=[1.0, 2.0, 3.0]),
    "report.t_interval": R(values=[1.0, 2.0, 3.0]),
    "report.paired_verdict": R(values=[1.0, 2.0, 3.0], above="a", below="b", neither="c"),
    "report.relative_error": lambda: dict(approx=randn(4), reference=randn(4) + 1),
    # results (LIGHTCNN_RESULTS_DIR points at a temporary folder)
    "results.results_dir": {},
    "results.save_results": lambda: dict(chapter="01_sweep", rows=result_rows()),
    "results.load_results": lambda: _saved(dict(chapter="01_sweep")),
    "results.load_all_results": lambda: _saved({}),
    "results.summary_rows": lambda: dict(results={"01_sweep": result_rows()}),
    "results.summary_markdown": lambda: dict(results={"01_sweep": result_rows()}),
    "results.write_summary": lambda: dict(folder=_TMP),
    # runtime
    "runtime.cpu_name": {}, "runtime.cpuinfo_fields": {}, "runtime.int8_dot_product": {},
    "runtime.cpu_speed_probe": R(rounds=1, iterations=1000, pause_s=0.0),
    "runtime.thread_levels": R(rounds=1, warmup=1, repeats=2, pause_s=0.0),
    "runtime.page_faults_per_pass": R(batch_size=2, warmup=1, repeats=1),
    "runtime.seed_everything": R(seed=0),
    "runtime.set_threads": {},
    "runtime.setup": R(plots=False, pin_allocator=False),
    # search
    "search.SearchSpace": {},
    "search.Trial": R(architecture=ARCHITECTURE, score=0.5, macs=100, step=0),
    "search.build_searched": R(architecture=ARCHITECTURE),
    "search.searched_cnn": R(architecture=ARCHITECTURE),
    "search.sample_architecture": lambda: dict(space=lc.search.SearchSpace(),
                                               rng=random.Random(0)),
    "search.mutate": lambda: dict(architecture=ARCHITECTURE, space=lc.search.SearchSpace(),
                                  rng=random.Random(0)),
    "search.random_search": lambda: dict(space=lc.search.SearchSpace(),
                                         evaluate=lambda a: 0.5, macs_budget=10 ** 9,
                                         evaluations=2),
    "search.evolutionary_search": lambda: dict(space=lc.search.SearchSpace(),
                                               evaluate=lambda a: 0.5, macs_budget=10 ** 9,
                                               evaluations=3, population=2, sample_size=1),
    # sparse
    "sparse.encode_tensor": lambda: dict(t=sparse_weight(), fmt="csr"),
    "sparse.decode_tensor": lambda: dict(blob=lc.sparse.encode_tensor(sparse_weight(), "csr")),
    "sparse.encoded_size": lambda: dict(t=sparse_weight(), fmt="csr"),
    "sparse.size_formula": R(numel=16, nnz=4, fmt="csr", rows=4),
    "sparse.save_sparse": lambda: dict(model_or_state_dict=tiny_cnn(),
                                       path_or_file=_TMP / "saved.lcs"),
    "sparse.load_sparse": lambda: dict(path_or_file=sparse_file()),
    "sparse.sparse_size_bytes": {},
    "sparse.SparseConv2d": lambda: dict(weight=randn(4, 2, 3, 3)),
    "sparse.SparseLinear": lambda: dict(weight=sparse_weight()),
    "sparse.to_sparse_kernels": {},
    # train
    "train.History": {},
    "train.fit": {},
    "train.evaluate": {}, "train.predict": {}, "train.accuracy": {},
    "train.confusion_matrix": lambda: dict(logits=randn(8, 10), labels=torch.arange(8)),
    "train.make_optimizer": R(optimizer="sgd", lr=0.1, weight_decay=0.0),
    "train.resolve_device": {},
    # weight_sharing
    "weight_sharing.cluster_weights": R(bits=2, iters=2),
    "weight_sharing.Codebook": lambda: dict(codebook=randn(4),
                                            indices=torch.arange(16).reshape(4, 4) % 4),
    "weight_sharing.share_weights": R(bits=2, iters=2),
    "weight_sharing.shared_layers": lambda: dict(model=shared_cnn()),
    "weight_sharing.unshare": lambda: dict(model=shared_cnn()),
    "weight_sharing.weight_sharing_bytes": lambda: dict(model=shared_cnn()),
    "weight_sharing.product_quantize_model": R(subvector_dim=2, bits=2, iters=2),
    # weights (the shipped zoo/ folder, read only; writes go to a temporary folder)
    "weights.read_manifest": lambda: dict(folder=shipped_zoo()),
    "weights.check_store": lambda: dict(folder=shipped_zoo()),
    "weights.load_state_dict": lambda: dict(name="lenet5", folder=shipped_zoo()),
    "weights.read_history": lambda: dict(name="lenet5", folder=shipped_zoo()),
    "weights.write_entry": lambda: dict(
        name="sweep", state_dict=tiny_cnn().state_dict(), meta={"recipe_version": 1},
        history={"train_loss": [1.0]}, folder=Path(tempfile.mkdtemp(dir=_TMP)),
        replace=True),
    "weights.sha256_file": lambda: dict(path=shipped_zoo() / "manifest.json"),
    "weights.bitwise_equal": lambda: dict(a=torch.zeros(3), b=torch.zeros(3)),
    "weights.rebuild_command": R(name="lenet5"),
    # zoo
    "zoo.TrainedModel": lambda: dict(model=tiny_cnn(), accuracy=0.5, history=history(),
                                     path=_TMP / "m.pt", trained_now=False),
    "zoo.cache_key": lambda: dict(name="lenet5", budget=tiny_budget()),
    "zoo.cache_path": lambda: dict(name="lenet5", budget=tiny_budget(), key="0" * 16),
    "zoo.estimate_pace": lambda: dict(manifest={}),
    "zoo.ZooEntry": R(name="sweep", model="lenet5", recipe=dict(lc.zoo.RECIPES["lenet5"]), version=1, epochs=1),
    "zoo.load": R(name="lenet5"),
    "zoo.shipped": R(name="lenet5"),
    "zoo.partial_checkpoint": lambda: dict(entry=lc.zoo.ENTRIES["lenet5"]),
    "zoo.expect_entry": lambda: dict(trained=lc.zoo.load("lenet5"), name="lenet5", budget="ci"),
    "zoo.fetch_entry": lambda: dict(name="lenet5", get=lambda base, **_: base, base=lc.zoo.load("lenet5"),
                                    budget="ci", optional=True),
    "zoo.main": R(argv=["list"]),
    "zoo.table": R(),
}

# Functions that read the shipped zoo (the tests' conftest points LIGHTCNN_ZOO elsewhere).
NEEDS_SHIPPED_ZOO = {"zoo.load", "zoo.shipped", "zoo.expect_entry", "zoo.fetch_entry", "zoo.main", "zoo.table", "weights.rebuild_command"}


def _sweep_model_factory():
    # a fresh name each time: register_model refuses a name twice (the registry is
    # restored after each function's sweep)
    _sweep_model_factory.count = getattr(_sweep_model_factory, "count", 0) + 1

    def factory(num_classes: int = 10, **kwargs) -> nn.Module:
        return tiny_cnn()
    factory.__name__ = f"sweep_model_{_sweep_model_factory.count}"
    return factory


def _saved(kwargs: dict) -> dict:
    # load_results needs a file saved first (in LIGHTCNN_RESULTS_DIR)
    lc.results.save_results("01_sweep", result_rows(), tiny_budget())
    return dict(kwargs, budget=tiny_budget())


# ---------------------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------------------


def public_callables() -> dict[str, object]:
    """``"module.name" -> object`` for every callable in every module's ``__all__``, each
    under the module that defines it (a re-export is swept once, where it lives)."""
    found = {}
    for info in pkgutil.iter_modules(lc.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"lightcnn.{info.name}")
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not callable(obj):
                continue
            home = getattr(obj, "__module__", module.__name__)
            if home != module.__name__ and home.startswith("lightcnn."):
                continue
            found[f"{info.name}.{name}"] = obj
    return dict(sorted(found.items()))


def is_exception_class(obj) -> bool:
    return inspect.isclass(obj) and issubclass(obj, BaseException)


def sweepable(obj) -> bool:
    """Whether ``obj`` takes an argument the sweep can replace."""
    return any(p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
               for p in inspect.signature(obj).parameters.values())


def _tokens(annotation) -> set[str]:
    text = annotation if isinstance(annotation, str) else getattr(
        annotation, "__name__", repr(annotation))
    return set(re.findall(r"[A-Za-z_][A-Za-z_0-9]*", str(text)))


def admitted(param: inspect.Parameter, label: str, key: str) -> bool:
    """Whether the annotation (or ALLOWED) admits the nonsense ``label`` for ``param``."""
    if label in ALLOWED.get(f"{key}.{param.name}", ()):
        return True
    if param.annotation is inspect.Parameter.empty:
        return False
    tokens = _tokens(param.annotation)
    if "Any" in tokens:
        return True
    if label == "None":
        return "None" in tokens or "Optional" in tokens or param.default is None
    if label == "str":
        if tokens & {"Path", "PathLike"}:
            return True   # a path may be given as a str
        return param.name not in CHOICES and "str" in tokens
    if label == "list":
        return bool(tokens & {"Sequence", "list", "List", "Iterable", "Collection"})
    if label == "dict":
        return bool(tokens & {"Mapping", "dict", "Dict", "MutableMapping"})
    return False


def names_argument(name: str, message: str) -> bool:
    """Whether ``message`` names the argument ``name`` as a word (a one- or two-letter name
    must be followed by what is said about it, so "a" in "a tensor" does not count)."""
    if len(name) > 2:
        return re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) is not None
    return re.search(rf"(?<![\w.]){re.escape(name)}(\s+(must|should|is|has|needs|of)\b|\s*[=:\[]"
                     rf"|['\")])", message) is not None


class _Timeout(BaseException):
    pass


# The time limit is checked when a call returns: no signal interrupts a call. A SIGALRM
# timer did before, and killed the standalone sweep (SIGSEGV, no faulthandler traceback) at
# the first call to overrun it after the OpenVINO calls: binary_openvino.compile_model (and
# deploy.OpenVinoModel, before it shared one Core) made an openvino.Core per model; each
# Core's CPU plugin gives the main thread an alternate signal stack and, when freed, puts
# back the one it found, unmapped or not, so models freed in the order they were made left
# the thread's stack unmapped, and the kernel could not deliver the alarm (CPython runs
# Python signal handlers on that stack). The crash came wherever the slow call was
# (int8.prepare_int8_qat's torch.export, on a loaded machine). An exception raised by a
# handler is no better: it can land between a native call and the Python bookkeeping that
# goes with it (llvmlite frees a module twice if it lands inside ``link_modules``). A call
# that hangs is not cut short either: after HANG_S a watchdog thread prints every thread's
# stack, so the hang shows (it raises nothing in the calling thread).
HANG_S = 10 * CALL_TIMEOUT_S


@contextlib.contextmanager
def _watchdog():
    done = threading.Event()

    def watch():
        if not done.wait(HANG_S):
            stacks = "".join(f"thread {ident}:\n" + "".join(traceback.format_stack(frame))
                             for ident, frame in sys._current_frames().items())
            print(f"a call has run for more than {HANG_S} s; where the threads are:\n"
                  + stacks, file=sys.stderr, flush=True)

    thread = threading.Thread(target=watch, name="api-sweep-watchdog", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _check_time(start: float) -> None:
    """Raise ``_Timeout`` if the call begun at ``start`` took longer than CALL_TIMEOUT_S."""
    seconds = time.perf_counter() - start
    if seconds > CALL_TIMEOUT_S:
        raise _Timeout(f"took {seconds:.1f} s, longer than {CALL_TIMEOUT_S} s")


def _call(obj, kwargs: dict):
    """``obj(**kwargs)``; a call that took longer than CALL_TIMEOUT_S raises ``_Timeout``
    once it has returned or raised (chained to what it raised), whatever it did."""
    kwargs = dict(kwargs)
    args = kwargs.pop("*args", ())
    start = time.perf_counter()
    with _watchdog(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            result = obj(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException:   # noqa: B036 (SystemExit from a CLI counts too)
            _check_time(start)   # a slow failure counts as too slow ...
            raise                # ... a quick one as what it raised
    _check_time(start)
    return result


def valid_kwargs(key: str, obj) -> dict:
    """The arguments of ``key``'s valid call: its EXAMPLES entry, then PARAMS for the
    required parameters it leaves out."""
    entry = EXAMPLES[key]
    kwargs = dict(entry() if callable(entry) else entry)
    for p in inspect.signature(obj).parameters.values():
        if p.name in kwargs or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in PARAMS and (p.default is p.empty or p.name in FAST or (
                p.name == "budget" and "Budget" in _tokens(p.annotation))):
            kwargs[p.name] = PARAMS[p.name]()
        elif p.default is p.empty:
            raise LookupError(f"{key}: no example for the required argument {p.name!r}; "
                              "add one to EXAMPLES in tests/test_api_sweep.py")
    return kwargs


def classify(error: BaseException | None, name: str) -> str:
    if error is None:
        return "silent"
    if isinstance(error, DOCUMENTED_ERRORS) and not isinstance(error, _Timeout):
        return "clean" if names_argument(name, str(error)) else "unclear"
    return "crash"


@contextlib.contextmanager
def _isolated():
    """Restore what a call may change: the model registry, the thread count, figures."""
    registry = dict(lc.models._REGISTRY)
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        lc.models._REGISTRY.clear()
        lc.models._REGISTRY.update(registry)
        torch.set_num_threads(threads)
        import matplotlib.pyplot as plt
        plt.close("all")


def sweep(key: str, obj, first_failure: bool = False) -> list[tuple[str, str, str, str]]:
    """Call ``key`` validly once, then once per (parameter, nonsense); return
    ``(parameter, nonsense, outcome, detail)`` per nonsense call (up to the first that is
    not rejected cleanly, with ``first_failure``: enough to show a known failure stands)."""
    with _isolated():
        try:
            if key in NO_VALID_CALL and not os.environ.get("LIGHTCNN_SWEEP_ALL"):
                names = [p.name for p in inspect.signature(obj).parameters.values()]
            else:
                kwargs = valid_kwargs(key, obj)
                names = list(kwargs)
                _call(obj, kwargs)
        except LookupError:
            raise
        except BaseException as err:   # noqa: B036 (SystemExit from a CLI counts too)
            raise AssertionError(f"{key}: the valid example call failed: "
                                 f"{type(err).__name__}: {err}") from err
        outcomes = []
        for p in inspect.signature(obj).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                continue
            for label, make in NONSENSE.items():
                if admitted(p, label, key):
                    continue
                # fresh valid arguments (a call may mutate them); none to build when the
                # nonsense is the only argument of a slow example
                slow_alone = key in NO_VALID_CALL and not set(names) - {p.name}
                kwargs = {} if slow_alone else valid_kwargs(key, obj)
                kwargs[p.name] = make()
                error = None
                try:
                    _call(obj, kwargs)
                except BaseException as err:   # noqa: B036
                    if isinstance(err, KeyboardInterrupt):
                        raise
                    error = err
                detail = "" if error is None else f"{type(error).__name__}: {error}"
                outcomes.append((p.name, label, classify(error, p.name),
                                 detail.splitlines()[0][:160] if detail else ""))
                if first_failure and outcomes[-1][2] != "clean":
                    return outcomes
        return outcomes


@contextlib.contextmanager
def sweep_environment(data_dir: Path, shipped: bool = False):
    """Point every folder the package writes to at a temporary one."""
    saved = dict(os.environ)
    os.environ["LIGHTCNN_DATA"] = str(data_dir)
    os.environ["LIGHTCNN_RESULTS_DIR"] = str(_TMP / "results")
    os.environ["LIGHTCNN_CACHE"] = str(_TMP / "cache")
    if shipped:
        os.environ.pop("LIGHTCNN_ZOO", None)
    else:
        os.environ["LIGHTCNN_ZOO"] = str(_TMP / "empty-zoo")
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


CALLABLES = public_callables()


def _params():
    for key in CALLABLES:
        marks = []
        if key in KNOWN_FAILURES:
            marks.append(pytest.mark.xfail(reason=KNOWN_FAILURES[key], strict=False))
        yield pytest.param(key, id=key, marks=marks)


@pytest.mark.parametrize("key", list(_params()))
def test_rejects_nonsense(key, data_dir):
    obj = CALLABLES[key]
    if is_exception_class(obj):
        pytest.skip("an exception class: it takes any message")
    if key in EXEMPT:
        pytest.skip(EXEMPT[key])
    if not sweepable(obj):
        return   # no argument to get wrong
    assert key in EXAMPLES, (f"{key} is public but has no entry in EXAMPLES (or EXEMPT) "
                             "in tests/test_api_sweep.py")
    with sweep_environment(data_dir, shipped=key in NEEDS_SHIPPED_ZOO):
        # a known failure stops at its first bad call: one shows it stands, and some
        # (an ONNX export per silently accepted call) take seconds each
        outcomes = sweep(key, obj, first_failure=key in KNOWN_FAILURES)
    bad = [o for o in outcomes if o[2] != "clean"]
    assert not bad, (f"{key}: {len(bad)} of {len(outcomes)} nonsense calls not rejected "
                     "cleanly:\n" + "\n".join(f"  {p}={label}: {outcome} {detail}"
                                               for p, label, outcome, detail in bad))


def test_tables_name_public_callables_only():
    # an entry for a function that no longer exists (or a failure listed for a module
    # that must pass) is a stale table
    stale = [k for k in (*EXAMPLES, *EXEMPT, *KNOWN_FAILURES) if k not in CALLABLES]
    assert not stale, f"entries for callables that are not public: {stale}"
    owned = [k for k in KNOWN_FAILURES if k.split(".")[0] in OWNED]
    assert not owned, f"modules that must pass are listed as known failures: {owned}"


# ---------------------------------------------------------------------------------------
# python tests/test_api_sweep.py: the counts per module
# ---------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    verbose = "-v" in argv
    only = [a for a in argv if not a.startswith("-")]
    torch.set_num_threads(1)
    data_dir = lc.find_data_dir(download=False)
    per_module: dict[str, Counter] = {}
    failing: dict[str, list] = {}
    for key, obj in CALLABLES.items():
        module = key.split(".")[0]
        if only and module not in only and key not in only:
            continue
        counts = per_module.setdefault(module, Counter())
        if is_exception_class(obj) or key in EXEMPT:
            counts["exempt"] += 1
            continue
        if not sweepable(obj):
            continue
        if key not in EXAMPLES:
            counts["no example"] += 1
            print(f"no example: {key}", file=sys.stderr)
            continue
        try:
            with sweep_environment(data_dir, shipped=key in NEEDS_SHIPPED_ZOO):
                outcomes = sweep(key, obj)
        except (AssertionError, LookupError) as err:
            counts["bad example"] += 1
            print(f"bad example: {str(err).splitlines()[0][:300]}", file=sys.stderr)
            continue
        counts["functions"] += 1
        counts["calls"] += len(outcomes)
        counts.update(o[2] for o in outcomes)
        bad = [o for o in outcomes if o[2] != "clean"]
        if bad:
            failing[key] = bad
    columns = ("functions", "calls", "clean", "unclear", "crash", "silent", "exempt",
               "no example", "bad example")
    print(f"{'module':16s}" + "".join(f"{c:>12s}" for c in columns))
    total = Counter()
    for module, counts in per_module.items():
        total.update(counts)
        print(f"{module:16s}" + "".join(f"{counts[c]:12d}" for c in columns))
    print(f"{'total':16s}" + "".join(f"{total[c]:12d}" for c in columns))
    print("\nfailing functions (failing calls / calls):")
    for key, bad in failing.items():
        kinds = Counter(o[2] for o in bad)
        print(f"  {key}: {len(bad)} ({', '.join(f'{n} {k}' for k, n in kinds.items())})")
        if verbose:
            for p, label, outcome, detail in bad:
                print(f"      {p}={label}: {outcome} {detail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
