import platform
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import lightcnn as lc


def test_setup_seeds_everything_and_fixes_threads(monkeypatch):
    monkeypatch.setenv("LIGHTCNN_BUDGET", "ci")
    budget = lc.setup(seed=3, threads=1, plots=False)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    lc.setup(seed=3, threads=1, plots=False)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b and budget.name == "ci"
    assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)


def test_bad_seed_and_threads():
    with pytest.raises(ValueError, match="seed"):
        lc.seed_everything(-1)
    with pytest.raises(ValueError, match="threads"):
        lc.set_threads(0)


# A fresh interpreter per measurement: the allocator's settings are process-wide and one
# way only. Each pass allocates a 64 MiB output (16,384 pages of 4 KiB).
_FAULTS = """
import sys, torch
import lightcnn as lc
pinned = lc.runtime.pin_allocator() if sys.argv[1] == "pin" else None
# the heap grows to its working size in the warm-up passes
faults = lc.runtime.page_faults_per_pass(torch.nn.ReLU(), 64, (16, 128, 128), warmup=5, repeats=20)
print(pinned, faults)
"""


def _faults_per_pass(mode: str) -> tuple[str, float]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="pin_allocator tunes glibc's malloc")
def test_pin_allocator_reuses_large_buffers_instead_of_faulting_them_in():
    pinned, faults = _faults_per_pass("pin")
    control, control_faults = _faults_per_pass("none")
    assert pinned == "True" and control == "None"
    # unpinned, glibc maps every 64 MiB output anew and the kernel faults in each page
    assert control_faults > 1000, control_faults
    # pinned, the freed block stays in the heap and the next pass reuses its pages
    assert faults < control_faults / 20, (faults, control_faults)


def test_setup_pins_the_allocator_unless_told_not_to(monkeypatch):
    calls = []
    monkeypatch.setattr(lc.runtime, "pin_allocator", lambda: calls.append(1) or True)
    lc.setup(seed=0, threads=1, plots=False)
    lc.setup(seed=0, threads=1, plots=False, pin_allocator=False)
    torch.use_deterministic_algorithms(False)
    assert calls == [1]


def test_page_faults_per_pass_rejects_bad_arguments():
    with pytest.raises(TypeError, match="model"):
        lc.runtime.page_faults_per_pass("relu")
    with pytest.raises(ValueError, match="batch_size"):
        lc.runtime.page_faults_per_pass(torch.nn.ReLU(), 0)
    with pytest.raises(ValueError, match="repeats"):
        lc.runtime.page_faults_per_pass(torch.nn.ReLU(), 1, repeats=0)
    with pytest.raises(ValueError, match="warmup"):
        lc.runtime.page_faults_per_pass(torch.nn.ReLU(), 1, warmup=-1)


def test_cpu_name_reads_the_model_name(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t:  Intel(R)   Xeon(R) Processor\n")
    assert lc.runtime.cpu_name(str(info)) == "Intel(R) Xeon(R) Processor"
    # no file: falls back to platform's answer (or "unknown"), never raises
    fallback = lc.runtime.cpu_name(str(tmp_path / "missing"))
    assert isinstance(fallback, str) and fallback != ""


def test_setup_prints_the_cpu(capsys):
    lc.setup(seed=0, threads=1, plots=False)
    torch.use_deterministic_algorithms(False)
    assert f"cpu: {lc.runtime.cpu_name()}" in capsys.readouterr().out
