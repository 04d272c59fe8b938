"""Full-integer (int8) TFLite conversion with a raw-pixel uint8 input.

Normalisation is inside the graph, so calibrating the input on pixels spanning 0..255 makes the
input tensor scale 1.0 / zero_point 0: the runtime feeds the resized uint8 image as is.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import data
import keras
import lite_keras
import numpy as np
import tensorflow as tf

CALIBRATION_IMAGES = 300


def calibration_images(train_split: data.Split, size_wh: tuple[int, int], seed: int) -> np.ndarray:
    """A class-stratified, seeded sample of train images, preprocessed as at runtime."""
    rng = np.random.default_rng(seed)
    per_class = CALIBRATION_IMAGES // len(data.LABELS)
    chosen = []
    for label in range(len(data.LABELS)):
        indices = np.flatnonzero(train_split.labels == label)
        chosen += list(rng.choice(indices, size=min(per_class, len(indices)), replace=False))
    images = data.load_images([train_split.paths[i] for i in sorted(chosen)], size_wh, "calibration")
    return pin_input_range(images)


def pin_input_range(images: np.ndarray) -> np.ndarray:
    """Calibration images with the observed input range pinned to the full 0..255 (in place).

    White-background photos may never contain a 0 pixel; with the range pinned the converter picks
    scale 1 / zero point 0 for the input (two pixels barely move any activation).
    """
    images[0, 0, 0] = 0
    images[0, 0, 1] = 255
    return images


def correct_weight_rounding_bias(model: keras.Model, calibration: np.ndarray) -> None:
    """Pre-compensate the mean output shift that int8 weight rounding will cause (bias correction).

    The converter folds each BatchNorm into the conv before it and rounds the folded weights per
    output channel to int8. Depthwise kernels with large BN gains round coarsely, and the rounding
    error times the mean input is a systematic per-channel offset of several output LSBs that
    compounds through the network. We replicate the converter's rounding, compute that offset
    from the float model's mean inputs on calibration images, and subtract it from the BN beta,
    so the float model is unchanged up to that offset and the int8 model is centred again
    (Nagel et al. 2019, "Data-free quantization", bias correction).
    """
    conv_bn_pairs = [
        (layer, model.get_layer(name.replace("_conv", "_bn")))
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
        for name in [layer.name]
    ]
    mean_inputs_model = keras.Model(
        model.inputs, [keras.ops.mean(conv.input, axis=(1, 2)) for conv, _ in conv_bn_pairs]
    )
    mean_inputs = [
        m.mean(axis=0)
        for m in mean_inputs_model.predict(calibration.astype(np.float32), batch_size=16, verbose=0)
    ]
    for (conv, bn), mean_input in zip(conv_bn_pairs, mean_inputs, strict=True):
        gamma, beta, moving_mean, moving_var = bn.get_weights()
        gain = gamma / np.sqrt(moving_var + bn.epsilon)
        kernel = conv.get_weights()[0]
        depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
        folded = kernel * (gain[None, None, :, None] if depthwise else gain[None, None, None, :])
        channel_axes = (0, 1, 3) if depthwise else (0, 1, 2)
        scale = np.abs(folded).max(axis=channel_axes, keepdims=True) / 127.0
        rounding_error = np.round(folded / np.where(scale > 0, scale, 1.0)) * scale - folded
        if depthwise:
            shift = (rounding_error[..., 0] * mean_input[None, None, :]).sum(axis=(0, 1))
        else:
            shift = np.einsum("hwio,i->o", rounding_error, mean_input)
        bn.set_weights([gamma, beta - shift, moving_mean, moving_var])


def convert_int8(
    weights_path: Path,
    calibration: np.ndarray,
    bias_correction: bool = True,
    embedding_output: bool = False,
    arch: lite_keras.Architecture = lite_keras.LITE0,
) -> bytes:
    """The int8 .tflite bytes; with `embedding_output`, the pooled features are a second output."""
    height, width = calibration.shape[1:3]
    model = lite_keras.build(
        len(data.LABELS), input_wh=(width, height), embedding_output=embedding_output, arch=arch
    )
    model.load_weights(weights_path)
    if bias_correction:
        correct_weight_rounding_bias(model, calibration)

    # Going through a SavedModel freezes the Keras variables into constants for the converter.
    with tempfile.TemporaryDirectory() as saved_model_dir:
        export = keras.export.ExportArchive()
        export.track(model)
        export.add_endpoint(
            "serve",
            lambda pixels: model(pixels, training=False),
            input_signature=[tf.TensorSpec([1, height, width, 3], tf.float32, name="pixels")],
        )
        export.write_out(saved_model_dir, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.int8
        return converter.convert()
