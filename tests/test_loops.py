"""The README's plain training loops run as printed and do what they say.

README.md's section "Your own training loop, on one machine or several" holds code blocks,
each after an HTML comment ``<!-- loop -->``: the first loads 2,000 training images, each
other one trains with one technique in a loop of its own. Every test runs the first block
and one other, verbatim, and checks what the technique promises.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
SECTION = "## Your own training loop, on one machine or several"


def readme_blocks(marker: str) -> list[str]:
    """The ```python blocks that follow ``<!-- marker -->`` in the README's loop section."""
    text = README.read_text()
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"<!-- {marker} -->\n```python\n(.*?)```", section, flags=re.S)


def _run(index: int) -> dict:
    """Run the data block, then loop block ``index``; return the names they defined."""
    blocks = readme_blocks("loop")
    namespace: dict = {}
    for i in (0, index):
        exec(compile(blocks[i], f"README.md (loop block {i})", "exec"), namespace)
    return namespace


def _fell(values: list[float], n: int = 5) -> bool:
    """The mean of the last ``n`` values is below the mean of the first ``n``."""
    return sum(values[-n:]) / n < sum(values[:n]) / n


def test_the_section_has_the_data_block_and_five_loops():
    blocks = readme_blocks("loop")
    assert len(blocks) == 6
    assert "get_dataloaders" in blocks[0]
    # each loop calls the optimizer itself: none hides behind lc.fit
    assert all("optimizer.step()" in b and "lc.fit" not in b for b in blocks[1:])


def test_agp_loop_reaches_its_sparsity_and_resumes_exactly(capsys):
    ns = _run(1)
    P, model, resumed, pruner = ns["pruning"], ns["model"], ns["resumed"], ns["pruner"]
    assert P.sparsity(model) == pytest.approx(0.8, abs=1e-3)
    assert _fell(ns["losses"])
    steps = ns["epochs"] * len(ns["train_loader"])
    assert pruner.step_count == steps and pruner.history[-1][1] == pytest.approx(0.8)
    # the resumed model holds the same weights, masks and statistics
    state, again = model.state_dict(), resumed.state_dict()
    assert state.keys() == again.keys()
    assert all(torch.equal(state[k], again[k]) for k in state)
    x = next(iter(ns["test_loader"]))[0]
    assert torch.equal(model.eval()(x), resumed.eval()(x))
    assert "sparsity 0.800" in capsys.readouterr().out


def test_slimming_loop_shrinks_the_scales_and_the_model():
    ns = _run(2)
    model, slim, lc = ns["model"], ns["slim"], ns["lc"]
    penalties = ns["penalties"]
    assert penalties[-1] < penalties[0]
    assert lc.count_macs(slim, (1, 28, 28)) < lc.count_macs(model, (1, 28, 28))
    assert sum(len(v) for v in ns["plan"].values()) > 0
    assert slim(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_distillation_loop_trains_the_student_from_the_shipped_teacher(shipped_zoo):
    ns = _run(3)
    lc, student, distiller = ns["lc"], ns["student"], ns["distiller"]
    assert _fell(ns["losses"])
    assert lc.evaluate(student, ns["test_loader"])["accuracy"] > 0.5   # 10 classes
    # the loss module and the Distiller give one loss on one batch
    x, y = ns["x"], ns["y"]
    student.eval()
    assert torch.allclose(ns["criterion"](student(x), ns["teacher_logits"], y),
                          distiller(x, y))
    assert not ns["teacher"].training


def test_binary_loop_keeps_latent_weights_clipped():
    ns = _run(4)
    assert ns["largest"] <= 1.0
    assert _fell(ns["losses"])
    # Adam at 1e-3 moves few weights near 1 in 2 epochs: one huge step shows the hook is live
    model, optimizer = ns["model"], ns["optimizer"]
    optimizer.param_groups[0]["lr"] = 10.0
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    layers = ns["binary"].binary_layers(model).values()
    assert all(layer.weight.min().item() == -1.0 for layer in layers)
    ns["hook"].remove()
    optimizer.step()
    assert min(layer.weight.min().item() for layer in layers) < -1.0


def test_qat_loop_converts_to_int8_that_keeps_the_accuracy(shipped_zoo):
    ns = _run(5)
    int8, quantized, lc = ns["int8"], ns["quantized"], ns["lc"]
    assert ns["q8"] >= ns["fp32"] - 0.01
    targets = {str(node.target) for node in quantized.graph.nodes}
    assert any("quantize_per_tensor" in t for t in targets)
    assert int8.saved_size_bytes(quantized) < lc.model_size_bytes(ns["float_model"]) / 2
