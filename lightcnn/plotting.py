"""Plots used by the chapters; every helper returns ``(fig, ax)``.

A fixed figure size and style keep the figures' text output stable across runs (nbval
compares the text that stands for a figure).
"""

from __future__ import annotations

import math
from typing import Sequence

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator
import numpy as np
import torch

from ._checks import (check_bool, check_float, check_int, check_mapping, check_sequence,
                      check_str, check_tensor)

__all__ = ["set_style", "plot_images", "plot_history", "plot_confusion_matrix",
           "plot_filters", "plot_feature_maps", "plot_tradeoff", "plot_curves", "plot_histograms"]

FIGSIZE = (6.4, 4.0)


def set_style() -> None:
    """The book's plot style: fixed size, readable fonts, light grid, no top/right spines."""
    matplotlib.rcParams.update({
        "figure.figsize": FIGSIZE, "figure.dpi": 100, "savefig.dpi": 100,
        "font.size": 10, "axes.grid": True, "grid.alpha": 0.3,
        "axes.spines.top": False, "axes.spines.right": False,
        "image.cmap": "gray",
    })


def _grid(n: int, cols: int, scale: float = 1.3):
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale, rows * scale), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _check_values(name: str, values) -> None:
    # a list of numbers: list, tuple, range, numpy array or 1-D tensor
    if not isinstance(values, (list, tuple, range, np.ndarray, torch.Tensor)):
        raise TypeError(f"{name} must be a list of numbers, got {type(values).__name__}: "
                        f"{values!r}")


def _check_rows(name: str, rows) -> None:
    check_sequence(name, rows)
    if not all(isinstance(r, dict) for r in rows):
        raise TypeError(f"{name} must be a list of dicts (result rows)")


def plot_images(images: torch.Tensor, labels: Sequence[str] | None = None, cols: int = 10):
    """Show ``(N, H, W)`` or ``(N, 1, H, W)`` images in a grid with optional titles."""
    check_tensor("images", images, (3, 4), nonempty=True)
    check_sequence("labels", labels, none=True)
    if labels is not None and len(labels) < len(images):
        raise ValueError(f"labels must give one title per image ({len(images)}), "
                         f"got {len(labels)}")
    check_int("cols", cols, 1)
    images = images.detach().reshape(len(images), *images.shape[-2:]).cpu()
    fig, axes = _grid(len(images), cols)
    for i, img in enumerate(images):
        ax = axes.flat[i]
        ax.imshow(img.numpy(), cmap="gray_r")
        if labels is not None:
            ax.set_title(labels[i], fontsize=7)
    fig.tight_layout()
    return fig, axes


def plot_history(history, title: str = "learning curves"):
    """Training loss and test accuracy per epoch on two y-axes."""
    if not all(hasattr(history, a) for a in ("train_loss", "test_loss", "test_accuracy")):
        raise TypeError("history must be a lightcnn History (train_loss, test_loss, "
                        f"test_accuracy per epoch), got {type(history).__name__}: {history!r}")
    check_str("title", title, empty=True)
    fig, ax = plt.subplots()
    epochs = np.arange(1, len(history.train_loss) + 1)
    ax.plot(epochs, history.train_loss, "o-", color="C0", label="training loss")
    if history.test_loss:
        ax.plot(epochs, history.test_loss, "s--", color="C1", label="test loss")
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # no "epoch 2.5"
    ax.set_ylabel("cross-entropy")
    ax.set_title(title)
    handles, names = ax.get_legend_handles_labels()
    if history.test_accuracy:
        ax2 = ax.twinx()
        ax2.plot(epochs, 100 * np.asarray(history.test_accuracy), "^-", color="C2",
                 label="test accuracy")
        ax2.set_ylabel("test accuracy (%)")
        ax2.grid(False)
        h2, n2 = ax2.get_legend_handles_labels()
        handles, names = handles + h2, names + n2
    ax.legend(handles, names, loc="center right")
    fig.tight_layout()
    return fig, ax


def plot_confusion_matrix(matrix: torch.Tensor, classes: Sequence[str]):
    """Row-normalised confusion matrix (rows: true class, columns: predicted)."""
    check_tensor("matrix", matrix, 2)
    check_sequence("classes", classes)
    if not matrix.shape[0] == matrix.shape[1] == len(classes):
        raise ValueError(f"matrix must be square with one row per class ({len(classes)} "
                         f"classes), got shape {tuple(matrix.shape)}")
    m = matrix.double()
    m = (m / m.sum(1, keepdim=True).clamp(min=1)).numpy()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    ax.grid(False)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if m[i, j] >= 0.005:
                ax.text(j, i, f"{100 * m[i, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (% of each true class)")
    fig.tight_layout()
    return fig, ax


def plot_filters(weight: torch.Tensor, cols: int = 8):
    """First-layer kernels ``(C_out, 1, K, K)``, each scaled to its own range."""
    check_tensor("weight", weight, 4, nonempty=True)
    check_int("cols", cols, 1)
    w = weight.detach().cpu()[:, 0]
    fig, axes = _grid(len(w), cols, scale=0.9)
    for i, k in enumerate(w):
        axes.flat[i].imshow(k.numpy(), cmap="RdBu_r", vmin=-k.abs().max(), vmax=k.abs().max())
    fig.suptitle("first-layer filters (red > 0 > blue)")
    fig.tight_layout()
    return fig, axes


def plot_feature_maps(maps: torch.Tensor, cols: int = 8, title: str = "feature maps"):
    """Feature maps ``(C, H, W)`` of one image."""
    check_tensor("maps", maps, 3, nonempty=True)
    check_int("cols", cols, 1)
    check_str("title", title, empty=True)
    maps = maps.detach().cpu()
    fig, axes = _grid(len(maps), cols, scale=0.9)
    for i, fm in enumerate(maps):
        axes.flat[i].imshow(fm.numpy(), cmap="viridis")
    fig.suptitle(title)
    fig.tight_layout()
    return fig, axes


def _count_label(value: float, _pos=None) -> str:
    """Axis tick label: ``2M``, ``50`` (a matplotlib FuncFormatter takes ``_pos`` too)."""
    from .profile import _fmt_count

    return _fmt_count(value, spec="g", plain="g")


def plot_tradeoff(rows: Sequence[dict], x: str = "macs", y: str = "accuracy",
                  logx: bool = True, title: str | None = None, front: bool = False,
                  xlabel: str | None = None, strip: str = "", background: Sequence[dict] = ()):
    """Scatter of result rows (e.g. accuracy vs MACs), each point labelled by its name.

    With ``front``, the Pareto front (cheapest in ``x`` for its ``y``) is drawn as a line.
    ``strip`` is removed from the labels (e.g. a suffix every row shares). Labels
    alternate above and below their points so that neighbours overlap less.
    ``background`` rows are drawn as small grey points without labels (e.g. every row of
    a leaderboard behind its labelled Pareto front).
    """
    _check_rows("rows", rows)
    check_str("x", x)
    check_str("y", y)
    check_bool("logx", logx)
    check_str("title", title, none=True, empty=True)
    check_bool("front", front)
    check_str("xlabel", xlabel, none=True, empty=True)
    check_str("strip", strip, empty=True)
    _check_rows("background", background)
    for name, keys in (("rows", ("name", x, y)), ("background", (x, y))):
        for row in rows if name == "rows" else background:
            missing = [k for k in keys if k not in row]
            if missing:
                raise ValueError(f"{name}: row {row.get('name', row)!r} lacks {missing} "
                                 f"(x={x!r}, y={y!r})")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots()
    value = lambda r, key: 100 * r[key] if key == "accuracy" else r[key]
    if background:
        ax.scatter([r[x] for r in background], [value(r, y) for r in background], s=10,
                   color="0.75", zorder=0, label="other results")
    if front:
        from .profile import pareto_front

        best = pareto_front(list(rows), cost=x, quality=y)
        ax.plot([r[x] for r in best], [value(r, y) for r in best], "--", color="C1",
                label="Pareto front", zorder=0)
    ordered = sorted(rows, key=lambda r: r[x])
    ax.scatter([r[x] for r in ordered], [value(r, y) for r in ordered])
    labels = [ax.annotate(r["name"].replace(strip, "") if strip else r["name"], (r[x], value(r, y)),
                          textcoords="offset points", xytext=(4, 5 if k % 2 == 0 else -11), fontsize=8)
              for k, r in enumerate(ordered)]
    if not ordered:
        # e.g. every model filtered out at the ci budget: an empty, labelled plot, no error
        ax.text(0.5, 0.5, "no rows to plot", ha="center", va="center", transform=ax.transAxes)
    elif logx:
        ax.set_xscale("log")
        # plain labels ("2M", "50") instead of overlapping 2x10^6-style minor labels
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(_count_label))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel("accuracy (%)" if y == "accuracy" else y)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _keep_labels_inside(fig, ax, labels)
    _keep_vertical_order(fig, labels)
    if front and ordered:
        _place_legend(fig, ax, labels)
    return fig, ax


def _keep_labels_inside(fig, ax, labels, rounds: int = 5) -> None:
    """Keep point labels inside the axes and apart from each other.

    A label that would run past the right edge is written to the left of its point;
    after the labels are separated (:func:`_separate_labels`), the y-range grows to hold
    any that were pushed above or below the axes (the points move with the range, so
    this repeats a few times).
    """
    renderer = fig.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1
    for label in labels:
        if label.get_window_extent(renderer).x1 > right:
            dx, dy = label.xyann
            label.set_horizontalalignment("right")
            label.xyann = (-dx, dy)
    for _ in range(rounds):
        _separate_labels(fig, labels)
        box = ax.get_window_extent(renderer)
        boxes = [label.get_window_extent(renderer) for label in labels]
        if not boxes:
            return
        over = max(b.y1 for b in boxes) - box.y1
        under = box.y0 - min(b.y0 for b in boxes)
        if over < 0.5 and under < 0.5:           # within half a pixel: inside
            return
        # grow the data range by the overflow plus a few pixels, in data units per pixel
        y0, y1 = ax.get_ylim()
        per_pixel = (y1 - y0) / box.height
        grow = lambda pixels: (pixels + 4) * per_pixel if pixels > 0 else 0
        ax.set_ylim(y0 - grow(under), y1 + grow(over))
    _separate_labels(fig, labels)   # the last word: labels never overlap


def _keep_vertical_order(fig, labels) -> None:
    """Swap the places of two labels in one column whose order is the reverse of their
    points' (alternating above/below can cross the labels of two points at one x, e.g. a
    model and its distilled twin), so the upper label names the upper point.

    Two labels of one font size are equally tall, so a swap moves each into the other's
    free slot; labels that would then overlap a third one are left where they were.
    """
    renderer = fig.canvas.get_renderer()
    points_per_pixel = 72 / fig.dpi
    for _ in range(len(labels) ** 2):          # a bubble sort of the crossed pairs
        swapped = False
        for i, a in enumerate(labels):
            for b in labels[i + 1:]:
                box_a, box_b = a.get_window_extent(renderer), b.get_window_extent(renderer)
                if not (box_a.x0 < box_b.x1 and box_b.x0 < box_a.x1):
                    continue                   # not one above the other
                if (a.xy[1] - b.xy[1]) * (box_a.y0 - box_b.y0) >= 0:
                    continue                   # in order (or tied)
                pixels = box_b.y0 - box_a.y0          # a moves up by this, b down
                others = [t.get_window_extent(renderer) for t in labels if t is not a and t is not b]
                moved = (box_a.translated(0, pixels), box_b.translated(0, -pixels))
                if any(n.overlaps(o) for n in moved for o in others):
                    continue
                move = pixels * points_per_pixel      # offsets are in points
                (ax_, ay), (bx, by) = a.xyann, b.xyann
                a.xyann, b.xyann = (ax_, ay + move), (bx, by - move)
                swapped = True
        if not swapped:
            return


def _separate_labels(fig, labels) -> None:
    """Move point labels vertically, as little as possible, until no two overlap.

    Alternating above/below is not enough when points nearly coincide (two models with
    the same accuracy and cost). Labels are placed from the lowest up; each one tries its
    own position, then the positions just above or just below each label already placed
    beside it, nearest first. The position above the highest of those is always free, so
    every label finds a place.
    """
    renderer = fig.canvas.get_renderer()
    points_per_pixel = 72 / fig.dpi
    placed = []
    for label in sorted(labels, key=lambda t: t.get_window_extent(renderer).y0):
        box = label.get_window_extent(renderer)
        beside = [p for p in placed if p.x0 < box.x1 and box.x0 < p.x1]
        shifts = [0.0] + [d for p in beside for d in (p.y1 - box.y0 + 1, p.y0 - box.y1 - 1)]
        shift = next(d for d in sorted(shifts, key=abs)
                     if not any(box.translated(0, d).overlaps(p) for p in beside))
        if shift:
            dx, dy = label.xyann
            label.xyann = (dx, dy + shift * points_per_pixel)
        placed.append(label.get_window_extent(renderer))


def _place_legend(fig, ax, labels) -> None:
    """Put the legend in the corner where it covers the fewest labels and points."""
    renderer = fig.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    points = [ax.transData.transform(xy) for c in ax.collections for xy in c.get_offsets()]

    def covered(loc: str) -> int:
        box = ax.legend(loc=loc).get_window_extent(renderer)
        return (sum(box.overlaps(b) for b in boxes)
                + sum(box.contains(x, y) for x, y in points))

    best = min(("lower right", "upper left", "upper right", "lower left"), key=covered)
    ax.legend(loc=best)


def plot_curves(x: Sequence[float], series: dict[str, Sequence[float]], xlabel: str,
                ylabel: str, title: str | None = None, percent: bool = False,
                reference: float | None = None, reference_label: str = "reference",
                markers: bool = True, errors: dict[str, Sequence[float]] | None = None,
                logx: bool = False, samples: dict[str, Sequence[Sequence[float]]] | None = None,
                legend: str = "inside"):
    """One line per named series over shared ``x`` values (e.g. accuracy vs sparsity).

    ``percent`` multiplies the series by 100 (fractions to %); ``reference`` draws a
    dashed horizontal line (e.g. the unpruned model's accuracy); ``markers=False`` draws
    plain lines (for curves sampled at hundreds of points, such as a function's graph).
    ``errors`` gives some series error bars (e.g. one standard deviation over seeds, in
    the series' units); ``samples`` draws, for some series, the values the line
    summarizes as small dots in its colour (e.g. one per seed: ``samples[name][i]`` are
    the values at ``x[i]``, each list its own length); ``logx`` puts x on a log scale,
    ticked at the given values. ``legend="outside"`` puts the legend right of the axes,
    where it covers no line (many series, or lines that fill the plot); ``"inside"``
    lets matplotlib pick the emptiest corner.
    """
    _check_values("x", x)
    check_mapping("series", series)
    for name, values in series.items():
        _check_values(f"series[{name!r}]", values)
    check_str("xlabel", xlabel, empty=True)
    check_str("ylabel", ylabel, empty=True)
    check_str("title", title, none=True, empty=True)
    check_bool("percent", percent)
    check_float("reference", reference, none=True)
    check_str("reference_label", reference_label, empty=True)
    check_bool("markers", markers)
    check_mapping("errors", errors, none=True)
    for name, values in (errors or {}).items():
        _check_values(f"errors[{name!r}]", values)
    check_bool("logx", logx)
    check_mapping("samples", samples, none=True)
    for name, values in (samples or {}).items():
        _check_values(f"samples[{name!r}]", values)
        for i, at in enumerate(values):
            _check_values(f"samples[{name!r}][{i}]", at)
    check_str("legend", legend, ("inside", "outside"))
    if not series:
        raise ValueError("series must name at least one curve")
    lengths = {k: len(v) for k, v in series.items() if len(v) != len(x)}
    errors = errors or {}
    samples = samples or {}
    for arg, given in (("errors", errors), ("samples", samples)):
        unknown = sorted(set(given) - set(series))
        if unknown:
            raise ValueError(f"{arg} names series that are not plotted: {unknown}")
        lengths.update({f"{arg}[{k}]": len(v) for k, v in given.items() if len(v) != len(x)})
    if lengths:
        raise ValueError(f"every series needs {len(x)} values (one per x), got {lengths}")
    if logx and any(v <= 0 for v in x):
        raise ValueError("logx needs every x > 0")
    fig, ax = plt.subplots()
    scale = 100 if percent else 1
    for name, values in series.items():
        yerr = None if name not in errors else [scale * e for e in errors[name]]
        line = ax.errorbar(list(x), [scale * v for v in values], yerr=yerr,
                           capsize=3 if yerr else 0, marker="o" if markers else None,
                           markersize=3, label=name)
        if name in samples:   # the values behind each point, in the line's colour
            xs = [xi for xi, at in zip(x, samples[name]) for _ in at]
            ys = [scale * v for at in samples[name] for v in at]
            ax.scatter(xs, ys, s=9, color=line.lines[0].get_color(), alpha=0.5, zorder=3)
    if reference is not None:
        ax.axhline(scale * reference, color="grey", linestyle="--", linewidth=1,
                   label=reference_label)
    ax.set_xlabel(xlabel)
    if logx:
        ax.set_xscale("log")
        ax.set_xticks(list(x), [f"{v:g}" for v in x])   # the values measured, not decades
        ax.minorticks_off()
    elif all(float(v).is_integer() for v in x):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # epochs, counts: no 2.5
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if legend == "outside":   # right of the axes; tight_layout narrows the axes to fit it
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    else:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax


def plot_histograms(values: dict[str, Sequence[float]], xlabel: str, title: str | None = None,
                    low: float | None = None, high: float | None = None, bins: int = 40,
                    logx: bool = False):
    """Overlaid histograms of several named sets of values on shared bins (e.g. the
    batch-norm scales of a network before and after a sparsity penalty).

    The bins span ``[low, high]`` (the values' own range by default), evenly on a log
    scale when ``logx``; values outside are drawn in the first or last bin, so every value
    is counted (with ``logx``, zeros land in the first bin: say so in ``xlabel``).
    """
    check_mapping("values", values)
    for name, v in values.items():
        _check_values(f"values[{name!r}]", v)
    check_str("xlabel", xlabel, empty=True)
    check_str("title", title, none=True, empty=True)
    check_float("low", low, none=True)
    check_float("high", high, none=True)
    check_int("bins", bins, 1)
    check_bool("logx", logx)
    if not values or not all(len(v) for v in values.values()):
        raise ValueError("values must name at least one non-empty set of numbers")
    arrays = {name: np.asarray(torch.as_tensor(v, dtype=torch.float64)) for name, v in values.items()}
    everything = np.concatenate(list(arrays.values()))
    low = float(everything.min()) if low is None else low
    high = float(everything.max()) if high is None else high
    if logx and low <= 0:
        raise ValueError(f"low must be > 0 on a log axis, got {low!r}")
    if not high > low:
        raise ValueError(f"high must be above low ({low!r}), got {high!r}")
    edges = np.geomspace(low, high, bins + 1) if logx else np.linspace(low, high, bins + 1)
    fig, ax = plt.subplots()
    for name, array in arrays.items():
        ax.hist(np.clip(array, low, high), bins=edges, alpha=0.6, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig, ax
