"""The ONNX graph of an autotrain ResNet-18 in eval mode, built with the ``onnx`` helper API.

Graph contract (what deployers rely on):

* input ``images``: float32 NCHW ``[batch, in_channels, image_size, image_size]``, where
  ``batch`` is a fixed number or the symbolic dimension ``"batch"``; normalised pixels
  ``(x - mean) / std`` as in training, or, with ``raw_pixels``, pixels in 0..1 which the
  graph normalises first (``Sub`` the mean, ``Mul`` by float32(1/std): the very operations
  of autotrain's ``normalize_own``, so the figures match bit for bit);
* output ``logits``: float32 ``[batch, num_classes]``;
* nodes: Conv, BatchNormalization (running statistics, eval mode; not folded, so the
  weights stay those of the checkpoint and runtimes fold them themselves), Relu, MaxPool
  (imagenet stem), Add, GlobalAveragePool, Flatten, Gemm. Initializers carry the
  state_dict names (``layer1.0.conv1.weight``), node outputs the module names;
* ``metadata_props``: strings given by the caller (class names, normalisation, config...).

``onnx`` is an optional dependency (``autotrain[onnx]``): :func:`import_onnx` turns its
absence into a ConfigError with the install hint. The module reads modules' arrays only;
it never runs the network.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from autotrain import nn
from autotrain.errors import ConfigError
from autotrain.models.resnet import BasicBlock, ResNet

DEFAULT_OPSET = 17
# Every op used has had its present semantics since opset 11 (Gemm's optional C, Pad-free
# pads attributes); the newest is whatever the installed onnx knows.
MIN_OPSET = 11
INPUT, OUTPUT = "images", "logits"
BATCH_DIM = "batch"
INSTALL_HINT = "pip install 'autotrain[onnx]'"


def import_onnx():
    """The ``onnx`` module; ConfigError (exit 2) with the install hint when it is missing."""
    try:
        import onnx
        from onnx import numpy_helper  # noqa: F401  (a submodule the builder needs)
    except ImportError as err:
        raise ConfigError(f"ONNX export needs the onnx package ({err}): {INSTALL_HINT}") from None
    return onnx


def check_opset(opset: int) -> None:
    """ConfigError unless the installed onnx can write ``opset`` and every op used exists in it."""
    newest = import_onnx().defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise ConfigError(f"--opset {opset}: must be between {MIN_OPSET} and {newest} (the installed onnx's newest)")


class _Graph:
    """Nodes and initializers in the order they are added; each node's output is its name."""

    def __init__(self, onnx):
        self.helper, self.numpy_helper = onnx.helper, onnx.numpy_helper
        self.nodes, self.initializers = [], []

    def constant(self, name: str, array: np.ndarray) -> str:
        # conv weights are channels-last views; ONNX stores C-order bytes
        self.initializers.append(self.numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs) -> str:
        self.nodes.append(self.helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, conv: nn.Conv2d, name: str) -> str:
        inputs = [x, self.constant(f"{name}.weight", conv.weight.data)]
        if conv.bias is not None:
            inputs.append(self.constant(f"{name}.bias", conv.bias.data))
        (ph, pw) = conv.padding
        return self.node("Conv", inputs, name, kernel_shape=list(conv.kernel_size), strides=list(conv.stride),
                         pads=[ph, pw, ph, pw], dilations=list(conv.dilation), group=1)

    def batch_norm(self, x: str, bn: nn.BatchNorm2d, name: str) -> str:
        params = [self.constant(f"{name}.{p}", getattr(bn, p).data)
                  for p in ("weight", "bias", "running_mean", "running_var")]
        return self.node("BatchNormalization", [x, *params], name, epsilon=float(bn.eps))

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def max_pool(self, x: str, pool: nn.MaxPool2d, name: str) -> str:
        k = _pair(pool.kernel_size)
        s = _pair(pool.stride if pool.stride is not None else pool.kernel_size)
        p = _pair(pool.padding)
        return self.node("MaxPool", [x], name, kernel_shape=k, strides=s, pads=[p[0], p[1], p[0], p[1]])

    def block(self, x: str, block: BasicBlock, name: str) -> str:
        out = self.relu(self.batch_norm(self.conv(x, block.conv1, f"{name}.conv1"), block.bn1, f"{name}.bn1"),
                        f"{name}.relu1")
        out = self.batch_norm(self.conv(out, block.conv2, f"{name}.conv2"), block.bn2, f"{name}.bn2")
        identity = x
        if block.downsample is not None:
            conv, bn = block.downsample[0], block.downsample[1]
            identity = self.batch_norm(self.conv(x, conv, f"{name}.downsample.0"), bn, f"{name}.downsample.1")
        return self.relu(self.node("Add", [out, identity], f"{name}.add"), f"{name}.relu2")


def _pair(value) -> list[int]:
    return [int(v) for v in value] if isinstance(value, (tuple, list)) else [int(value), int(value)]


def resnet_graph(model: ResNet, g: _Graph, x: str) -> str:
    """Add ``model``'s eval-mode forward to ``g`` from tensor ``x``; returns the logits' name."""
    x = g.relu(g.batch_norm(g.conv(x, model.conv1, "conv1"), model.bn1, "bn1"), "relu")
    if isinstance(model.maxpool, nn.MaxPool2d):
        x = g.max_pool(x, model.maxpool, "maxpool")
    for layer in ("layer1", "layer2", "layer3", "layer4"):
        for index, block in enumerate(getattr(model, layer)):
            x = g.block(x, block, f"{layer}.{index}")
    x = g.node("Flatten", [g.node("GlobalAveragePool", [x], "avgpool")], "flatten", axis=1)
    return g.node("Gemm", [x, g.constant("fc.weight", model.fc.weight.data), g.constant("fc.bias", model.fc.bias.data)],
                  OUTPUT, transB=1)


def build_model(model: ResNet, *, image_size: int, in_channels: int, opset: int = DEFAULT_OPSET,
                batch: int | None = None, normalisation: Mapping[str, list[float]] | None = None,
                metadata: Mapping[str, str] | None = None, producer_version: str = ""):
    """The checked ``onnx.ModelProto`` of ``model`` (see the module docstring for the contract).

    ``batch``: a fixed batch size, or None for a dynamic one. ``normalisation``: {"mean", "std"}
    per channel to put in the graph (raw-pixel input), or None (the input is normalised).
    ConfigError for an opset out of range or a missing onnx package.
    """
    onnx = import_onnx()
    check_opset(opset)
    helper = onnx.helper
    g = _Graph(onnx)
    x = INPUT
    if normalisation is not None:
        shape = (1, in_channels, 1, 1)
        mean = np.asarray(normalisation["mean"], dtype=np.float32).reshape(shape)
        inv_std = (1.0 / np.asarray(normalisation["std"], dtype=np.float64)).astype(np.float32).reshape(shape)
        x = g.node("Sub", [x, g.constant("normalise.mean", mean)], "normalise.sub")
        x = g.node("Mul", [x, g.constant("normalise.inv_std", inv_std)], "normalise.mul")
    logits = resnet_graph(model, g, x)
    n = batch if batch is not None else BATCH_DIM
    inputs = [helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [n, in_channels, image_size, image_size])]
    outputs = [helper.make_tensor_value_info(logits, onnx.TensorProto.FLOAT, [n, model.fc.out_features])]
    what = "pixels in 0..1" if normalisation is not None else "normalised pixels (x - mean) / std"
    graph = helper.make_graph(g.nodes, "autotrain_resnet18", inputs, outputs, g.initializers,
                              doc_string=f"ResNet-18 in eval mode; input {INPUT}: NCHW float32 {what}")
    opsets = [helper.make_opsetid("", opset)]
    # the oldest IR version that can carry this opset, so older runtimes open the file
    proto = helper.make_model(graph, opset_imports=opsets, ir_version=helper.find_min_ir_version_for(opsets),
                              producer_name="autotrain", producer_version=producer_version)
    helper.set_model_props(proto, dict(metadata or {}))
    onnx.checker.check_model(proto, full_check=True)
    return proto
