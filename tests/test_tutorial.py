"""examples/autograd_tutorial.py runs the whole tutorial and checks its claims; run it as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "autograd_tutorial.py"


def run(args, cwd):
    # The checkout under test comes first, even where another copy of autotrain is installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    return run([str(EXAMPLE)], cwd=tmp_path_factory.mktemp("elsewhere"))


def test_tutorial_exits_zero(tutorial):
    assert tutorial.returncode == 0, tutorial.stdout + tutorial.stderr
    assert "All expectations of the tutorial hold." in tutorial.stdout


def test_tutorial_prints_what_the_tutorial_prints(tutorial):
    lines = tutorial.stdout.splitlines()
    expected_in_order = [
        "after optim.step(): 62 of 62 parameters moved",
        "tensor([2., 3.], requires_grad=True) tensor([6., 4.], requires_grad=True)",
        "tensor([-12.,  65.], grad_fn=<SubBackward0>)",
        "RuntimeError: grad can be implicitly created only for scalar outputs",
        "tensor([True, True])",
        "tensor([True, True])",
        "tensor([True, True])",
        "tensor([True, True])",
        "Does 'a' require gradients? False",
        "Does 'b' require gradients? True",
        "parameters that require grad: ['fc.weight', 'fc.bias']",
        "parameters changed by optimizer.step(): ['fc.weight', 'fc.bias']",
        "Inside at.no_grad(): does 'x + z' require gradients? False",
        "Inside at.no_grad(): does model.fc's output require gradients? False",
    ]
    pos = 0
    for want in expected_in_order:
        assert want in lines[pos:], f"missing (in order): {want!r}\n{tutorial.stdout}"
        pos = lines.index(want, pos) + 1
    assert "prediction shape: (1, 1000)" in lines
    assert tutorial.stderr.strip() == "", tutorial.stderr


SABOTAGE = """
import runpy, sys
import autotrain.autograd.ops as ops

def wrong_backward(ctx, g):          # d(a**n)/da with the factor n dropped
    (a,) = ctx.saved
    return (g * a ** (ctx.exponent - 1),)

ops.Pow.backward = staticmethod(wrong_backward)
sys.argv = [{path!r}]
runpy.run_path({path!r}, run_name="__main__")
"""


@pytest.mark.parametrize("optimize", [False, True], ids=["plain", "python-O"])
def test_tutorial_fails_when_autograd_is_wrong(optimize):
    # The checks are explicit raises, so they also hold under python -O (which strips asserts).
    args = (["-O"] if optimize else []) + ["-c", SABOTAGE.format(path=str(EXAMPLE))]
    result = run(args, cwd=ROOT)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "EXPECTATION FAILED" in result.stderr
    assert "All expectations of the tutorial hold." not in result.stdout
