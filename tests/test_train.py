import pytest
import torch

import lightcnn as lc


def _loaders(budget):
    return lc.get_dataloaders(batch_size=50, budget=budget, augment=True)


def test_loss_falls_on_a_tiny_subset(tiny_budget):
    train, test = _loaders(tiny_budget)
    model = lc.create_model("lenet5")
    before = lc.evaluate(model, test)
    history = lc.fit(model, train, epochs=3, test_loader=test, lr=0.05, progress=False)
    assert len(history.train_loss) == 3 and len(history.test_accuracy) == 3
    assert history.train_loss[-1] < history.train_loss[0]
    assert lc.evaluate(model, test)["loss"] < before["loss"]


def test_same_seed_gives_identical_results(tiny_budget):
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = lc.create_model("baseline_cnn")
        train, test = _loaders(tiny_budget)
        history = lc.fit(model, train, epochs=1, test_loader=test, seed=7, progress=False)
        runs.append((model.state_dict(), history))
    (s1, h1), (s2, h2) = runs
    assert h1.train_loss == h2.train_loss and h1.test_accuracy == h2.test_accuracy
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_different_seed_gives_different_shuffling(tiny_budget):
    losses = []
    for seed in (0, 1):
        torch.manual_seed(0)
        model = lc.create_model("lenet5")
        train, _ = _loaders(tiny_budget)
        losses.append(lc.fit(model, train, 1, seed=seed, progress=False).train_loss[0])
    assert losses[0] != losses[1]


def test_schedules_and_optimizers(tiny_budget):
    train, _ = _loaders(tiny_budget)
    for optimizer, schedule, lr in (("sgd", "cosine", 0.05), ("adamw", None, 1e-3)):
        history = lc.fit(lc.create_model("lenet5"), train, 2, lr=lr, optimizer=optimizer,
                         schedule=schedule, progress=False)
        if schedule is None:
            assert history.lr == [lr, lr]
        else:
            assert history.lr[-1] < lr


def test_confusion_matrix_counts():
    logits = torch.tensor([[2.0, 0, 0], [0, 2.0, 0], [0, 2.0, 0], [0, 0, 2.0]])
    labels = torch.tensor([0, 1, 2, 2])
    expected = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 1, 1]])
    assert torch.equal(lc.confusion_matrix(logits, labels), expected)


def test_bad_arguments_are_rejected(tiny_budget):
    train, _ = _loaders(tiny_budget)
    model = lc.create_model("lenet5")
    with pytest.raises(ValueError, match="epochs"):
        lc.fit(model, train, 0)
    with pytest.raises(ValueError, match="lr"):
        lc.fit(model, train, 1, lr=0)
    with pytest.raises(ValueError, match="schedule"):
        lc.fit(model, train, 1, schedule="linear")
    with pytest.raises(ValueError, match="optimizer"):
        lc.fit(model, train, 1, optimizer="rmsprop")


@pytest.mark.parametrize("scripted, best", [([0.5, 0.9, 0.7], 1), ([0.6, 0.6, 0.5], 0),
                                             ([0.1, 0.2, 0.3], 2)])
def test_keep_best_ends_with_the_best_validation_epochs_weights(tiny_budget, monkeypatch,
                                                                 scripted, best):
    """The validation accuracies are scripted (so the best epoch is known); the weights
    fit ends with must be the ones it had at the end of that epoch (the earliest of
    ties), taken by an after_step that copies them at each epoch's last step."""
    train, val, test = lc.get_dataloaders_with_val(50, tiny_budget)
    real_evaluate, scores = lc.train.evaluate, iter(scripted)

    def scripted_evaluate(model, loader):
        result = real_evaluate(model, loader)
        return dict(result, accuracy=next(scores)) if loader is val else result

    monkeypatch.setattr(lc.train, "evaluate", scripted_evaluate)
    snapshots, steps = [], {"n": 0}

    def snapshot(model):
        steps["n"] += 1
        if steps["n"] % len(train) == 0:      # the epoch's last step: what is scored next
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})

    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    history = lc.fit(model, train, 3, test, lr=0.05, progress=False, after_step=snapshot,
                     val_loader=val, keep_best=True)
    assert history.val_accuracy == scripted and history.best_epoch == best == history.kept_epoch
    state = model.state_dict()
    assert all(torch.equal(state[k], snapshots[best][k]) for k in state)
    if best != 2:
        assert not all(torch.equal(state[k], snapshots[2][k]) for k in state)
    # the test accuracy the history records for that epoch is the returned model's
    monkeypatch.setattr(lc.train, "evaluate", real_evaluate)
    assert lc.evaluate(model, test)["accuracy"] == history.test_accuracy[best]
    assert len(history.val_loss) == 3


def test_val_loader_alone_records_and_keeps_the_last_epoch(tiny_budget):
    train, val, test = lc.get_dataloaders_with_val(50, tiny_budget)
    model = lc.create_model("lenet5")
    history = lc.fit(model, train, 2, test, lr=0.05, progress=False, val_loader=val)
    assert len(history.val_accuracy) == 2 and history.best_epoch is None
    assert history.kept_epoch == 1
    assert lc.evaluate(model, val)["accuracy"] == history.val_accuracy[-1]
    with pytest.raises(ValueError, match="keep_best needs val_loader"):
        lc.fit(model, train, 1, keep_best=True, progress=False)
    with pytest.raises(TypeError, match="val_loader must be a DataLoader"):
        lc.fit(model, train, 1, val_loader="val", progress=False)


def test_history_round_trips_and_reads_old_dicts():
    history = lc.History(train_loss=[1.0, 0.5], test_accuracy=[0.5, 0.7], val_loss=[1.0, 0.9],
                         val_accuracy=[0.6, 0.5], best_epoch=0)
    assert lc.History.from_dict(history.as_dict()) == history
    old = {"train_loss": [1.0], "test_loss": [1.0], "test_accuracy": [0.5], "lr": [0.1],
           "seconds": [1.0]}                       # a history stored before validation
    assert lc.History.from_dict(old).kept_epoch == 0 and lc.History.from_dict(old).best_epoch is None
    with pytest.raises(ValueError, match="best_epoch must index val_accuracy"):
        lc.History(train_loss=[1.0], val_accuracy=[0.5], best_epoch=1)
    with pytest.raises(ValueError, match="best_epoch must be an int >= 0"):
        lc.History(best_epoch=-1)


def test_progress_prints_one_line_per_epoch_when_no_bar_can_redraw(tiny_budget, capsys):
    train, test = _loaders(tiny_budget)
    lc.fit(lc.create_model("lenet5"), train, 2, test_loader=test, progress=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("epoch 1/2: train loss") and "test accuracy" in lines[0]
    lc.fit(lc.create_model("lenet5"), train, 1, progress=False)
    assert capsys.readouterr().out == ""


def test_resolve_device_picks_a_gpu_only_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert lc.train.resolve_device("auto") == torch.device("cpu")
    assert lc.train.resolve_device(torch.device("cpu")) == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        lc.train.resolve_device("cuda")
    with pytest.raises(ValueError, match="no Apple GPU"):
        lc.train.resolve_device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert lc.train.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lc.train.resolve_device("auto") == torch.device("cuda")     # CUDA first
    assert lc.train.resolve_device("cuda:1") == torch.device("cuda:1")
    monkeypatch.setenv("LIGHTCNN_DEVICE", "cpu")
    assert lc.train.resolve_device(None) == torch.device("cpu")
    monkeypatch.setenv("LIGHTCNN_DEVICE", "auto")
    assert lc.train.resolve_device(None) == torch.device("cuda")
    monkeypatch.setenv("LIGHTCNN_DEVICE", "gpu")
    with pytest.raises(ValueError, match="device must be"):
        lc.train.resolve_device(None)
    for bad in ("gpu", "tpu", 3, "meta"):
        with pytest.raises(ValueError, match="device must be"):
            lc.train.resolve_device(bad)


def test_fit_on_the_cpu_device_equals_the_default(tiny_budget):
    loader, test_loader = lc.get_dataloaders(64, tiny_budget)
    results = []
    for kwargs in ({}, {"device": "cpu"}, {"device": "auto"} if not torch.cuda.is_available() else {"device": "cpu"}):
        torch.manual_seed(0)
        model = lc.create_model("lenet5")
        history = lc.fit(model, loader, 1, test_loader, progress=False, **kwargs)
        results.append((history.train_loss, history.test_accuracy, model.state_dict()))
    for loss, acc, state in results[1:]:
        assert loss == results[0][0] and acc == results[0][1]
        assert all(torch.equal(state[k], results[0][2][k]) for k in state)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_and_evaluate_on_a_gpu(tiny_budget):
    loader, test_loader = lc.get_dataloaders(64, tiny_budget)
    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    history = lc.fit(model, loader, 1, test_loader, progress=False, device="cuda")
    assert not next(model.parameters()).is_cuda                     # back where it came from
    on_cpu = lc.evaluate(model, test_loader)
    on_gpu = lc.evaluate(model.cuda(), test_loader)
    assert on_gpu["accuracy"] == history.test_accuracy[-1]
    assert abs(on_cpu["accuracy"] - on_gpu["accuracy"]) <= 0.01   # other kernels, same model


# --- the single-process path is the loop it was before fit learned DDP -----------------

def _fit_before_ddp(model, train_loader, epochs, test_loader, lr, weight_decay, seed,
                    loss_fn, after_step):
    """lc.fit's loop as of commit dae5149 (before torch.distributed), one-cycle SGD on the
    CPU, progress left out: the reference the single-process path must equal bitwise."""
    opt = lc.train.make_optimizer(model, "sgd", lr, weight_decay)
    steps = epochs * len(train_loader)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    torch.manual_seed(seed)
    train_loader.generator.manual_seed(seed)
    history = lc.History()
    for _ in range(epochs):
        model.train()
        total_loss, seen = 0.0, 0
        for x, y in train_loader:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model, x, y)
            loss.backward()
            opt.step()
            sched.step()
            after_step(model)
            total_loss += loss.item() * len(y)
            seen += len(y)
        history.lr.append(opt.param_groups[0]["lr"])
        history.train_loss.append(total_loss / seen)
        metrics = lc.evaluate(model, test_loader)
        history.test_loss.append(metrics["loss"])
        history.test_accuracy.append(metrics["accuracy"])
    return history


def test_single_process_fit_equals_the_loop_before_ddp(tiny_budget):
    from lightcnn import channel_pruning as cp, pruning

    runs = []
    for train in (_fit_before_ddp, None):
        torch.manual_seed(3)
        model = lc.create_model("baseline_cnn", widths=(8, 16, 16))
        loader, test = _loaders(tiny_budget)    # augmented: the global generator matters
        pruner = pruning.AGPPruner(0.5, total_steps=6, frequency=2)
        kwargs = dict(lr=0.05, weight_decay=5e-4, seed=5, loss_fn=cp.slimming_loss(1e-3),
                      after_step=pruner)
        if train is None:
            history = lc.fit(model, loader, 2, test, progress=False, **kwargs)
        else:
            history = train(model, loader, 2, test, **kwargs)
        runs.append((model.state_dict(), history, pruner.history))
    (s1, h1, p1), (s2, h2, p2) = runs
    assert h1.train_loss == h2.train_loss and h1.lr == h2.lr
    assert h1.test_loss == h2.test_loss and h1.test_accuracy == h2.test_accuracy
    assert p1 == p2 and s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_fit_outside_a_process_group_does_not_touch_torch_distributed(tiny_budget, monkeypatch):
    train, _ = _loaders(tiny_budget)
    monkeypatch.setattr(lc.train, "DistributedDataParallel", None)   # would fail if used
    monkeypatch.setattr(lc.distributed, "distributed_loader", None)
    history = lc.fit(lc.create_model("lenet5"), train, 1, progress=False)
    assert len(history.train_loss) == 1


class _Interrupt(Exception):
    pass


def _interrupt_after(steps):
    count = {"n": 0}

    def after_step(model):
        count["n"] += 1
        if count["n"] == steps:
            raise _Interrupt
    return after_step


@pytest.mark.parametrize("schedule,optimizer,keep_best", [("onecycle", "sgd", False),
                                                           ("cosine", "adamw", True)])
def test_fit_resumed_from_its_checkpoint_equals_one_uninterrupted_fit(tiny_budget, tmp_path,
                                                                       schedule, optimizer,
                                                                       keep_best):
    # a zoo build interrupted mid-training (the session ends) resumes after the last
    # finished epoch: the same weights, bit for bit, and the same history
    train, test = _loaders(tiny_budget)
    val = test if keep_best else None
    kwargs = dict(epochs=3, test_loader=test, lr=0.05, schedule=schedule, optimizer=optimizer,
                  seed=3, progress=False, val_loader=val, keep_best=keep_best)
    torch.manual_seed(0)
    straight = lc.create_model("lenet5")
    expected = lc.fit(straight, train, **kwargs)
    path = tmp_path / "run.ckpt"
    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    with pytest.raises(_Interrupt):           # stopped in the middle of the second epoch
        lc.fit(model, train, checkpoint=path, after_step=_interrupt_after(len(train) + 2),
               **kwargs)
    assert path.is_file()
    torch.manual_seed(99)                    # a fresh process: other weights, other RNG state
    resumed = lc.create_model("lenet5")
    history = lc.fit(resumed, train, checkpoint=path, **kwargs)
    assert not path.exists()                 # done: the checkpoint is removed
    state = resumed.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in straight.state_dict().items())
    for field in ("train_loss", "test_loss", "test_accuracy", "lr", "val_accuracy"):
        assert getattr(history, field) == getattr(expected, field), field
    assert history.best_epoch == expected.best_epoch and len(history.seconds) == 3


def test_fit_refuses_a_checkpoint_of_another_run_or_a_damaged_one(tiny_budget, tmp_path):
    train, test = _loaders(tiny_budget)
    path = tmp_path / "run.ckpt"
    with pytest.raises(_Interrupt):
        lc.fit(lc.create_model("lenet5"), train, epochs=2, lr=0.05, progress=False,
               checkpoint=path, after_step=_interrupt_after(len(train) + 1))
    before = path.read_bytes()
    with pytest.raises(ValueError, match="checkpoint .* another run.*lr"):
        lc.fit(lc.create_model("lenet5"), train, epochs=2, lr=0.01, progress=False,
               checkpoint=path)
    assert path.read_bytes() == before       # not overwritten
    path.write_bytes(before[: len(before) // 2])
    with pytest.raises(ValueError, match="checkpoint .* not readable"):
        lc.fit(lc.create_model("lenet5"), train, epochs=2, lr=0.05, progress=False,
               checkpoint=path)
    with pytest.raises(TypeError, match="checkpoint"):
        lc.fit(lc.create_model("lenet5"), train, epochs=1, progress=False, checkpoint=3)


def test_fit_keeps_a_finished_checkpoint_when_asked_and_replays_it_without_training(
        tiny_budget, tmp_path):
    # a caller with several training phases (slimming: penalty, cut, fine-tune) keeps each
    # finished phase's file, so a resumed run passes the phase without training it again
    train, test = _loaders(tiny_budget)
    kwargs = dict(epochs=2, test_loader=test, lr=0.05, schedule="cosine", seed=4,
                  progress=False)
    path = tmp_path / "phase0.ckpt"
    torch.manual_seed(0)
    model = lc.create_model("lenet5")
    first = lc.fit(model, train, checkpoint=path, keep_checkpoint=True, **kwargs)
    assert path.is_file()
    torch.manual_seed(1)
    again = lc.create_model("lenet5")
    replayed = lc.fit(again, train, checkpoint=path, keep_checkpoint=True,
                      after_step=_interrupt_after(1), **kwargs)   # would raise if it trained
    assert replayed.as_dict() == first.as_dict() and path.is_file()
    state = again.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(TypeError, match="keep_checkpoint"):
        lc.fit(again, train, checkpoint=path, keep_checkpoint=1, **kwargs)
    with pytest.raises(ValueError, match="keep_checkpoint needs a checkpoint"):
        lc.fit(again, train, keep_checkpoint=True, **kwargs)
