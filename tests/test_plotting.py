import matplotlib
import matplotlib.pyplot as plt
import numpy as np

matplotlib.use("Agg")

import pytest
import torch

import lightcnn as lc
from lightcnn import plotting

ROWS = [dict(name="a x0.25", macs=2e6, accuracy=0.90), dict(name="b x0.25", macs=8e6, accuracy=0.88),
        dict(name="c x0.25", macs=2e7, accuracy=0.93)]


def test_plot_tradeoff_labels_every_row_and_draws_the_front():
    fig, ax = plotting.plot_tradeoff(ROWS, front=True, strip=" x0.25")
    labels = sorted(t.get_text() for t in ax.texts)
    assert labels == ["a", "b", "c"]
    front_line = [l for l in ax.get_lines() if l.get_label() == "Pareto front"][0]
    assert list(front_line.get_xdata()) == [2e6, 2e7]  # b is dominated by a
    assert ax.get_xscale() == "log"
    matplotlib.pyplot.close(fig)


def test_plot_tradeoff_draws_background_rows_grey_and_unlabelled():
    others = [dict(name="z", macs=1e7, accuracy=0.80), dict(name="y", macs=3e6, accuracy=0.70)]
    fig, ax = plotting.plot_tradeoff(ROWS, front=True, background=others)
    assert sorted(t.get_text() for t in ax.texts) == ["a x0.25", "b x0.25", "c x0.25"]
    grey = [c for c in ax.collections if c.get_label() == "other results"][0]
    assert sorted(map(tuple, grey.get_offsets().tolist())) == [(3e6, 70.0), (1e7, 80.0)]
    assert ax.get_ylim()[0] <= 70.0          # the axes include the background
    matplotlib.pyplot.close(fig)


@pytest.mark.parametrize("value, text", [(2e6, "2M"), (5e3, "5K"), (50, "50"), (1.5e9, "1.5G")])
def test_count_labels(value, text):
    assert plotting._count_label(value) == text


def test_plot_tradeoff_accepts_no_rows():
    fig, ax = plotting.plot_tradeoff([], front=True, title="nothing trained")
    assert [t.get_text() for t in ax.texts] == ["no rows to plot"]
    matplotlib.pyplot.close(fig)


def test_plot_curves_draws_one_line_per_series_and_a_reference():
    fig, ax = lc.plotting.plot_curves([0.1, 0.5, 0.9], {"a": [0.9, 0.8, 0.5], "b": [0.9, 0.9, 0.7]},
                                      "sparsity", "accuracy (%)", percent=True, reference=0.92)
    lines = ax.get_lines()
    assert len(lines) == 3                              # two series + the reference
    assert list(lines[0].get_ydata()) == pytest.approx([90, 80, 50])
    assert lines[2].get_ydata()[0] == pytest.approx(92)
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="one per x"):
        lc.plotting.plot_curves([1, 2], {"a": [1]}, "x", "y")
    with pytest.raises(ValueError, match="series"):
        lc.plotting.plot_curves([1, 2], {}, "x", "y")


def test_plot_tradeoff_labels_of_nearly_coinciding_points_do_not_overlap():
    # chapter 03's case: two models with almost the same accuracy and cost, plus neighbours
    rows = [dict(name="mobilenet_v3_small", macs=2.00e6, accuracy=0.8754),
            dict(name="shufflenet_v2", macs=2.05e6, accuracy=0.8750),
            dict(name="squeezenet1_1", macs=2.10e6, accuracy=0.8751),
            dict(name="baseline", macs=2e7, accuracy=0.90)]
    fig, ax = plotting.plot_tradeoff(rows)
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == 4
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(4) for j in range(i))
    matplotlib.pyplot.close(fig)


def test_plot_tradeoff_labels_keep_the_vertical_order_of_their_points():
    # chapter 07's case: each student alone and distilled at one latency, close accuracies
    rows = [dict(name="teacher", latency=99.9, accuracy=0.9338)]
    for name, ms, alone, distilled in (("narrow", 16.6, 0.8905, 0.8930), ("half", 39.3, 0.9044, 0.9115),
                                       ("squeeze", 48.8, 0.8930, 0.8156), ("half long", 39.3, 0.9260, 0.9271)):
        rows += [dict(name=f"{name}, alone", latency=ms, accuracy=alone),
                 dict(name=f"{name}, distilled", latency=ms, accuracy=distilled)]
    fig, ax = plotting.plot_tradeoff(rows, x="latency")
    renderer = fig.canvas.get_renderer()
    labels = {t.get_text(): t for t in ax.texts}
    for name in ("narrow", "half", "squeeze", "half long"):
        a, d = labels[f"{name}, alone"], labels[f"{name}, distilled"]
        label_above = d.get_window_extent(renderer).y0 > a.get_window_extent(renderer).y0
        assert label_above == (d.xy[1] > a.xy[1]), name
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i))
    matplotlib.pyplot.close(fig)


def test_plot_tradeoff_keeps_labels_inside_the_axes():
    # chapter 05's case: long names, the costliest point at the right edge, a dense cluster
    rows = [dict(name=f"k-means {b} bits, centroids fine-tuned", size_bytes=1e5 * (1 + b / 10),
                 accuracy=0.93 - 0.002 * b) for b in range(6)]
    rows += [dict(name="baseline_cnn fp32 (compiled)", size_bytes=1.1e6, accuracy=0.934),
             dict(name="baseline_cnn fp32 (eager)", size_bytes=1.1e6, accuracy=0.934),
             dict(name="PQ d=8, 4 codewords", size_bytes=6e4, accuracy=0.5)]
    fig, ax = plotting.plot_tradeoff(rows, x="size_bytes", title="accuracy vs stored size")
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert len(boxes) == len(rows)
    for b in boxes:   # within a pixel (rendering rounds)
        assert inside.x0 - 1 <= b.x0 and b.x1 <= inside.x1 + 1
        assert inside.y0 - 1 <= b.y0 and b.y1 <= inside.y1 + 1
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(len(boxes)) for j in range(i))
    matplotlib.pyplot.close(fig)


def test_plot_tradeoff_puts_the_legend_where_it_covers_no_label():
    # chapter 02's case: the costliest points, and their labels, in the lower right
    rows = [dict(name="design conv (1/8 MACs)", latency=30.4, accuracy=0.879),
            dict(name="searched mbconv, 10 epochs", latency=45.4, accuracy=0.921),
            dict(name="design mbconv, 10 epochs", latency=47.3, accuracy=0.916),
            dict(name="design mbconv (1/8 MACs)", latency=48.0, accuracy=0.883),
            dict(name="design hardswish", latency=64.0, accuracy=0.8865),
            dict(name="design dwsep (1/8 MACs)", latency=65.9, accuracy=0.8824),
            dict(name="design silu", latency=73.7, accuracy=0.8908)]
    fig, ax = plotting.plot_tradeoff(rows, x="latency", front=True)
    renderer = fig.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    assert not any(legend.overlaps(t.get_window_extent(renderer)) for t in ax.texts)
    matplotlib.pyplot.close(fig)


def test_plot_history_marks_whole_epochs_only():
    history = lc.History(train_loss=[1.0, 0.5, 0.4, 0.3, 0.2], test_accuracy=[0.8, 0.85, 0.86, 0.88, 0.9])
    fig, ax = plotting.plot_history(history)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    matplotlib.pyplot.close(fig)


def test_plot_curves_draws_error_bars_on_a_log_axis():
    fig, ax = lc.plotting.plot_curves([1, 4, 20], {"kd": [0.90, 0.92, 0.91], "alone": [0.9] * 3},
                                      "T", "accuracy", percent=True,
                                      errors={"kd": [0.001, 0.002, 0.003]}, logx=True)
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "4", "20"]
    # one vertical bar per point, +- the error, in percent like the series
    (bars,) = [c for c in ax.collections if len(c.get_segments()) == 3]
    spans = [(seg[0][1], seg[1][1]) for seg in bars.get_segments()]
    assert np.allclose(spans, [(89.9, 90.1), (91.8, 92.2), (90.7, 91.3)])
    assert len(ax.collections) == 1             # no bars on the series without errors
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="not plotted"):
        lc.plotting.plot_curves([1, 2], {"a": [1, 2]}, "x", "y", errors={"b": [0, 0]})
    with pytest.raises(ValueError, match=r"errors\[a\]"):
        lc.plotting.plot_curves([1, 2], {"a": [1, 2]}, "x", "y", errors={"a": [0]})
    with pytest.raises(ValueError, match="logx needs every x > 0"):
        lc.plotting.plot_curves([0, 2], {"a": [1, 2]}, "x", "y", logx=True)


def test_plot_curves_marks_whole_numbers_when_x_is_whole():
    fig, ax = lc.plotting.plot_curves(range(1, 21), {"a": [0.5] * 20}, "epoch", "accuracy")
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)
    matplotlib.pyplot.close(fig)


def test_plot_curves_puts_the_legend_outside_the_axes_and_inside_the_figure():
    # chapter 07's case: nine 20-epoch curves that fill the plot
    series = {f"student {i}, {kind}": [0.8 + 0.005 * e + 0.001 * i for e in range(20)]
              for i in range(3) for kind in ("alone", "distilled", "smoothed")}
    fig, ax = lc.plotting.plot_curves(range(1, 21), series, "epoch", "accuracy", percent=True,
                                      reference=0.93, legend="outside")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box, axes, figure = (ax.get_legend().get_window_extent(renderer),
                         ax.get_window_extent(renderer), fig.bbox)
    assert box.x0 >= axes.x1                                    # right of the axes: covers no line
    assert box.x1 <= figure.x1 + 1 and box.y0 >= figure.y0 - 1  # and not cut off
    assert len(ax.get_legend().get_texts()) == 10               # nine series and the reference
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="legend must be one of"):
        lc.plotting.plot_curves([1, 2], {"a": [1, 2]}, "x", "y", legend="upper left")


def test_plot_curves_draws_the_samples_behind_each_point():
    # chapter 07's case: the mean paired gain of three seeds, and each seed's gain
    per_seed = [[0.01, 0.02, 0.03], [0.0, -0.01, 0.01], [-0.02, -0.01, -0.03]]
    fig, ax = lc.plotting.plot_curves([1, 2, 4], {"kd - alone": [0.02, 0.0, -0.02]}, "T", "gain",
                                      percent=True, errors={"kd - alone": [0.01, 0.01, 0.01]},
                                      samples={"kd - alone": per_seed}, logx=True)
    (dots,) = [c for c in ax.collections if len(c.get_offsets()) == 9]
    assert np.allclose(dots.get_offsets(), [(x, 100 * v) for x, at in zip([1, 2, 4], per_seed)
                                            for v in at])
    line_colour = ax.get_lines()[0].get_color()
    assert matplotlib.colors.same_color(dots.get_facecolor()[0][:3], line_colour)
    matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="not plotted"):
        lc.plotting.plot_curves([1, 2], {"a": [1, 2]}, "x", "y", samples={"b": [[1], [2]]})
    with pytest.raises(ValueError, match=r"samples\[a\]"):
        lc.plotting.plot_curves([1, 2], {"a": [1, 2]}, "x", "y", samples={"a": [[1]]})
    with pytest.raises(TypeError, match=r"samples\['a'\]\[1\]"):
        lc.plotting.plot_curves([1, 2], {"a": [1, 2]}, "x", "y", samples={"a": [[1], 2]})


def test_plot_histograms_counts_every_value_on_log_bins():
    values = {"a": torch.tensor([1e-6, 1e-3, 1e-3, 0.5, 2.0]), "b": [0.0, 0.1, 0.2]}
    fig, ax = lc.plotting.plot_histograms(values, "|gamma|", low=1e-8, high=10.0, bins=9, logx=True)
    patches = [c for c in ax.containers]
    assert len(patches) == 2
    # every value lands in a bin: zeros are drawn at the low edge, not dropped
    assert [sum(p.get_height() for p in bars) for bars in patches] == [5, 3]
    assert ax.get_xscale() == "log"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b"]
    plt.close(fig)


def test_plot_histograms_rejects_bad_arguments():
    with pytest.raises(ValueError, match="values"):
        lc.plotting.plot_histograms({}, "x")
    with pytest.raises(ValueError, match="low"):
        lc.plotting.plot_histograms({"a": [1.0]}, "x", low=0.0, high=1.0, logx=True)
    with pytest.raises(ValueError, match="high"):
        lc.plotting.plot_histograms({"a": [1.0]}, "x", low=2.0, high=1.0)
    with pytest.raises(TypeError, match="values"):
        lc.plotting.plot_histograms({"a": "abc"}, "x")
