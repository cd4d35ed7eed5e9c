""""A Gentle Introduction to torch.autograd", every step of it, in autotrain's API.

Run it with ``python examples/autograd_tutorial.py``. It prints what the tutorial prints and
checks each claim the tutorial makes; it exits with status 1 (and says which expectation
failed) if any of them does not hold. The checks are explicit ``raise`` statements, not
``assert``, so that ``python -O`` does not strip them.

The one deliberate difference from the tutorial: autotrain ships no pretrained weights here,
so ``at.models.resnet18()`` starts from torchvision's random initialisation instead of
``pretrained=True``. Nothing the tutorial shows depends on the weights' values.
"""

from __future__ import annotations

import os
import sys

import numpy as np

try:
    import autotrain as at
except ImportError:  # running from a source checkout without `pip install -e .`
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import autotrain as at


class ExpectationFailed(Exception):
    """A statement the tutorial makes did not hold."""


def expect(condition, what: str) -> None:
    if not condition:
        raise ExpectationFailed(what)


def section(title: str) -> None:
    print(f"\n== {title} ==")


def usage_in_autotrain() -> None:
    """1.2: one training step of ResNet-18 on a random 64x64 image."""
    section("1.2 Usage")
    model = at.models.resnet18()
    data = at.rand(1, 3, 64, 64)
    labels = at.rand(1, 1000)

    prediction = model(data)  # forward pass
    expect(prediction.shape == (1, 1000), f"prediction shape {prediction.shape}, expected (1, 1000)")
    print(f"prediction shape: {prediction.shape}")

    loss = (prediction - labels).sum()
    loss.backward()  # backward pass: every parameter's .grad is filled in
    params = list(model.parameters())
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    expect(not missing, f"parameters without a gradient after backward: {missing}")
    for name, p in model.named_parameters():
        expect(p.grad.shape == p.shape, f"{name}.grad has shape {p.grad.shape}, parameter {p.shape}")
    print(f"loss = {loss.item():.4f}; {len(params)} parameters received a .grad")

    optim = at.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)
    before = [p.data.copy() for p in params]
    optim.step()  # gradient descent
    moved = sum(not np.array_equal(b, p.data) for b, p in zip(before, params))
    # The first momentum step is p -= lr * grad exactly.
    for b, p in zip(before, params):
        expected = b - np.float32(1e-2) * p.grad.data
        expect(np.allclose(p.data, expected, rtol=1e-6, atol=1e-7), "SGD step is not p - lr * grad")
    expect(moved == len(params), f"only {moved} of {len(params)} parameters moved")
    print(f"after optim.step(): {moved} of {len(params)} parameters moved")


def differentiation_in_autograd() -> None:
    """1.3 and 1.4: Q = 3 a^3 - b^2, the scalar-only rule, and vector-Jacobian products."""
    section("1.3 Differentiation in Autograd")
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    print(a, b)
    expect(repr(a) == "tensor([2., 3.], requires_grad=True)", f"repr(a) is {a!r}")
    expect(repr(b) == "tensor([6., 4.], requires_grad=True)", f"repr(b) is {b!r}")

    Q = 3 * a ** 3 - b ** 2
    print(repr(Q))
    expect(repr(Q) == "tensor([-12.,  65.], grad_fn=<SubBackward0>)", f"repr(Q) is {Q!r}")

    try:
        Q.backward()
    except RuntimeError as err:
        print(f"RuntimeError: {err}")
        expect("grad can be implicitly created only for scalar outputs" in str(err),
               f"unexpected message for a non-scalar backward: {err}")
    else:
        raise ExpectationFailed("Q.backward() on a 2-element Q did not raise")

    section("1.4 Vector Calculus using autograd")
    external_grad = at.tensor([1., 1.])
    Q.backward(gradient=external_grad)
    print(9 * a ** 2 == a.grad)
    print(-2 * b == b.grad)
    expect(repr(9 * a ** 2 == a.grad) == "tensor([True, True])", "a.grad is not 9 a^2")
    expect(repr(-2 * b == b.grad) == "tensor([True, True])", "b.grad is not -2 b")

    # Equivalently, l = Q.sum() gives v = [1, 1]: on fresh leaves, the same gradients.
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    Q.sum().backward()
    print(9 * a ** 2 == a.grad)
    print(-2 * b == b.grad)
    expect(bool((9 * a ** 2 == a.grad).all()), "Q.sum().backward(): a.grad is not 9 a^2")
    expect(bool((-2 * b == b.grad).all()), "Q.sum().backward(): b.grad is not -2 b")


def computation_graph() -> None:
    """1.5: the DAG of Function nodes, walked from Q back to the leaves a and b."""
    section("1.5 Computation Graph")
    a = at.tensor([2., 3.], requires_grad=True)
    b = at.tensor([6., 4.], requires_grad=True)
    Q = 3 * a ** 3 - b ** 2
    names = [repr(Q.grad_fn)] + [repr(fn) for fn, _ in Q.grad_fn.next_functions]
    print("Q.grad_fn:", Q.grad_fn, "-> next_functions:", [fn for fn, _ in Q.grad_fn.next_functions])
    expect(names == ["<SubBackward0>", "<MulBackward0>", "<PowBackward0>"], f"graph nodes {names}")
    mul = Q.grad_fn.next_functions[0][0]
    leaves = [fn for fn, _ in mul.next_functions[1][0].next_functions]
    expect(len(leaves) == 1 and leaves[0] is a, "the Pow node's edge does not lead to leaf a")


def exclusion_from_the_dag() -> None:
    """1.6: requires_grad propagation, frozen parameters, finetuning the classifier, no_grad."""
    section("1.6 Exclusion from the DAG")
    x = at.rand(5, 5)
    y = at.rand(5, 5)
    z = at.rand(5, 5, requires_grad=True)
    a = x + y
    b = x + z
    print(f"Does 'a' require gradients? {a.requires_grad}")
    print(f"Does 'b' require gradients? {b.requires_grad}")
    expect(a.requires_grad is False, "x + y requires grad")
    expect(b.requires_grad is True, "x + z does not require grad")

    model = at.models.resnet18()
    for param in model.parameters():
        param.requires_grad = False
    model.fc = at.nn.Linear(512, 10)  # a new classifier, unfrozen by default
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    print(f"parameters that require grad: {trainable}")
    expect(trainable == ["fc.weight", "fc.bias"], f"trainable parameters are {trainable}")
    expect(model.state_dict()["fc.weight"].shape == (10, 512), "model.fc was not re-registered")

    optimizer = at.optim.SGD(model.fc.parameters(), lr=1e-2, momentum=0.9)
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    prediction = model(at.rand(1, 3, 64, 64))
    expect(prediction.shape == (1, 10), f"prediction shape {prediction.shape}, expected (1, 10)")
    prediction.sum().backward()
    optimizer.step()
    with_grad = [name for name, p in model.named_parameters() if p.grad is not None]
    changed = [name for name, p in model.named_parameters() if not np.array_equal(before[name], p.data)]
    print(f"parameters with a .grad: {with_grad}")
    print(f"parameters changed by optimizer.step(): {changed}")
    expect(with_grad == ["fc.weight", "fc.bias"], f"parameters with a gradient: {with_grad}")
    expect(changed == ["fc.weight", "fc.bias"], f"parameters changed: {changed}")

    with at.no_grad():
        c = x + z
        out = model.fc(at.rand(1, 512))
    print(f"Inside at.no_grad(): does 'x + z' require gradients? {c.requires_grad}")
    print(f"Inside at.no_grad(): does model.fc's output require gradients? {out.requires_grad}")
    expect(c.requires_grad is False and c.grad_fn is None, "x + z under no_grad requires grad")
    expect(out.requires_grad is False, "model.fc output under no_grad requires grad")
    expect((x + z).requires_grad is True, "grad mode was not restored after no_grad")


def main() -> int:
    at.manual_seed(0)
    try:
        usage_in_autotrain()
        differentiation_in_autograd()
        computation_graph()
        exclusion_from_the_dag()
    except ExpectationFailed as err:
        print(f"\nEXPECTATION FAILED: {err}", file=sys.stderr)
        return 1
    print("\nAll expectations of the tutorial hold.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
