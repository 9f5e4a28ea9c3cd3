"""Data-parallel training in 2 CPU processes (gloo): lc.fit and the loop pieces under DDP.

One spawned pair of processes runs every case (starting processes costs more than the
cases), each process saves what it ended with, and the test compares the two ranks.
"""

from __future__ import annotations

import os
import resource
import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, TensorDataset

import lightcnn as lc
from lightcnn import binary as B
from lightcnn import channel_pruning as cp
from lightcnn import distillation as D
from lightcnn import distributed, int8, pruning
from test_loops import readme_blocks

WORLD = 2


def _tiny_cnn(classes: int = 4, width: int = 8) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, classes))


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    """4 classes of 8x8 images: a bright quadrant per class under noise (learnable)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = 0.5 * torch.randn(n, 1, 8, 8, generator=g)
    for c in range(4):
        r, q = divmod(c, 2)
        x[y == c, :, 4 * r:4 * r + 4, 4 * q:4 * q + 4] += 1.5
    return TensorDataset(x, y)


def _loader(batch_size: int = 16) -> DataLoader:
    return DataLoader(_data(), batch_size=batch_size, shuffle=True,
                      generator=torch.Generator().manual_seed(0))


def _plain_loop(model: nn.Module, optimizer, loader: DataLoader, epochs: int, loss_of,
                after=None) -> list[float]:
    """A loop of one's own over a DistributedSampler; returns each epoch's mean loss."""
    losses = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        model.train()
        total, seen = 0.0, 0
        for x, y in loader:
            loss = loss_of(x, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if after is not None:
                after()
            total, seen = total + loss.item() * len(y), seen + len(y)
        total, seen = distributed.all_reduce_sum([total, seen])   # over both processes
        losses.append(total / seen)
    return losses


def _worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    assert distributed.init_distributed("gloo") == rank
    results = {}
    clock = [time.perf_counter(), time.process_time()]

    def lap(case: str) -> None:
        if rank == 0:
            now = [time.perf_counter(), time.process_time()]
            print(f"rank 0, {case}: {now[0] - clock[0]:.1f} s wall, {now[1] - clock[1]:.1f} s CPU",
                  flush=True)
            clock[:] = now

    # lc.fit with the AGP pruner as after_step, evaluation all-reduced
    torch.manual_seed(rank)   # different on each rank: DDP must broadcast rank 0's weights
    model = _tiny_cnn()
    test = DataLoader(_data(40, seed=1), batch_size=20)
    steps = 3 * (len(_loader()))
    pruner = pruning.AGPPruner(0.6, total_steps=steps - 2, frequency=2)
    history = lc.fit(model, _loader(), 3, test, lr=0.05, schedule=None, progress=False,
                     after_step=pruner)
    results["fit"] = dict(state=model.state_dict(), history=history.as_dict(),
                          sparsity=pruning.sparsity(model), pruner=pruner.state_dict(),
                          alone=lc.evaluate(model, test))
    lap("fit")

    # a plain loop: DDP model, slimming penalty as a loss term, pruner.step()
    torch.manual_seed(0)
    model = _tiny_cnn()
    ddp = DDP(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    loader = distributed.distributed_loader(_loader(), seed=0)
    pruner = pruning.AGPPruner(0.5, total_steps=3 * len(loader), frequency=3, model=ddp)
    gamma_before = cp.bn_l1_penalty(model).item()

    def slimming(x, y):
        return F.cross_entropy(ddp(x), y) + 0.05 * cp.bn_l1_penalty(ddp)

    losses = _plain_loop(ddp, optimizer, loader, 3, slimming, after=pruner.step)
    distributed.broadcast_buffers(ddp)   # batch-norm statistics: rank 0's everywhere
    results["slim"] = dict(state=model.state_dict(), losses=losses,
                           masks=pruning.masks_of(model), sparsity=pruning.sparsity(model),
                           gamma=(gamma_before, cp.bn_l1_penalty(model).item()))
    lap("slim")

    # the Distiller as a loss module, with a hint regressor, under DDP
    torch.manual_seed(0)
    teacher = _tiny_cnn(width=12)
    lc.fit(teacher, _loader(), 1, lr=0.05, progress=False)   # all-reduced, like any fit
    distiller = D.Distiller(_tiny_cnn(width=4), teacher, hints={"3": "3"},
                            input_shape=(1, 8, 8))
    ddp = DDP(distiller)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    losses = _plain_loop(ddp, optimizer, distributed.distributed_loader(_loader()), 3, ddp)
    distributed.broadcast_buffers(ddp)
    results["distill"] = dict(state=distiller.state_dict(), losses=losses)
    lap("distill")

    # latent-weight clipping as the optimizer's post-step hook, on a DDP-wrapped BNN
    torch.manual_seed(0)
    model = B.binarize(_tiny_cnn(), "bnn", keep_first_last=False)
    ddp = DDP(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=0.05)
    B.register_clipping(optimizer, ddp)
    losses = _plain_loop(ddp, optimizer, distributed.distributed_loader(_loader()), 2,
                         lambda x, y: F.cross_entropy(ddp(x), y))
    distributed.broadcast_buffers(ddp)
    results["binary"] = dict(state=model.state_dict(), losses=losses,
                             largest=max(m.weight.detach().abs().max().item()
                                         for m in B.binary_layers(model).values()))
    lap("binary")

    # QAT under DDP: prepare, train, copy rank 0's observers, convert
    torch.manual_seed(0)
    model = _tiny_cnn()
    x0 = _data(8)[:][0]
    qat = int8.prepare_int8_qat(model, x0)
    ddp = DDP(qat)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    qat.train()
    losses = _plain_loop(ddp, optimizer, distributed.distributed_loader(_loader()), 2,
                         lambda x, y: F.cross_entropy(ddp(x), y))
    distributed.broadcast_buffers(ddp)
    results["qat"] = dict(state=qat.state_dict(), losses=losses)
    if rank == 0:   # identical states convert alike; converting costs seconds of CPU
        results["qat"]["logits"] = int8.convert_int8_qat(ddp)(x0)
    lap("qat")

    # the README's torchrun script, as printed (it saves into the working directory)
    os.chdir(out)
    namespace: dict = {}
    exec(compile(readme_blocks("torchrun")[0], "README.md (torchrun block)", "exec"), namespace)
    results["readme"] = dict(state=namespace["model"].state_dict(),
                             history=namespace["history"].as_dict(),
                             sparsity=pruning.sparsity(namespace["model"]))
    lap("README")

    # make zoo under torchrun: one zoo folder, a cache per rank (as on two machines), tiny
    # 1-epoch entries on 200 images; the second starts from the first
    from lightcnn import zoo
    from lightcnn.budget import BUDGETS, Budget

    os.environ["LIGHTCNN_ZOO"] = os.path.join(out, "zoo")
    cache = os.path.join(out, f"cache{rank}")
    os.environ["LIGHTCNN_CACHE"] = cache
    BUDGETS["full"] = Budget("full", train_size=200, test_size=100, epochs=1, finetune_epochs=1,
                             proxy_epochs=1, survey_epochs=1, overfit_train_size=100,
                             overfit_epochs=1, search_train_size=100, search_final_epochs=1,
                             val_size=100, calib_size=16, latency_warmup=1, latency_repeats=3)
    zoo.ENTRIES = {
        "lenet5": zoo.ZooEntry("lenet5", "lenet5", zoo.RECIPES["lenet5"], version=1, epochs=1),
        "lenet5_more": zoo.ZooEntry("lenet5_more", "lenet5", zoo.RECIPES["lenet5"], version=1,
                                    epochs=1, seed=2, init_from="lenet5"),
    }
    states, train_entry = {}, zoo._train_entry

    def recording(entry, *args, **kwargs):   # what each rank trained, before rank 0 writes
        result = train_entry(entry, *args, **kwargs)
        states[result[0]] = {k: v.clone() for k, v in result[1].items()}
        return result

    zoo._train_entry = recording
    written = zoo.build(["lenet5_more"], progress=False)
    results["zoo"] = dict(written=written, states=states,
                          cache=sorted(os.listdir(os.path.join(cache, "zoo")))
                          if os.path.isdir(os.path.join(cache, "zoo")) else [])
    lap("zoo build")
    torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, data_dir) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    os.environ["LIGHTCNN_DATA"] = str(data_dir)    # the spawned processes inherit it
    start, cpu = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\n{WORLD} gloo processes: {time.perf_counter() - start:.1f} s wall, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s CPU in all")
    return [{**torch.load(out / f"rank{r}.pt", weights_only=False), "out": out}
            for r in range(WORLD)]


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"ranks differ in {different}"


def test_fit_under_ddp_keeps_ranks_identical_and_prunes(ranks):
    r0, r1 = ranks[0]["fit"], ranks[1]["fit"]
    _assert_same_state(r0["state"], r1["state"])        # weights, masks, batch-norm stats
    assert any(k.endswith("weight_mask") for k in r0["state"])
    assert r0["history"]["train_loss"] == r1["history"]["train_loss"]   # all-reduced
    assert r0["history"]["test_accuracy"] == r1["history"]["test_accuracy"]
    assert r0["history"]["train_loss"][-1] < r0["history"]["train_loss"][0]
    assert r0["sparsity"] == r1["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert r0["pruner"] == r1["pruner"]
    # the all-reduced evaluation equals one process scoring the whole test set
    assert r0["history"]["test_accuracy"][-1] == pytest.approx(r0["alone"]["accuracy"])
    assert r0["history"]["test_loss"][-1] == pytest.approx(r0["alone"]["loss"], rel=1e-5)


def test_plain_loop_with_slimming_penalty_and_pruner_under_ddp(ranks):
    r0, r1 = ranks[0]["slim"], ranks[1]["slim"]
    _assert_same_state(r0["state"], r1["state"])
    assert r0["masks"].keys() == r1["masks"].keys()
    assert all(torch.equal(r0["masks"][k], r1["masks"][k]) for k in r0["masks"])
    assert r0["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert r0["losses"] == r1["losses"] and r0["losses"][-1] < r0["losses"][0]
    assert r0["gamma"][1] < r0["gamma"][0]   # the penalty shrank the batch-norm scales


def test_distiller_as_loss_module_under_ddp(ranks):
    r0, r1 = ranks[0]["distill"], ranks[1]["distill"]
    _assert_same_state(r0["state"], r1["state"])          # student and hint regressor
    assert any(k.startswith("regressors.") for k in r0["state"])
    assert r0["losses"][-1] < r0["losses"][0]


def test_clipping_hook_under_ddp(ranks):
    r0, r1 = ranks[0]["binary"], ranks[1]["binary"]
    _assert_same_state(r0["state"], r1["state"])
    assert r0["largest"] <= 1.0
    assert r0["losses"][-1] < r0["losses"][0]


def test_qat_under_ddp_trains_identically_and_converts(ranks):
    r0, r1 = ranks[0]["qat"], ranks[1]["qat"]
    _assert_same_state(r0["state"], r1["state"])          # weights and observer ranges
    assert r0["logits"].shape == (8, 4) and torch.isfinite(r0["logits"]).all()
    assert r0["losses"][-1] < r0["losses"][0]


def test_readme_torchrun_script_under_two_processes(ranks):
    r0, r1 = ranks[0]["readme"], ranks[1]["readme"]
    _assert_same_state(r0["state"], r1["state"])
    assert r0["history"]["train_loss"] == r1["history"]["train_loss"]
    assert r0["history"]["train_loss"][-1] < r0["history"]["train_loss"][0]
    assert r0["sparsity"] == pytest.approx(0.8, abs=1e-3)
    saved = torch.load(ranks[0]["out"] / "pruned.pt", weights_only=True)
    _assert_same_state(saved, r0["state"])


def test_zoo_build_under_torchrun_trains_together_and_writes_once(ranks):
    r0, r1 = ranks[0]["zoo"], ranks[1]["zoo"]
    assert r0["written"] == r1["written"] == ["lenet5", "lenet5_more"]   # dependency first
    for name in r0["written"]:
        _assert_same_state(r0["states"][name], r1["states"][name])
    folder = ranks[0]["out"] / "zoo"
    manifest = lc.weights.read_manifest(folder)
    assert set(manifest) == {"lenet5", "lenet5_more"}
    for name, meta in manifest.items():
        assert meta["sha256"] == lc.weights.sha256_file(folder / meta["file"])
        assert meta["trained_on"].startswith("2 processes (DDP) x ")
        state, _ = lc.weights.load_state_dict(name, folder)
        _assert_same_state(state, r0["states"][name])
    # rank 0 alone wrote its cache; rank 1 trained the same models and wrote nothing
    assert len(r0["cache"]) == 4 and r1["cache"] == []


def test_helpers_without_a_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.init_distributed() == 0   # a plain `python script.py`: no group
    assert not distributed.is_distributed()
    assert (distributed.get_rank(), distributed.get_world_size()) == (0, 1)
    assert distributed.is_main_process()
    model = _tiny_cnn()
    assert distributed.unwrap(model) is model
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    masks = {"a": torch.tensor([True, False])}
    assert torch.equal(distributed.broadcast_tensors(masks)["a"], masks["a"])
    assert distributed.broadcast_buffers(model) is model
    data = _data(10)
    assert distributed.shard_dataset(data) is data
    loader = distributed.distributed_loader(_loader(16))
    assert loader.batch_size == 16 and len(loader) == len(_loader(16))


def test_helpers_reject_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        distributed.init_distributed("mpi")
    with pytest.raises(TypeError, match="DataLoader"):
        distributed.distributed_loader([1, 2])
    no_batch = DataLoader(_data(8), batch_size=None)
    with pytest.raises(ValueError, match="batch_size"):
        distributed.distributed_loader(no_batch)
