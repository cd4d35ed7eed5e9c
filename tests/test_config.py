"""Tests for autotrain.config: schema rules, safe YAML loading, messages, overrides."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autotrain.config import (
    Config,
    config_from_dict,
    config_from_yaml_text,
    config_to_dict,
    config_to_yaml,
    default_config_path,
    diff_configs,
    load_config,
)
from autotrain.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHIPPED = sorted(p.name for p in CONFIGS.glob("*.yaml"))
MINIMAL = "model:\n  num_classes: 10\n"


def write(tmp_path: Path, text: str, name: str = "x.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The lines of the ConfigError that loading ``path`` must raise."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    assert info.value.exit_code == 2
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def write_one_field(tmp_path: Path, section: str, text: str) -> tuple[Path, int]:
    """A minimal valid config plus one ``key: value`` line in ``section``; returns the file and
    the line number of that line."""
    if section == "model":
        extra = "" if "num_classes" in text else "  num_classes: 10\n"
        return write(tmp_path, f"model:\n  {text}\n{extra}"), 2
    return write(tmp_path, f"{MINIMAL}{section}:\n  {text}\n"), 4


def assert_one_field_refused(tmp_path: Path, section: str, text: str, field: str, shown: str, rule: str) -> None:
    """One problem line: the file, the field, the value as shown, the rule, and the line."""
    path, line_no = write_one_field(tmp_path, section, text)
    line = only_problem(path)
    assert line.startswith(f"{path}: {field}: {shown} — "), line
    assert rule in line and line.endswith(f"(line {line_no})"), line


def only_problem(path: Path, overrides: list[str] | tuple[str, ...] = ()) -> str:
    lines = problems(path, overrides)
    assert len(lines) == 1, lines
    return lines[0]


# --- shipped configs -----------------------------------------------------------------


def test_all_expected_configs_are_shipped():
    expected = {"digits.yaml", "tiny.yaml", "mnist_idx.yaml", "imagefolder.yaml",
                "npz.yaml", "fashion_pretrain.yaml", "finetune.yaml"}
    assert expected <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_validates_and_is_found_by_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default_config_path must not depend on the cwd
    path = default_config_path(name)
    assert path.samefile(CONFIGS / name)
    assert isinstance(load_config(path), Config)


def test_default_config_path_unknown_name_lists_shipped():
    with pytest.raises(ConfigError, match=r"nope\.yaml: .*digits\.yaml"):
        default_config_path("nope.yaml")


def test_unknown_name_lists_the_installed_wheels_configs(tmp_path, monkeypatch):
    """In a wheel the configs are package data (autotrain/_configs), not a checkout folder:
    the list of shipped names must come from there."""
    import autotrain.resources as res

    (tmp_path / "_configs").mkdir()
    (tmp_path / "_configs" / "only_in_wheel.yaml").write_text(MINIMAL)
    monkeypatch.setattr(res.resources, "files", lambda package: tmp_path)
    with pytest.raises(ConfigError, match=r"nope\.yaml: .*shipped: only_in_wheel\.yaml\)"):
        default_config_path("nope.yaml")


def test_digits_config_values():
    c = load_config(CONFIGS / "digits.yaml")
    model, data = c.model, c.data
    assert (model.arch, model.stem, model.width, model.in_channels) == ("resnet18", "small", 16, 1)
    assert (model.num_classes, data.source, data.image_size, data.val_fraction) == (10, "digits", 16, 0.2)
    assert (c.optimizer.lr, c.optimizer.momentum, c.optimizer.weight_decay) == (0.05, 0.9, 5e-4)
    assert (c.schedule.name, c.train.epochs, c.train.batch_size) == ("cosine", 10, 64)
    assert (c.output.dir, c.output.keep_last) == ("runs/digits", 2)


def test_finetune_and_pretrain_configs_fit_together():
    pre = load_config(CONFIGS / "fashion_pretrain.yaml")
    fine = load_config(CONFIGS / "finetune.yaml")
    assert pre.data.classes == (0, 1, 2, 3, 4) and fine.data.classes == (5, 6, 7, 8, 9)
    assert fine.model.weights == "weights/resnet18_fashion04.safetensors"
    # bn: train and 40 epochs: the setting under which README compares with a random backbone
    assert fine.finetune.freeze_backbone and fine.finetune.bn == "train"
    assert (fine.train.epochs, fine.train.batch_size, fine.output.dir) == (40, 20, "runs/finetune")
    # the backbone shape matches; the data differ (another folder, classes and augmentation)
    assert diff_configs(pre, fine, ("model",)) == []
    assert pre.data.image_size == fine.data.image_size


def test_tiny_config_values():
    c = load_config(CONFIGS / "tiny.yaml")
    assert (c.model.width, c.data.image_size, c.train.epochs, c.train.batch_size) == (4, 8, 2, 32)
    assert (c.data.classes, c.model.num_classes, c.output.dir) == ((0, 1, 2), 3, "runs/tiny")


# --- defaults, types -----------------------------------------------------------------


def _schema_leaves(model_cls, prefix: str = ""):
    """(dotted name, declared default) of every leaf field of a config model, read from the
    schema's own field declarations (not from a loaded config)."""
    from pydantic import BaseModel

    for name, field in model_cls.model_fields.items():
        dotted = f"{prefix}{name}"
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _schema_leaves(ann, dotted + ".")
        else:
            yield dotted, field.get_default(call_default_factory=True)


def test_minimal_file_fills_every_default(tmp_path):
    c = load_config(write(tmp_path, MINIMAL))
    leaves = list(_schema_leaves(Config))
    assert len(leaves) >= 38  # every section's every key (38 today), not a sample
    for dotted, default in leaves:
        value = c
        for part in dotted.split("."):
            value = getattr(value, part)
        if dotted == "model.num_classes":
            assert value == 10  # the one key MINIMAL sets (it has no default)
        else:
            assert value == default and type(value) is type(default), dotted


def test_config_is_frozen(tmp_path):
    from pydantic import ValidationError

    c = load_config(write(tmp_path, MINIMAL))
    for section, key in (("optimizer", "lr"), ("model", "width"), ("data", "image_size")):
        with pytest.raises(ValidationError, match="frozen_instance|Instance is frozen"):
            setattr(getattr(c, section), key, 1)
    with pytest.raises(ValidationError, match="frozen_instance|Instance is frozen"):
        c.seed = 3  # type: ignore[misc]
    assert c.optimizer.lr == Config.model_fields["optimizer"].default.lr


def test_missing_num_classes(tmp_path):
    line = only_problem(write(tmp_path, "seed: 1\n"))
    assert line.startswith(f"{tmp_path / 'x.yaml'}: model.num_classes: required key missing")


@pytest.mark.parametrize("text", ["1e-2", "1.0e-2", "1E-2", "+1e-2", "0.01"])
def test_exponent_without_dot_is_a_float(tmp_path, text):
    c = load_config(write(tmp_path, f"{MINIMAL}optimizer:\n  lr: {text}\n  weight_decay: 5e-4\n"))
    assert c.optimizer.lr == 0.01 and isinstance(c.optimizer.lr, float)
    assert c.optimizer.weight_decay == 5e-4


def test_more_float_spellings(tmp_path):
    c = load_config(write(tmp_path, f"{MINIMAL}optimizer:\n  lr: 1E3\n  weight_decay: .5e-3\n"))
    assert (c.optimizer.lr, c.optimizer.weight_decay) == (1000.0, 0.0005)


def test_int_is_accepted_for_a_float_field(tmp_path):
    c = load_config(write(tmp_path, f"{MINIMAL}optimizer:\n  lr: 1\n"))
    assert c.optimizer.lr == 1.0 and isinstance(c.optimizer.lr, float)


@pytest.mark.parametrize(
    "section, text, field, shown, rule",
    [
        ("model", "num_classes: true", "model.num_classes", "True", "expected an integer"),
        ("model", "num_classes: 10.5", "model.num_classes", "10.5", "expected an integer"),
        ("model", 'num_classes: "3"', "model.num_classes", "'3'", "expected an integer"),
        ("optimizer", 'lr: "abc"', "optimizer.lr", "'abc'", "expected a number"),
        ("optimizer", 'lr: "0.1"', "optimizer.lr", "'0.1'", "expected a number"),
        ("optimizer", "momentum: yes", "optimizer.momentum", "True", "expected a number"),
        ("finetune", "freeze: off", "finetune.freeze", "False", "expected a list"),
        ("data", "augment: {hflip: 1}", "data.augment.hflip", "1", "expected true or false"),
        ("output", "dir: 2024", "output.dir", "2024", "expected a string"),
        ("schedule", "name: cosin", "schedule.name", "'cosin'", "did you mean 'cosine'?"),
        ("model", "arch: resnet50", "model.arch", "'resnet50'", "must be 'resnet18' (the only"),
    ],
)
def test_wrong_types_are_refused(tmp_path, section, text, field, shown, rule):
    assert_one_field_refused(tmp_path, section, text, field, shown, rule)


def test_yaml11_on_off_are_booleans_where_booleans_are_expected(tmp_path):
    c = load_config(write(tmp_path, f"{MINIMAL}optimizer:\n  nesterov: on\ndata:\n  augment: {{hflip: yes}}\n"))
    assert c.optimizer.nesterov is True and c.data.augment.hflip is True


@pytest.mark.parametrize(
    "section, text, field, shown, rule",
    [
        ("optimizer", "lr: 0", "optimizer.lr", "0", "must be > 0"),
        ("optimizer", "lr: 0.0", "optimizer.lr", "0.0", "must be > 0"),
        ("optimizer", "lr: -0.1", "optimizer.lr", "-0.1", "must be > 0"),
        ("optimizer", "lr: .inf", "optimizer.lr", "inf", "finite"),
        ("optimizer", "lr: .nan", "optimizer.lr", "nan", "finite"),
        ("optimizer", "momentum: 1.5", "optimizer.momentum", "1.5", "must be < 1"),
        ("optimizer", "dampening: 2", "optimizer.dampening", "2", "must be <= 1"),
        ("model", "num_classes: 0", "model.num_classes", "0", "must be >= 1"),
        ("data", "image_size: 2", "data.image_size", "2", "must be >= 4"),
        ("data", "val_fraction: 1", "data.val_fraction", "1", "must be < 1"),
        ("data", "classes: []", "data.classes", "[]", "must not be empty"),
        ("data", "classes: [1, 2, 1]", "data.classes", "[1, 2, 1]", "duplicate entries: 1"),
        ("schedule", "gamma: 0", "schedule.gamma", "0", "must be > 0"),
        ("train", "epochs: 0", "train.epochs", "0", "must be >= 1"),
        ("output", "keep_last: -1", "output.keep_last", "-1", "must be >= 0"),
        ("finetune", "backbone_lr_mult: 0", "finetune.backbone_lr_mult", "0", "must be > 0"),
    ],
)
def test_out_of_range_values(tmp_path, section, text, field, shown, rule):
    assert_one_field_refused(tmp_path, section, text, field, shown, rule)


# --- YAML syntax and safety ----------------------------------------------------------


def test_duplicate_key_names_path_and_both_lines(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: 10\n  width: 8\n  stem: small\n  width: 16\n")
    line = only_problem(path)
    assert line == f"{path}: model.width: duplicate key 'width' (lines 3 and 5)"


def test_duplicate_section(tmp_path):
    path = write(tmp_path, f"{MINIMAL}train:\n  epochs: 3\ntrain:\n  epochs: 4\n")
    assert "train: duplicate key 'train' (lines 3 and 5)" in only_problem(path)


def test_tab_indentation_names_file_line_col(tmp_path):
    path = write(tmp_path, "model:\n\tnum_classes: 10\n")
    line = only_problem(path)
    assert line.startswith(f"{path}:2:1: ") and "tab" in line


def test_unclosed_bracket_names_file_line_col(tmp_path):
    path = write(tmp_path, f"{MINIMAL}data:\n  classes: [1, 2\n")
    line = only_problem(path)
    assert line.startswith(f"{path}:5:1: expected ',' or ']'"), line
    assert "line 4, column 12" in line  # where the bracket opened


def test_mapping_values_not_allowed(tmp_path):
    path = write(tmp_path, "model: num_classes: 10\n")
    assert only_problem(path) == f"{path}:1:19: mapping values are not allowed here"


@pytest.mark.parametrize("text", ["", "\n\n", "# just a comment\n"])
def test_empty_file(tmp_path, text):
    path = write(tmp_path, text)
    assert only_problem(path) == f"{path}: is empty"


@pytest.mark.parametrize("text", ["- model\n- data\n", "42\n", "hello\n", "~\n"])
def test_top_level_must_be_a_mapping(tmp_path, text):
    path = write(tmp_path, text)
    assert only_problem(path).startswith(f"{path}: top level must be a mapping")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    assert only_problem(path) == f"{path}: no such file"


def test_directory_is_not_a_config(tmp_path):
    assert "is a directory" in only_problem(tmp_path)


def test_python_tag_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sentinel = tmp_path / "SENTINEL"
    path = write(tmp_path, f'{MINIMAL}seed: !!python/object/apply:os.system ["touch {sentinel}"]\n')
    line = only_problem(path)
    assert line.startswith(f"{path}:3:7: could not determine a constructor"), line
    assert not sentinel.exists()


def test_aliases_are_refused(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: &n 10\n  width: *n\n")
    assert only_problem(path).startswith(f"{path}:3:10: aliases")


def test_empty_section_means_defaults(tmp_path):
    c = load_config(write(tmp_path, f"{MINIMAL}finetune:\n  # nothing set\noptimizer:\n"))
    # both empty sections, and every section the file leaves out, hold their declared defaults
    for section in ("finetune", "optimizer", "schedule", "train", "data", "output"):
        assert getattr(c, section) == Config.model_fields[section].default, section


# --- unknown keys and many problems ---------------------------------------------------


def test_unknown_key_did_you_mean(tmp_path):
    path = write(tmp_path, "model:\n  num_clases: 10\n  num_classes: 10\n")
    assert only_problem(path) == (
        f"{path}: model.num_clases: unknown key (did you mean 'num_classes'?) (line 2)"
    )


def test_unknown_section_did_you_mean(tmp_path):
    path = write(tmp_path, f"{MINIMAL}optimiser:\n  lr: 0.1\n")
    assert "optimiser: unknown key (did you mean 'optimizer'?)" in only_problem(path)


def test_key_in_the_wrong_section_is_pointed_to(tmp_path):
    path = write(tmp_path, f"{MINIMAL}data:\n  hflip: true\n")
    assert "data.hflip: unknown key (did you mean 'data.augment.hflip'?)" in only_problem(path)


def test_several_problems_give_several_lines(tmp_path):
    path = write(tmp_path, (
        "model:\n  num_classes: 0\n  stem: tiny\n"
        "optimizer:\n  lr: abc\n  momentum: yes\n"
        "train:\n  epoch: 3\n"
    ))
    lines = problems(path)
    assert len(lines) == 5, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    for field in ["model.num_classes: 0", "model.stem: 'tiny'", "optimizer.lr: 'abc'",
                  "optimizer.momentum: True", "train.epoch: unknown key (did you mean 'epochs'?)"]:
        assert any(field in line for line in lines), (field, lines)


def test_duplicates_and_validation_problems_are_reported_together(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: 10\n  num_classes: -1\n")
    lines = problems(path)
    assert len(lines) == 2 and "duplicate key" in lines[0] and "model.num_classes: -1" in lines[1]


# --- cross-field rules ----------------------------------------------------------------


@pytest.mark.parametrize("extra", ["  momentum: 0\n", "  dampening: 0.1\n"])
def test_nesterov_needs_momentum_and_no_dampening(tmp_path, extra):
    path = write(tmp_path, f"{MINIMAL}optimizer:\n  nesterov: true\n{extra}")
    line = only_problem(path)
    assert line.startswith(f"{path}: optimizer.nesterov: True — requires momentum > 0"), line


def test_nesterov_with_momentum_is_fine(tmp_path):
    assert load_config(write(tmp_path, f"{MINIMAL}optimizer:\n  nesterov: true\n")).optimizer.nesterov


@pytest.mark.parametrize("warmup, ok", [(2, True), (3, False), (4, False)])
def test_warmup_must_be_shorter_than_training(tmp_path, warmup, ok):
    path = write(tmp_path, f"{MINIMAL}schedule:\n  warmup_epochs: {warmup}\ntrain:\n  epochs: 3\n")
    if ok:
        assert load_config(path).schedule.warmup_epochs == warmup
    else:
        line = only_problem(path)
        assert line.startswith(f"{path}: schedule.warmup_epochs: {warmup} — must be < train.epochs (3)")


def test_path_rules_per_source(tmp_path):
    digits = write(tmp_path, f"{MINIMAL}data:\n  path: somewhere\n", "d.yaml")
    assert "data.path: 'somewhere' — must be null for source 'digits'" in only_problem(digits)
    idx = write(tmp_path, f"{MINIMAL}data:\n  source: idx\n", "i.yaml")
    assert only_problem(idx).startswith(f"{idx}: data.path: None — is required for source 'idx'")


def test_num_classes_must_match_classes(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: 4\ndata:\n  classes: [0, 1, 2]\n")
    assert "model.num_classes: 4 — must equal the number of data.classes (3)" in only_problem(path)


# --- overrides ------------------------------------------------------------------------


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, MINIMAL)
    c = load_config(path, ["optimizer.lr=1e-2", "model.weights=w.safetensors",
                           "finetune.freeze=[layer1.*, conv1]", "data.augment.hflip=true"])
    assert c.optimizer.lr == 0.01 and c.model.weights == "w.safetensors"
    assert c.finetune.freeze == ("layer1.*", "conv1") and c.data.augment.hflip is True
    assert load_config(path, ["model.weights=w", "model.weights=null"]).model.weights is None


def test_bad_override_value_names_the_override(tmp_path):
    path = write(tmp_path, MINIMAL)
    line = only_problem(path, ["optimizer.lr=abc"])
    assert line == "--set optimizer.lr=abc: optimizer.lr: 'abc' — expected a number"


def test_override_unknown_path_did_you_mean(tmp_path):
    path = write(tmp_path, MINIMAL)
    assert only_problem(path, ["optimizer.lrr=0.1"]) == (
        "--set optimizer.lrr=0.1: optimizer.lrr: unknown key (did you mean 'lr'?)"
    )
    assert "did you mean 'optimizer'?" in only_problem(path, ["optimiser.lr=0.1"])


@pytest.mark.parametrize("override, words", [
    ("optimizer.lr", "expected dotted.key=value"),
    ("=3", "expected dotted.key=value"),
    ("optimizer.lr.x=1", "optimizer.lr is a value, not a section"),
    ("data.classes=[1, 2", "value is not valid YAML"),
])
def test_malformed_overrides(tmp_path, override, words):
    line = only_problem(write(tmp_path, MINIMAL), [override])
    assert line.startswith(f"--set {override}: ") and words in line


def test_override_problems_and_file_problems_together(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: 10\n  widht: 3\n")
    lines = problems(path, ["train.epochs=0"])
    assert len(lines) == 2
    assert any(line.startswith(f"{path}: model.widht") for line in lines)
    assert "--set train.epochs=0: train.epochs: 0 — must be >= 1" in lines


# --- serialising and comparing --------------------------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_round_trip_through_yaml_text(name):
    c = load_config(CONFIGS / name)
    text = config_to_yaml(c)
    assert config_from_yaml_text(text) == c
    assert config_from_dict(config_to_dict(c)) == c


def test_effective_config_order_and_content(tmp_path):
    c = load_config(write(tmp_path, MINIMAL))
    d = config_to_dict(c)
    assert list(d) == ["seed", "model", "data", "optimizer", "schedule", "train", "output", "finetune", "distributed"]
    assert list(d["model"]) == ["arch", "num_classes", "in_channels", "width", "stem", "weights"]
    assert d["finetune"]["freeze"] == []


def test_strings_that_look_like_other_types_round_trip(tmp_path):
    path = write(tmp_path, "model:\n  num_classes: 2\n  weights: 'yes'\noutput:\n  dir: '1e3'\n")
    c = load_config(path, ["data.classes=['7', 'null']"])
    assert c.output.dir == "1e3" and c.model.weights == "yes" and c.data.classes == ("7", "null")
    assert config_from_yaml_text(config_to_yaml(c)) == c


def test_checkpoint_text_errors_name_the_source():
    with pytest.raises(ConfigError) as info:
        config_from_yaml_text("model: {num_classes: 0}\n", source="run/ckpt.safetensors")
    assert info.value.problems[0].startswith("run/ckpt.safetensors: model.num_classes: 0 — ")


def test_config_from_dict_refuses_bad_values():
    with pytest.raises(ConfigError, match=r"<dict>: optimizer.lr: '0.1' — expected a number"):
        config_from_dict({"model": {"num_classes": 3}, "optimizer": {"lr": "0.1"}})


def test_diff_configs(tmp_path):
    base = load_config(write(tmp_path, MINIMAL))
    other = load_config(write(tmp_path, MINIMAL), [
        "model.width=32", "model.weights=pre.safetensors", "data.augment.hflip=true",
        "optimizer.lr=0.1"])
    assert diff_configs(base, base) == []
    assert diff_configs(base, other) == ["model.width", "data.augment.hflip"]
    assert diff_configs(base, other, sections=("optimizer",)) == ["optimizer.lr"]
    assert "model.weights" not in diff_configs(base, other, sections=("model",))


# --- properties -----------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=5e-324, max_value=1e300, allow_nan=False, allow_infinity=False))
def test_any_positive_float_spelling_reads_back_exactly(tmp_path_factory, x):
    path = tmp_path_factory.mktemp("f") / "x.yaml"
    path.write_text(MINIMAL)
    for spelling in (repr(x), f"{x:e}", f"{x:E}"):
        lr = load_config(path, [f"optimizer.lr={spelling}"]).optimizer.lr
        assert lr == float(spelling) and math.isfinite(lr)


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=30))
def test_any_output_dir_string_round_trips(directory):
    c = config_from_dict({"model": {"num_classes": 2}, "output": {"dir": directory}})
    assert config_from_yaml_text(config_to_yaml(c)).output.dir == directory
