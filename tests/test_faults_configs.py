"""Broken and hostile configs through ``autotrain train``: exit 2, one ``error:`` line per
problem naming the file (with line/column or the dotted field), and nothing created: the
working folder holds only the config afterwards (no output folder, no sentinel from a
``!!python`` tag). ``lr: 1e-2`` is the control: a number, accepted.

tests/test_config.py checks the loader's messages one by one; this checks the command.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fault_helpers import TINY, run_forked, tree

SENTINEL = "CONFIG_RAN_CODE"
TINY_TEXT = TINY.read_text()


def tiny_with(old: str, new: str) -> str:
    assert TINY_TEXT.count(old) == 1, old
    return TINY_TEXT.replace(old, new)


# name -> (config text, fragments that the single error line must hold)
CASES: dict[str, tuple[str, list[str]]] = {
    "tab": ("model:\n\tnum_classes: 3\n", [":2:1:", "tab"]),
    "unclosed_bracket": (tiny_with("classes: [0, 1, 2]", "classes: [0, 1, 2"), ["expected ',' or ']'"]),
    "empty": ("", ["is empty"]),
    "only_comments": ("# nothing here\n", ["is empty"]),
    "top_level_list": ("- model\n- data\n", ["top level must be a mapping"]),
    "unknown_key": (tiny_with("  width: 4 ", "  colour: red\n  width: 4 "), ["model.colour: unknown key"]),
    "unknown_section": (TINY_TEXT + "extras:\n  a: 1\n", ["extras", "unknown"]),
    "duplicate_key": (tiny_with("  momentum: 0.9\n", "  momentum: 0.9\n  momentum: 0.8\n"),
                      ["optimizer.momentum: duplicate key 'momentum'"]),
    "lr_abc": (tiny_with("lr: 0.05", "lr: abc"), ["optimizer.lr: 'abc'", "expected a number"]),
    "lr_negative": (tiny_with("lr: 0.05", "lr: -0.1"), ["optimizer.lr: -0.1", "must be > 0", "(line 20)"]),
    "lr_zero": (tiny_with("lr: 0.05", "lr: 0"), ["optimizer.lr: 0 ", "must be > 0"]),
    "lr_inf": (tiny_with("lr: 0.05", "lr: .inf"), ["optimizer.lr", "finite"]),
    "lr_nan": (tiny_with("lr: 0.05", "lr: .nan"), ["optimizer.lr", "finite"]),
    "momentum_1_5": (tiny_with("momentum: 0.9", "momentum: 1.5"), ["optimizer.momentum: 1.5", "must be < 1"]),
    "num_classes_0": (tiny_with("num_classes: 3 ", "num_classes: 0 "), ["model.num_classes: 0", ">= 1"]),
    "num_classes_10_5": (tiny_with("num_classes: 3 ", "num_classes: 10.5 "),
                         ["model.num_classes: 10.5", "expected an integer"]),
    "num_classes_yes": (tiny_with("num_classes: 3 ", "num_classes: yes "),
                        ["model.num_classes", "expected an integer", "booleans"]),
    "freeze_off": (TINY_TEXT + "finetune:\n  freeze: off\n", ["finetune.freeze", "expected a list", "booleans"]),
    "python_tag": (tiny_with("seed: 0", f'seed: !!python/object/apply:os.system ["touch {SENTINEL}"]'),
                   ["python/object/apply:os.system"]),
    "python_tag_section": (f'model: !!python/object/apply:os.system ["touch {SENTINEL}"]\n',
                           ["python/object/apply:os.system"]),
}
MULTI = {  # cases that are two problems, hence two lines
    "misspelt_key": (tiny_with("num_classes: 3 ", "num_clases: 3 "),
                     [["model.num_clases: unknown key", "did you mean 'num_classes'"],
                      ["model.num_classes: required key missing"]]),
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
    jobs["set lr=abc"] = {"args": ["train", str(TINY), "--set", "output.dir=out", "--set", "optimizer.lr=abc"],
                          "cwd": base / "lr_zero"}
    return base, texts, run_forked(jobs)


def assert_nothing_created(cwd: Path, text: str) -> None:
    assert tree(cwd) == {"config.yaml": text.encode()}, sorted(tree(cwd))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_config_exits_2_with_one_line_and_creates_nothing(name: str, outcome) -> None:
    base, texts, results = outcome
    result = results[name]
    assert result.returncode == 2, result.explain()
    assert len(result.errors) == 1 and result.only_errors_on_stderr, result.explain()
    line = result.errors[0]
    assert line.startswith("error: config.yaml") and all(f in line for f in CASES[name][1]), line
    assert_nothing_created(base / name, texts[name])


@pytest.mark.parametrize("name", sorted(MULTI))
def test_two_problems_give_two_lines(name: str, outcome) -> None:
    base, texts, results = outcome
    result = results[name]
    assert result.returncode == 2, result.explain()
    assert len(result.errors) == len(MULTI[name][1]) and result.only_errors_on_stderr, result.explain()
    for fragments in MULTI[name][1]:
        assert any(line.startswith("error: config.yaml") and all(f in line for f in fragments)
                   for line in result.errors), (fragments, result.errors)
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
    assert not (outcome[0] / "lr_zero" / "out").exists()
