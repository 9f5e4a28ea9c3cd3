"""The compute budget: one knob that sets how much every chapter trains and measures.

``LIGHTCNN_BUDGET=full`` (the default) is what the book publishes: the whole
Fashion-MNIST training set, full training schedules, many latency repeats. ``ci`` uses
small class-balanced subsets and one or two epochs, so that CI can execute every
chapter in minutes. Chapters read subset sizes and epochs from here and nowhere else.

Taught in chapters/01_cnn_basics (the benchmarking protocol).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, asdict, fields

from ._checks import check_bool, check_int, check_ints, check_str

__all__ = ["Budget", "BUDGETS", "get_budget"]


@dataclass(frozen=True)
class Budget:
    """How much to train and measure.

    Attributes:
        name: ``"full"`` or ``"ci"``.
        train_size: training images used (``None``: all 60,000).
        test_size: test images used (``None``: all 10,000).
        epochs: epochs for training a model from scratch.
        finetune_epochs: epochs for fine-tuning after compression.
        proxy_epochs: epochs for a quick proxy training (searches, sweeps).
        survey_epochs: epochs for each model of a many-model comparison (the architecture
            survey of chapter 3, the design comparisons of chapter 2), where ``epochs``
            for every model would not fit a chapter's time limit on a 2-core CPU (one
            epoch of all eleven survey models took 28.6 minutes on an Intel Xeon).
        overfit_train_size: a small class-balanced training subset on which a model
            overfits (the regularization experiments of chapter 2).
        overfit_epochs: epochs on that subset.
        search_train_size: training images for each proxy training of an architecture
            search (``proxy_epochs`` epochs each).
        search_final_epochs: epochs for training a search's winner, and the hand design
            it is compared with, on all the training data (chapter 2): fewer than
            ``epochs``, because two depthwise networks trained for ``epochs`` would not
            fit a chapter's time limit on a 2-core CPU (6 epochs of the pair took 14
            minutes on an Intel Xeon).
        val_size: class-balanced training images on which compression choices are
            scored (sensitivity scans), so the test set decides nothing.
        calib_size: images used to calibrate quantization observers.
        latency_warmup: untimed forward passes before timing.
        latency_repeats: timed forward passes; the median is reported.
        latency_batch_sizes: batch sizes at which latency is reported.
        latency_until_stable: retake a timing's samples, longer each time, until their
            spread is at most 20% of the median (``until_stable`` of
            :func:`lightcnn.time_interleaved`); off at ``ci``, whose three samples cannot
            judge a spread and whose timings are no result.
        binary_epochs: epochs for each network of chapter 6's binary comparison (the fp32
            reference and five binarized twins, trained from scratch): fewer than
            ``epochs``, because six networks trained for ``epochs`` would not fit a
            chapter's time limit on a 2-core CPU (on an AMD EPYC one epoch took 1.1
            minutes in float32 and with binary weights, 1.4 to 1.8 with binary
            activations; the chapter ran 27.7 minutes cold).
        distill_epochs: epochs of chapter 9's distillation step (a pruned baseline
            distilled from the unpruned one). Chapter 7's students come from the zoo,
            converged (20 epochs, three seeds), and train no epoch in the chapter.
        distill_sweep_size: class-balanced training images of each run of chapter 7's
            sweeps (temperature, label weight, features) and of its missing-class
            experiment: small enough that three seeds of every setting fit the chapter's
            time limit on a 2-core CPU (a narrow CNN's run took 9 s alone, 13 s distilled
            and 25 s with feature hints on an AMD EPYC).
        distill_sweep_epochs: epochs of each sweep run.
        prune_epochs: fine-tuning epochs of chapter 4's zoo-cached pruned models (gradual
            pruning to 12x, network slimming after its cut): twice ``finetune_epochs``,
            because three epochs left the 12x model 1.6 to 2.2 points below the baseline
            and the slimmed one 2.2; more would not fit a chapter's time limit on a
            2-core CPU (an epoch of the baseline took about a minute on an AMD EPYC).
        slim_penalty_epochs: epochs of network slimming's penalised fine-tuning, before
            its cut (two pushed only 0.2% of the batch-norm scales below 0.05).
    """

    name: str
    train_size: int | None
    test_size: int | None
    epochs: int
    finetune_epochs: int
    proxy_epochs: int
    survey_epochs: int
    overfit_train_size: int
    overfit_epochs: int
    search_train_size: int
    search_final_epochs: int
    val_size: int
    calib_size: int
    latency_warmup: int
    latency_repeats: int
    latency_batch_sizes: tuple[int, ...] = (1, 256)
    latency_until_stable: bool = True
    binary_epochs: int = 1
    distill_epochs: int = 1
    distill_sweep_size: int = 500
    distill_sweep_epochs: int = 1
    prune_epochs: int = 1
    slim_penalty_epochs: int = 1

    def __post_init__(self) -> None:
        check_str("name", self.name)
        for f in fields(self)[1:]:
            value = getattr(self, f.name)
            if f.name == "latency_batch_sizes":
                check_ints(f.name, value, 1)
            elif f.name == "latency_until_stable":
                check_bool(f.name, value)
            else:
                # image counts and timed passes need one at least; epochs and warm-up
                # passes may be zero
                low = 0 if "epochs" in f.name or f.name == "latency_warmup" else 1
                check_int(f.name, value, low, none=f.name in ("train_size", "test_size"))

    def as_dict(self) -> dict:
        """The budget as a plain dict (stored with trained models and results)."""
        return asdict(self)


BUDGETS: dict[str, Budget] = {
    "full": Budget("full", train_size=None, test_size=None, epochs=20, finetune_epochs=3,
                   proxy_epochs=2, survey_epochs=1, overfit_train_size=6000, overfit_epochs=10,
                   search_train_size=10000, search_final_epochs=6, val_size=5000,
                   calib_size=1024, latency_warmup=10, latency_repeats=50, binary_epochs=3,
                   distill_epochs=2, distill_sweep_size=5000,
                   distill_sweep_epochs=5, prune_epochs=6, slim_penalty_epochs=3),
    # Small, class-balanced subsets: every notebook runs end to end in about a minute.
    "ci": Budget("ci", train_size=2000, test_size=1000, epochs=1, finetune_epochs=1,
                 proxy_epochs=1, survey_epochs=1, overfit_train_size=500, overfit_epochs=2,
                 search_train_size=500, search_final_epochs=1, val_size=500, calib_size=128,
                 latency_warmup=1, latency_repeats=3, latency_until_stable=False,
                 binary_epochs=1,
                 distill_epochs=1, distill_sweep_size=500,
                 distill_sweep_epochs=1, prune_epochs=1, slim_penalty_epochs=1),
}


def get_budget(name: str | None = None) -> Budget:
    """Return the budget named ``name``, or the one set by ``LIGHTCNN_BUDGET`` (default full).

    Raises:
        ValueError: the name is not one of ``BUDGETS``.
    """
    check_str("name", name, none=True, empty=True)
    if name is None:
        name = os.environ.get("LIGHTCNN_BUDGET", "full").strip().lower() or "full"
    if name not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)}, got {name!r} "
                         "(set LIGHTCNN_BUDGET=full or LIGHTCNN_BUDGET=ci)")
    return BUDGETS[name]
