"""The backward graph of a tensor as Graphviz DOT (the tutorial's section 1.5 picture).

Nodes are backward functions (``SubBackward0``, ...) and leaf tensors with their shapes;
leaves that require grad are filled light blue, as torchviz draws them. Edges point in the
direction of the forward pass (input -> operation), as in the tutorial's figure. The walk is
iterative, so a deep graph does not hit Python's recursion limit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .autograd.function import Function
from .autograd.tensor import Tensor


def _shape(shape) -> str:
    return str(tuple(shape))


def to_dot(output: Tensor, names: dict | None = None, output_name: str = "output") -> str:
    """DOT source for the graph that produced ``output``.

    ``names`` maps leaf tensors (by identity) to labels such as "a" or "fc.weight".
    """
    labels = {id(t): n for t, n in (names or {}).items()} if isinstance(names, dict) else {}
    lines = ["digraph autograd {", '  rankdir=BT;', '  node [fontname="Helvetica", fontsize=11];']
    ids: dict[int, str] = {}

    def node_id(obj) -> str:
        if id(obj) not in ids:
            ids[id(obj)] = f"n{len(ids)}"
        return ids[id(obj)]

    out_id = node_id(output)
    lines.append(f'  {out_id} [label="{output_name}\\n{_shape(output.shape)}", shape=box, style=filled, fillcolor="darkolivegreen1"];')
    if output.grad_fn is None:
        lines.append("}")
        return "\n".join(lines)
    lines.append(f"  {node_id(output.grad_fn)} -> {out_id};")
    seen = set()
    stack = [output.grad_fn]
    while stack:
        fn = stack.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        lines.append(f'  {node_id(fn)} [label="{fn.name()}", shape=box];')
        for parent in fn.parents:
            if parent is None:
                continue
            if isinstance(parent, Function):
                stack.append(parent)
            elif id(parent) not in seen:
                seen.add(id(parent))
                label = labels.get(id(parent), "")
                text = f"{label}\\n{_shape(parent.shape)}" if label else _shape(parent.shape)
                lines.append(f'  {node_id(parent)} [label="{text}", style=filled, fillcolor="lightblue"];')
            lines.append(f"  {node_id(parent)} -> {node_id(fn)};")
    lines.append("}")
    return "\n".join(lines)


def render(dot_source: str, out_path: Path) -> Path:
    """Write ``out_path``: DOT text for .dot/.gv, else an image rendered by Graphviz's ``dot``.

    Raises FileNotFoundError when an image is asked for and ``dot`` is not installed.
    """
    out_path = Path(out_path)
    fmt = out_path.suffix.lstrip(".").lower()
    if fmt in ("dot", "gv", ""):
        out_path.write_text(dot_source + "\n")
        return out_path
    exe = shutil.which("dot")
    if exe is None:
        raise FileNotFoundError("Graphviz 'dot' is not installed (apt-get install graphviz, or brew install graphviz)")
    subprocess.run([exe, f"-T{fmt}", "-o", str(out_path)], input=dot_source.encode(), check=True)
    return out_path
