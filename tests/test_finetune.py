"""Finetuning: freeze patterns, the optimizer's parameters, no graph through frozen parts,
frozen tensors bit-identical after training, unfreezing with its own lr group and exact
resume across it, and the shipped Fashion-MNIST 0-4 backbone against a random one on the shipped
few-label classes 5-9 (the 3-seed comparison at convergence is tests/test_pretrained.py's).

The CLI runs use the shipped configs/finetune.yaml, shortened to SHORT_EPOCHS (a few seconds
each); the in-process runs use configs/tiny.yaml.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli_subprocess

from autotrain import nn
from autotrain.autograd.tensor import Tensor
from autotrain.config import load_config
from autotrain.errors import ConfigError, WeightsError
from autotrain.io import load_checkpoint, load_weights, save_weights
from autotrain.optim import scheduled_lr
from autotrain.train.run import Interrupted, Trainer
from autotrain.train.setup import (
    build_model,
    parameter_table,
    set_train_mode,
    unfreeze_all,
)

CONFIGS = ROOT / "configs"
FINETUNE = CONFIGS / "finetune.yaml"
TINY = CONFIGS / "tiny.yaml"
SHIPPED = ROOT / "weights" / "resnet18_fashion04.safetensors"
SHORT_EPOCHS = ["--set", "train.epochs=2"]  # the shipped 40 would take a minute a run
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def finetune_cfg(*overrides: str):
    return load_config(FINETUNE, list(overrides))


def tiny_cfg(tmp_path: Path, *overrides: str):
    return load_config(TINY, [f"output.dir={tmp_path / 'run'}", *overrides])


def val_acc(run_dir: Path) -> float:
    with open(run_dir / "metrics.csv", newline="") as f:
        return float(list(csv.DictReader(f))[-1]["val_acc"])


def backbone(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("fc.")}


def assert_bit_identical(got: dict, want: dict, keys) -> None:
    for k in keys:
        a, b = np.asarray(got[k]), np.asarray(want[k])
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k


# --------------------------------------------------------------------------- freeze patterns


def test_patterns_select_by_name_prefix_and_glob() -> None:
    setup = build_model(finetune_cfg("finetune.freeze_backbone=false", "model.weights=null", "finetune.bn=eval",
                                     'finetune.freeze=["conv1", "layer1.*", "layer4.1.bn2"]'))
    names = [n for n, _ in setup.model.named_parameters()]
    want = [n for n in names if n == "conv1.weight" or n.startswith(("layer1.", "layer4.1.bn2."))]
    assert setup.frozen == want and len(want) == 1 + 12 + 2
    assert setup.trainable == [n for n in names if n not in want]
    # The parameters themselves, checked against the names the config asked for (setup.frozen
    # and setup.trainable are read from requires_grad, so they cannot disagree with it).
    params = dict(setup.model.named_parameters())
    assert [n for n in names if not params[n].requires_grad] == want
    assert [n for n in names if params[n].requires_grad] == [n for n in names if n not in want]
    # bn: eval keeps exactly the BatchNorm layers whose parameters are frozen in eval mode
    assert setup.bn_eval_modules == ["layer1.0.bn1", "layer1.0.bn2", "layer1.1.bn1", "layer1.1.bn2", "layer4.1.bn2"]
    set_train_mode(setup)
    modes = {n: m.training for n, m in setup.model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    assert [n for n, training in modes.items() if not training] == setup.bn_eval_modules


def test_freeze_backbone_freezes_everything_but_fc_and_the_table_counts_it() -> None:
    setup = build_model(finetune_cfg())
    assert setup.trainable == ["fc.weight", "fc.bias"]
    rows = {name: rest for name, *rest in parameter_table(setup)}
    assert list(rows) == ["conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert rows["fc"] == [128 * 5 + 5, 128 * 5 + 5, 0]
    assert rows["conv1"] == [16 * 9, 0, 16 * 9]
    total = sum(int(p.data.size) for p in setup.model.parameters())
    assert sum(r[0] for r in rows.values()) == total and sum(r[2] for r in rows.values()) == total - 645


@pytest.mark.parametrize("pattern", ["layer5", "conv", "layer4.1.bn3", "*.running_mean"])
def test_a_pattern_that_matches_nothing_is_a_config_error_listing_valid_names(pattern: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_model(finetune_cfg("finetune.freeze_backbone=false", "model.weights=null",
                                 f'finetune.freeze=["conv1", "{pattern}"]'))
    assert info.value.exit_code == 2
    (line,) = info.value.problems  # conv1 matched: one line, for the bad pattern only
    assert repr(pattern) in line
    for name in ("conv1", "bn1", "layer1", "layer4.1.bn2", "layer2.0.downsample.0", "fc"):
        assert re.search(rf"(?<![\w.]){re.escape(name)}(,|$)", line), name


@pytest.mark.parametrize("overrides", [['finetune.freeze=["*"]'],
                                       ['finetune.freeze=["fc"]', "finetune.freeze_backbone=true"],
                                       ['finetune.freeze=["conv1", "bn1", "layer*", "fc.weight", "fc.bias"]']])
def test_a_freeze_that_leaves_nothing_trainable_is_a_config_error(overrides) -> None:
    with pytest.raises(ConfigError, match="leaves no trainable parameter") as info:
        build_model(finetune_cfg("finetune.freeze_backbone=false", "model.weights=null", *overrides))
    assert "layer3.1.conv2" in str(info.value) and "fc" in str(info.value)


# --------------------------------------------------------------------------- graph and optimizer


def test_frozen_backbone_records_no_graph_until_fc() -> None:
    setup = build_model(finetune_cfg())
    set_train_mode(setup)
    x = Tensor(np.random.default_rng(0).standard_normal((4, 1, 16, 16)).astype(np.float32))
    feats = setup.model.features(x)
    assert feats.requires_grad is False and feats.grad_fn is None
    logits = setup.model.fc(feats)
    assert logits.requires_grad and logits.grad_fn is not None
    nn.functional.cross_entropy(logits, np.array([0, 1, 2, 3])).backward()
    grads = {n: p.grad for n, p in setup.model.named_parameters()}
    assert {n for n, g in grads.items() if g is not None} == {"fc.weight", "fc.bias"}


def test_a_partial_freeze_starts_the_graph_at_the_first_trainable_layer() -> None:
    setup = build_model(finetune_cfg("finetune.freeze_backbone=false", 'finetune.freeze=["conv1", "bn1", "layer1"]'))
    m = setup.model
    x = Tensor(np.ones((2, 1, 16, 16), np.float32))
    h = m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))
    assert h.grad_fn is None and not h.requires_grad
    assert m.layer2(h).grad_fn is not None


def test_the_optimizer_holds_only_trainable_parameters(tmp_path: Path) -> None:
    cfg = tiny_cfg(tmp_path, "finetune.freeze_backbone=true", "finetune.unfreeze_at_epoch=1", "train.epochs=2")
    trainer = Trainer(cfg)
    trainer._build(None)
    params = dict(trainer.setup.model.named_parameters())
    (group,) = trainer.optimizer.param_groups
    assert group["names"] == ["fc.weight", "fc.bias"]
    assert [id(p) for p in group["params"]] == [id(params["fc.weight"]), id(params["fc.bias"])]
    # freeze_backbone asked for everything but fc: every other parameter records no gradient.
    assert [n for n, p in params.items() if p.requires_grad] == ["fc.weight", "fc.bias"]


# --------------------------------------------------------------------------- unfreezing


class StopAt:
    """should_stop for Trainer: SIGTERM (15) once ``n`` batches have run."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def __call__(self):
        self.calls += 1
        return 15 if self.calls == self.n else None


def test_unfreeze_at_epoch_thaws_the_backbone_into_a_new_group_at_lr_times_mult(tmp_path: Path) -> None:
    mult = 0.25
    cfg = tiny_cfg(tmp_path, "finetune.freeze_backbone=true", "finetune.unfreeze_at_epoch=1", "train.epochs=3",
                   f"finetune.backbone_lr_mult={mult}", "finetune.bn=eval", "output.keep_last=3")
    initial = build_model(cfg).model.state_dict()
    result = Trainer(cfg).run()
    run = result.run_dir
    before, after = load_checkpoint(run / "epoch-1.safetensors"), load_checkpoint(run / "last.safetensors")
    # epoch 0 (1-based 1) trained only fc: the whole backbone, BN statistics included, is untouched
    assert_bit_identical(before.model_state, initial, backbone(initial))
    assert not np.array_equal(before.model_state["fc.weight"], initial["fc.weight"])
    assert before.metadata["unfrozen"] is False and after.metadata["unfrozen"] is True
    assert [g["names"] for g in before.metadata["optimizer_groups"]] == [["fc.weight", "fc.bias"]]
    # from epoch 1 (0-based) on every backbone tensor trains and the BN statistics move
    changed = [k for k in backbone(initial) if not np.array_equal(after.model_state[k], initial[k])]
    assert set(changed) == set(backbone(initial))
    steps = after.metadata["schedule"]["steps_per_epoch"]
    # BatchNorm was in eval mode while frozen (bn: eval), in train mode for the 2 thawed epochs
    assert int(after.model_state["bn1.num_batches_tracked"]) == int(initial["bn1.num_batches_tracked"]) + 2 * steps
    head, body = after.metadata["optimizer_groups"]
    names = [n for n in initial if n in set(body["names"])]
    assert head["names"] == ["fc.weight", "fc.bias"] and body["names"] == names and len(names) == 60
    assert body["lr_mult"] == mult and "lr_mult" not in head
    last_lr = scheduled_lr(cfg.optimizer.lr, "cosine", 3 * steps - 1, steps, 3, 0, 30, 0.1)
    assert head["lr"] == last_lr and body["lr"] == last_lr * mult
    assert set(after.optimizer_state) == {f"momentum_buffer.{n}" for n in ["fc.weight", "fc.bias", *names]}


@pytest.mark.parametrize("stop_after", ["end of the frozen epoch", "mid thawed epoch"])
def test_resume_across_the_unfreeze_is_exact(tmp_path: Path, stop_after: str) -> None:
    overrides = ["finetune.freeze_backbone=true", "finetune.unfreeze_at_epoch=1", "train.epochs=2",
                 "finetune.bn=eval", "data.augment.crop_padding=1"]
    ref = Trainer(tiny_cfg(tmp_path / "ref", *overrides)).run()
    cfg = tiny_cfg(tmp_path / "cut", *overrides)
    steps = load_checkpoint(ref.last_checkpoint).metadata["schedule"]["steps_per_epoch"]
    n = steps if stop_after == "end of the frozen epoch" else steps + 3
    with pytest.raises(Interrupted):
        Trainer(cfg, should_stop=StopAt(n)).run()
    cut = load_checkpoint(cfg.output.dir + "/last.safetensors")
    assert cut.metadata["unfrozen"] is (stop_after != "end of the frozen epoch")
    Trainer(cfg, resume="auto").run()
    got, want = load_checkpoint(cfg.output.dir + "/last.safetensors"), load_checkpoint(ref.last_checkpoint)
    assert_bit_identical(got.model_state, want.model_state, want.model_state)
    assert set(got.optimizer_state) == set(want.optimizer_state)
    assert_bit_identical(got.optimizer_state, want.optimizer_state, want.optimizer_state)
    assert got.metadata["optimizer_groups"] == want.metadata["optimizer_groups"]


def test_a_resumed_finetune_does_not_need_its_pretrained_weights_again(tmp_path: Path) -> None:
    """The checkpoint holds every weight: a resume must not read model.weights (it would be
    thrown away), so a run still resumes after that file has moved, and ends as uninterrupted."""
    weights = tmp_path / "pre.safetensors"
    save_weights(build_model(tiny_cfg(tmp_path / "pre")).model.state_dict(), weights)
    overrides = [f"model.weights={weights}", "finetune.freeze_backbone=true", "train.epochs=2"]
    ref = Trainer(tiny_cfg(tmp_path / "ref", *overrides)).run()
    cfg = tiny_cfg(tmp_path / "cut", *overrides)
    with pytest.raises(Interrupted):
        Trainer(cfg, should_stop=StopAt(3)).run()
    weights.unlink()
    Trainer(cfg, resume="auto").run()
    got, want = load_checkpoint(cfg.output.dir + "/last.safetensors"), load_checkpoint(ref.last_checkpoint)
    assert_bit_identical(got.model_state, want.model_state, want.model_state)


def test_unfreeze_all_keeps_earlier_trainable_parameters_in_the_first_group() -> None:
    setup = build_model(finetune_cfg("finetune.freeze_backbone=false", 'finetune.freeze=["conv1", "bn1", "layer1"]'))
    thawed = unfreeze_all(setup)
    assert thawed == [n for n, _ in setup.model.named_parameters() if n.split(".")[0] in ("conv1", "bn1", "layer1")]
    fast, slow = setup.parameter_groups(0.1, 0.5)
    assert slow["names"] == thawed and slow["lr"] == 0.05 and slow["lr_mult"] == 0.5
    assert fast["names"][0] == "layer2.0.conv1.weight" and fast["names"][-2:] == ["fc.weight", "fc.bias"]
    assert fast["lr"] == 0.1 and setup.frozen == [] and setup.bn_eval_modules == []


# --------------------------------------------------------------------------- weights into the model


def test_the_shipped_backbone_loads_completely_and_fc_is_reinitialised_from_the_seed() -> None:
    setup = build_model(finetune_cfg())
    file = load_weights(SHIPPED)
    rep = setup.load_report
    assert rep.complete and len(rep.loaded) == len(file) == 122
    state = setup.model.state_dict()
    assert_bit_identical(state, file, backbone(file))
    assert not np.array_equal(state["fc.weight"], file["fc.weight"])  # replace_head: a fresh fc
    control = build_model(finetune_cfg("model.weights=null")).model.state_dict()
    assert_bit_identical(state, control, ["fc.weight", "fc.bias"])  # the SAME head in both arms
    kept = build_model(finetune_cfg("finetune.replace_head=false")).model.state_dict()
    assert_bit_identical(kept, file, file)


def test_a_head_mismatch_is_expected_only_with_replace_head() -> None:
    overrides = ["model.num_classes=3", "data.classes=[5, 6, 7]"]
    setup = build_model(finetune_cfg(*overrides))
    assert [k for k, *_ in setup.load_report.mismatched] == ["fc.weight", "fc.bias"]
    assert setup.model.fc.weight.shape == (3, 128)
    with pytest.raises(WeightsError, match="replace_head") as info:
        build_model(finetune_cfg(*overrides, "finetune.replace_head=false"))
    assert "fc.weight: file (5, 128) vs model (3, 128)" in str(info.value) and "fc.bias" in str(info.value)


def test_missing_tensors_are_listed_every_one(tmp_path: Path) -> None:
    file = load_weights(SHIPPED)
    dropped = [k for k in file if k.startswith("layer3.")]
    save_weights({k: v for k, v in file.items() if k not in dropped}, tmp_path / "w.safetensors")
    with pytest.raises(WeightsError) as info:
        build_model(finetune_cfg(f"model.weights={tmp_path / 'w.safetensors'}"))
    wanted = [k for k in dropped if not k.endswith("num_batches_tracked")]
    assert f"missing {len(wanted)} tensor(s)" in str(info.value)
    assert all(k in str(info.value) for k in wanted)
    # a file without BatchNorm counters (torchvision's oldest layout) loads; they stay 0
    save_weights({k: v for k, v in file.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.npz")
    setup = build_model(finetune_cfg(f"model.weights={tmp_path / 'old.npz'}"))
    assert setup.model.state_dict()["bn1.num_batches_tracked"] == 0
    assert len(setup.load_report.missing) == 20


def test_an_autotrain_checkpoint_works_as_model_weights(tmp_path: Path) -> None:
    run = Trainer(tiny_cfg(tmp_path, "train.epochs=1")).run()
    ckpt = load_checkpoint(run.last_checkpoint)
    assert ckpt.optimizer_state  # momentum buffers in the file, not in the model
    setup = build_model(tiny_cfg(tmp_path, f"model.weights={run.last_checkpoint}", "finetune.replace_head=false"))
    assert setup.load_report.complete
    assert_bit_identical(setup.model.state_dict(), ckpt.model_state, ckpt.model_state)


# --------------------------------------------------------------------------- the CLI, end to end


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The shipped finetune (pretrained) and its control (random backbone), from a folder that is
    not the checkout; and the same with bn: eval. SHORT_EPOCHS each, seconds each."""
    base = tmp_path_factory.mktemp("finetune")
    jobs = {
        "pretrained": ["finetune", "--freeze-backbone", *SHORT_EPOCHS],
        "control": ["finetune", "--set", "model.weights=null", *SHORT_EPOCHS],
        "bn_eval": ["finetune", "--set", "finetune.bn=eval", "--set", "output.dir=bn_eval", *SHORT_EPOCHS],
    }
    out = {}
    for name, args in jobs.items():
        (base / name).mkdir()
        r = run_cli_subprocess(*args, cwd=base / name, timeout=600)
        assert r.returncode == 0, f"{name}: {r.stdout}\n{r.stderr}"
        out[name] = (base / name, r)
    return out


def test_default_finetune_runs_from_any_folder_and_prints_the_setup(runs) -> None:
    folder, r = runs["pretrained"]
    assert (folder / "runs" / "finetune" / "last.safetensors").exists()
    text = r.stdout
    table = re.search(r"parameters.*?all[^\n]*", text, re.DOTALL).group(0)
    for block, total, trainable, frozen in [("conv1", "144", "0", "144"), ("layer4", "525,568", "0", "525,568"),
                                            ("fc", "645", "645", "0"), ("all", "700,533", "645", "699,888")]:
        assert re.search(rf"{block}\s*│\s*{total}\s*│\s*{trainable}\s*│\s*{frozen}\s*│", table), block
    assert "resnet18_fashion04.safetensors: loaded 122, missing 0, unexpected 0, shape mismatch 0" in text
    assert "fc re-initialised from seed 0" in text


def test_the_pretrained_backbone_beats_a_random_one_by_15_points_after_two_epochs(runs) -> None:
    # measured: 44.1 % vs 22.4 % after epoch 2, seed 0 (the converged comparison is test_pretrained.py's)
    pretrained = val_acc(runs["pretrained"][0] / "runs" / "finetune")
    control = val_acc(runs["control"][0] / "runs" / "finetune")
    assert "shape mismatch" not in runs["control"][1].stdout  # nothing was loaded
    assert pretrained >= control + 0.15, (pretrained, control)
    assert pretrained >= 0.40, pretrained


def test_frozen_tensors_are_bit_identical_after_training(runs) -> None:
    file = load_weights(SHIPPED)
    frozen_keys = list(backbone(file))
    assert any(k.endswith("num_batches_tracked") for k in frozen_keys)
    # bn: eval: parameters and running statistics (counters too) are the file's, bit for bit
    ev = load_checkpoint(runs["bn_eval"][0] / "bn_eval" / "last.safetensors").model_state
    assert_bit_identical(ev, file, frozen_keys)
    assert not np.array_equal(ev["fc.weight"], build_model(finetune_cfg()).model.state_dict()["fc.weight"])
    # bn: train (the shipped default): parameters still identical, statistics re-estimated
    tr = load_checkpoint(runs["pretrained"][0] / "runs" / "finetune" / "last.safetensors").model_state
    assert_bit_identical(tr, file, [k for k in frozen_keys if not k.endswith(BN_STATS)])
    steps = 10  # 2 epochs of 100 images in batches of 20
    assert int(tr["bn1.num_batches_tracked"]) == int(file["bn1.num_batches_tracked"]) + steps
    assert not np.array_equal(tr["layer4.1.bn2.running_var"], file["layer4.1.bn2.running_var"])


def test_finetune_options_num_classes_weights_resume_overwrite(runs, tmp_path: Path) -> None:
    folder = runs["pretrained"][0]
    again = run_cli_subprocess("finetune", "--freeze-backbone", "-q", cwd=folder)
    assert again.returncode == 2 and "--resume auto" in again.stderr and "--overwrite" in again.stderr
    done = run_cli_subprocess("finetune", "--resume", "auto", "-q", cwd=folder)
    assert done.returncode == 0 and "already finished" in done.stdout
    save_weights(load_weights(SHIPPED), tmp_path / "copy.npz")
    r = run_cli_subprocess("finetune", "--weights", str(tmp_path / "copy.npz"), "--num-classes", "3", *SHORT_EPOCHS,
                           "--set", "data.classes=[7, 8, 9]", "--set", f"output.dir={tmp_path / 'three'}",
                           "--overwrite", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "copy.npz: loaded 120, missing 0, unexpected 0, shape mismatch 2" in r.stdout
    assert "expected: fc re-initialised for 3 classes" in r.stdout
    assert load_checkpoint(tmp_path / "three" / "last.safetensors").model_state["fc.weight"].shape == (3, 128)


def test_train_reads_the_same_finetune_section(tmp_path: Path) -> None:
    r = run_cli_subprocess("train", "finetune.yaml", "--set", "finetune.freeze_backbone=false", *SHORT_EPOCHS,
                           "--set", 'finetune.freeze=["conv1", "layer1.*"]', "--set", f"output.dir={tmp_path / 'run'}",
                           cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert re.search(r"conv1\s*│\s*144\s*│\s*0\s*│\s*144\s*│", r.stdout)
    assert re.search(r"layer1\s*│\s*9,344\s*│\s*0\s*│\s*9,344\s*│", r.stdout)
    assert re.search(r"layer2\s*│\s*33,088\s*│\s*33,088\s*│\s*0\s*│", r.stdout)
    state = load_checkpoint(tmp_path / "run" / "last.safetensors").model_state
    file = load_weights(SHIPPED)
    assert state["conv1.weight"].tobytes() == file["conv1.weight"].tobytes()
    assert state["layer2.0.conv1.weight"].tobytes() != file["layer2.0.conv1.weight"].tobytes()


def test_progress_reports_the_epochs_exact_running_means(tmp_path: Path, monkeypatch) -> None:
    """What the progress bar shows after each batch is the sample-weighted running mean of the
    epoch so far (as metrics.csv's row), not a mean of per-batch means. The expected values
    are summed here, independently, from every train_step's own loss, correct count and size."""
    import autotrain.train.run as run_module
    from autotrain.train.loop import Reporter

    steps: list[tuple[float, int, int]] = []
    real_step = run_module.train_step

    def recording_step(model, optimizer, x, y, *args):
        loss_sum, correct, count, signum = real_step(model, optimizer, x, y, *args)
        assert count == len(y)  # one process: the global batch is this batch
        steps.append((loss_sum / count, correct, count))
        return loss_sum, correct, count, signum

    monkeypatch.setattr(run_module, "train_step", recording_step)

    class Recorder(Reporter):
        def __init__(self):
            self.batches, self.rows = [], []

        def on_batch_end(self, epoch, batch, loss, acc, lr):
            self.batches.append((epoch, loss, acc))

        def on_epoch_end(self, row):
            self.rows.append(row)

    rec = Recorder()
    # batch 24 over tiny's training split leaves a smaller last batch, where the two rules differ.
    Trainer(tiny_cfg(tmp_path, "train.epochs=2", "train.batch_size=24"), reporter=rec).run()
    assert len(rec.batches) == len(steps) and len(rec.rows) == 2
    per_epoch = len(steps) // 2
    assert len(steps[per_epoch - 1:per_epoch]) == 1 and steps[per_epoch - 1][2] != steps[0][2], \
        "the test needs a last batch of another size"
    for epoch, row in enumerate(rec.rows):
        done = steps[epoch * per_epoch:(epoch + 1) * per_epoch]
        shown = [b for b in rec.batches if b[0] == epoch]
        for k, (_, loss, acc) in enumerate(shown, start=1):
            seen = sum(n for _, _, n in done[:k])
            assert loss == pytest.approx(sum(l * n for l, _, n in done[:k]) / seen, rel=1e-12)
            assert acc == pytest.approx(sum(c for _, c, _ in done[:k]) / seen, rel=1e-12)
        mean_of_means = sum(l for l, _, _ in done) / len(done)
        assert row["train_loss"] == pytest.approx(shown[-1][1], rel=1e-12)
        assert row["train_acc"] == pytest.approx(shown[-1][2], rel=1e-12)
        assert abs(row["train_loss"] - mean_of_means) > 1e-9  # the wrong rule would be told apart
