"""Broken and hostile configs through ``autotrain train``: exit 2, one ``error:`` line per
problem naming the file (with line/column or the dotted field), and nothing created: the
working folder holds only the config afterwards (no output folder, no sentinel from a
``!!python`` tag). ``lr: 1e-2`` is the control: a number, accepted.

tests/test_config.py checks the loader's messages one by one; this checks the command.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fault_helpers import TINY, run_forked, tree

SENTINEL = "CONFIG_RAN_CODE"
TINY_TEXT = TINY.read_text()


def tiny_with(old: str, new: str) -> str:
    assert TINY_TEXT.count(old) == 1, old
    return TINY_TEXT.replace(old, new)


# name -> (config text, the exact error line after "error: ")
CASES: dict[str, tuple[str, str]] = {
    "tab": ("model:\n\tnum_classes: 3\n",
            "config.yaml:2:1: found character '\\t' that cannot start any token (indent with spaces: YAML does not allow tabs)"),
    "unclosed_bracket": (tiny_with("classes: [0, 1, 2]", "classes: [0, 1, 2"),
                         "config.yaml:19:1: expected ',' or ']', but got '<scalar>' (while parsing a flow sequence at line 17, column 12)"),
    "empty": ("", "config.yaml: is empty"),
    "only_comments": ("# nothing here\n", "config.yaml: is empty"),
    "top_level_list": ("- model\n- data\n", "config.yaml: top level must be a mapping of sections, not a list"),
    "unknown_key": (tiny_with("  width: 4 ", "  colour: red\n  width: 4 "),
                    "config.yaml: model.colour: unknown key (valid keys: arch, num_classes, in_channels, width, stem, weights) (line 10)"),
    "unknown_section": (TINY_TEXT + "extras:\n  a: 1\n",
                        "config.yaml: extras: unknown key (valid keys: seed, model, data, optimizer, schedule, train, output, finetune, distributed) (line 34)"),
    "duplicate_key": (tiny_with("  momentum: 0.9\n", "  momentum: 0.9\n  momentum: 0.8\n"),
                      "config.yaml: optimizer.momentum: duplicate key 'momentum' (lines 21 and 22)"),
    "lr_abc": (tiny_with("lr: 0.05", "lr: abc"), "config.yaml: optimizer.lr: 'abc' — expected a number (line 20)"),
    "lr_negative": (tiny_with("lr: 0.05", "lr: -0.1"), "config.yaml: optimizer.lr: -0.1 — must be > 0 (line 20)"),
    "lr_zero": (tiny_with("lr: 0.05", "lr: 0"), "config.yaml: optimizer.lr: 0 — must be > 0 (line 20)"),
    "lr_inf": (tiny_with("lr: 0.05", "lr: .inf"), "config.yaml: optimizer.lr: inf — must be a finite number (line 20)"),
    "lr_nan": (tiny_with("lr: 0.05", "lr: .nan"), "config.yaml: optimizer.lr: nan — must be a finite number (line 20)"),
    "momentum_1_5": (tiny_with("momentum: 0.9", "momentum: 1.5"),
                     "config.yaml: optimizer.momentum: 1.5 — must be < 1 (line 21)"),
    "num_classes_0": (tiny_with("num_classes: 3 ", "num_classes: 0 "),
                      "config.yaml: model.num_classes: 0 — must be >= 1 (line 8)"),
    "num_classes_10_5": (tiny_with("num_classes: 3 ", "num_classes: 10.5 "),
                         "config.yaml: model.num_classes: 10.5 — expected an integer (line 8)"),
    "num_classes_yes": (tiny_with("num_classes: 3 ", "num_classes: yes "),
                        "config.yaml: model.num_classes: True — expected an integer (YAML reads "
                        "true/false/yes/no/on/off as booleans) (line 8)"),
    "freeze_off": (TINY_TEXT + "finetune:\n  freeze: off\n",
                   "config.yaml: finetune.freeze: False — expected a list (YAML reads true/false/yes/no/on/off "
                   "as booleans) (line 35)"),
    "python_tag": (tiny_with("seed: 0", f'seed: !!python/object/apply:os.system ["touch {SENTINEL}"]'),
                   "config.yaml:5:7: could not determine a constructor for the tag "
                   "'tag:yaml.org,2002:python/object/apply:os.system'"),
    "python_tag_section": (f'model: !!python/object/apply:os.system ["touch {SENTINEL}"]\n',
                           "config.yaml:1:8: could not determine a constructor for the tag "
                           "'tag:yaml.org,2002:python/object/apply:os.system'"),
}
MULTI = {  # cases that are two problems, hence two lines, in this order
    "misspelt_key": (tiny_with("num_classes: 3 ", "num_clases: 3 "),
                     ["config.yaml: model.num_classes: required key missing (line 8)",
                      "config.yaml: model.num_clases: unknown key (did you mean 'num_classes'?) (line 8)"]),
}


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    base = tmp_path_factory.mktemp("configs")
    jobs = {}
    texts = {**{k: v[0] for k, v in CASES.items()}, **{k: v[0] for k, v in MULTI.items()},
             "lr_1e-2": tiny_with("lr: 0.05", "lr: 1e-2")}
    for name, text in texts.items():
        cwd = base / name
        cwd.mkdir()
        (cwd / "config.yaml").write_text(text)
        jobs[name] = {"args": ["train", "config.yaml", "--set", "output.dir=out", "-q"], "cwd": cwd}
    jobs["show lr_1e-2"] = {"args": ["config", "show", "config.yaml"], "cwd": base / "lr_1e-2"}
    (base / "set_lr_abc").mkdir()  # a folder of its own: no other job's files to confuse the check
    jobs["set lr=abc"] = {"args": ["train", str(TINY), "--set", "output.dir=out", "--set", "optimizer.lr=abc"],
                          "cwd": base / "set_lr_abc"}
    return base, texts, run_forked(jobs)


def assert_nothing_created(cwd: Path, text: str) -> None:
    assert tree(cwd) == {"config.yaml": text.encode()}, sorted(tree(cwd))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_exits_2_with_one_line_and_creates_nothing(name: str, outcome) -> None:
    base, texts, results = outcome
    result = results[name]
    assert result.returncode == 2, result.explain()
    assert len(result.errors) == 1 and result.only_errors_on_stderr, result.explain()
    assert result.errors == [f"error: {CASES[name][1]}"]
    assert_nothing_created(base / name, texts[name])


@pytest.mark.parametrize("name", sorted(MULTI))
def test_two_problems_give_two_lines(name: str, outcome) -> None:
    base, texts, results = outcome
    result = results[name]
    assert result.returncode == 2, result.explain()
    assert result.only_errors_on_stderr, result.explain()
    assert result.errors == [f"error: {line}" for line in MULTI[name][1]]
    assert_nothing_created(base / name, texts[name])


def test_python_tags_run_no_code(outcome) -> None:
    base, _, _ = outcome
    assert not list(base.rglob(SENTINEL)) and not Path(SENTINEL).exists()


def test_exponent_without_a_dot_is_a_number(outcome) -> None:
    base, _, results = outcome
    shown = results["show lr_1e-2"]
    assert shown.returncode == 0 and "  lr: 0.01\n" in shown.stdout, shown.explain()
    trained = results["lr_1e-2"]
    assert trained.returncode == 0, trained.explain()
    assert (base / "lr_1e-2" / "out" / "last.safetensors").exists()


def test_a_bad_override_names_the_override(outcome) -> None:
    result = outcome[2]["set lr=abc"]
    assert result.returncode == 2 and len(result.errors) == 1, result.explain()
    assert result.errors[0].startswith("error: --set optimizer.lr=abc: "), result.errors
    assert sorted(os.listdir(outcome[0] / "set_lr_abc")) == []
