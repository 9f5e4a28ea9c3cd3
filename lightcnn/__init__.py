"""lightcnn: small, tested building blocks for making convolutional networks small and fast.

The package behind the book *Lightweight CNNs*: every chapter imports it as ``lc``::

    import lightcnn as lc
    budget = lc.setup(seed=0)

Each module is one technique and imports only torch, torchvision, numpy and other lightcnn
modules, so a single file can be copied into another project.
"""

from .budget import BUDGETS, Budget, get_budget
from .data import (CLASSES, DatasetError, FashionMNIST, balanced_subset, find_data_dir,
                   get_dataloaders, get_dataloaders_with_val, load_fashion_mnist, normalize,
                   validation_split)
from .models import BaselineCNN, LeNet5, create_model, list_models, register_model
from .profile import (Latency, Table, compare, compare_latency, count_macs,
                      count_macs_by_module, count_macs_thop, count_nonzero_params, count_params, measure_latency,
                      model_size_bytes, pareto_front, profile_model, profile_models,
                      simulated_row, time_by_op_category, time_interleaved)
from .results import load_all_results, load_results, results_dir, save_results
from .runtime import seed_everything, set_threads, setup
from .train import History, accuracy, confusion_matrix, evaluate, fit, predict
from . import weights
from . import architectures, blocks, design, search
from . import channel_pruning, int8, pruning, quantization, sparse, weight_sharing
from . import equalization, integer
from . import binary, binary_kernels
from . import distillation
from .distillation import distill
from . import lowrank
from . import compression, pipeline
from . import report
from .fusion import fuse_conv_bn, measure_fusion

__version__ = "0.1.0"


def __getattr__(name: str):
    # lightcnn.zoo is imported on first use (lc.zoo), not above: `python -m lightcnn.zoo`
    # then runs the module once, as __main__, instead of after a first copy imported with
    # the package (which runpy warns about)
    if name == "zoo":
        import importlib

        return importlib.import_module(f"{__name__}.zoo")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
