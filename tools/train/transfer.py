"""Fine-tuning that keeps what ImageNet taught: linear probe, then the top blocks, then a weight blend.

Fine-tuning the whole network on TrashNet's 1,765 white-board photos made 1.x right on TrashNet and
wrong almost everywhere else (27 % on grey-floor photos; a linear probe on the frozen ImageNet
features scores 51 %). The known remedies, all used here:
- the early blocks (edges, textures, parts) stay frozen: only blocks `first_top_block`.. and the head
  learn, so their activations can be computed once per photo and cached, which makes it cheap;
- the training photos are bin-like copies (bin_scenes.py): items on other floors, in other light;
- LP-FT (Kumar et al. 2022): the classifier is first fitted on the frozen features (linear probe),
  and fine-tuning starts from it with a small learning rate, so it does not wreck the features
  while a random head's gradients settle;
- WiSE-FT (Wortsman et al. 2022): the deployed weights are a blend of the probe's (pretrained
  features) and the fine-tuned ones, the blend chosen on TrashNet val and the tune half of the
  cross-source dev set together, never on its held-out half.
Batch-norm statistics stay ImageNet's (frozen), which also keeps the blend well defined.
"""

from __future__ import annotations

import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import bin_scenes
import convert
import cv2
import data
import keras
import lite_keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

CHUNK = 256


@dataclass
class TransferConfig:
    seed: int = 0
    # lite_keras.ARCHITECTURES: the EfficientNet-Lite size.
    arch: str = "lite0"
    input_wh: tuple[int, int] = (224, 224)
    # Blocks before this one stay frozen (ImageNet's); 11 is Lite0's start of stage 6 (7x7 at 224).
    first_top_block: int = 11
    # Bin-like copies per train photo; the photo itself is always one more.
    copies: int = 4
    lp_epochs: int = 40
    lp_lr: float = 3e-3
    lp_weight_decay: float = 1e-4
    ft_epochs: int = 8
    ft_lr: float = 1e-4
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.3
    batch_size: int = 64
    wise_alphas: tuple[float, ...] = (0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0)

    @property
    def epochs(self) -> int:
        return self.ft_epochs

    @property
    def architecture(self) -> lite_keras.Architecture:
        return lite_keras.ARCHITECTURES[self.arch]


def _cached(path: Path, make):
    if path.exists():
        return np.load(path)
    value = make()
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, value)
    tmp.rename(path)
    return value


def train_activations(
    config: TransferConfig, split: data.Split, trunk: keras.Model, run_dir: Path, board_photos: int
) -> tuple[np.ndarray, np.ndarray]:
    """Trunk activations of every copy of every train photo (float16, cached per run: resumable).

    The first `board_photos` are TrashNet's (their items are cut out for bin-like copies); any after
    them are a site's own photos.
    """
    jobs = [
        (str(path), config.seed, index, copy, config.input_wh) + (() if index < board_photos else (False,))
        for index, path in enumerate(split.paths)
        for copy in range(config.copies + 1)
    ]
    labels = np.repeat(split.labels, config.copies + 1)
    chunks_dir = run_dir / "activations"
    chunks_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        for start in tqdm(range(0, len(jobs), CHUNK), desc="bin-like copies -> trunk"):
            chunk_path = chunks_dir / f"{start:06d}.npy"

            def make(start=start):
                images = np.stack(
                    list(pool.map(bin_scenes.training_input, jobs[start : start + CHUNK], chunksize=16))
                )
                if start == 0:
                    preview = np.vstack([np.hstack(list(images[r * 8 : r * 8 + 8])) for r in range(4)])
                    cv2.imwrite(str(run_dir / "copies_preview.jpg"), cv2.cvtColor(preview, cv2.COLOR_RGB2BGR))
                return trunk.predict(images.astype(np.float32), batch_size=64, verbose=0).astype(np.float16)

            parts.append(_cached(chunk_path, make))
    return np.concatenate(parts), labels


def activations_of(trunk: keras.Model, split: data.Split, size_wh: tuple[int, int], desc: str) -> np.ndarray:
    images = data.load_images(split.paths, size_wh, desc)
    return trunk.predict(images.astype(np.float32), batch_size=64, verbose=0)


def _top_weights(model: keras.Model) -> list[np.ndarray]:
    return [np.array(w) for w in model.get_weights()]


def _freeze_batch_norm(model: keras.Model) -> None:
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False


def linear_probe(config: TransferConfig, pooled: np.ndarray, labels: np.ndarray) -> list[np.ndarray]:
    """Multinomial logistic regression on the frozen pooled features: [kernel, bias]."""
    keras.utils.set_random_seed(config.seed)
    probe = keras.Sequential([keras.Input((pooled.shape[1],)), keras.layers.Dense(len(data.LABELS))])
    steps = config.lp_epochs * int(np.ceil(len(pooled) / 256))
    probe.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(config.lp_lr, steps), weight_decay=config.lp_weight_decay
        ),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
    )
    targets = keras.utils.to_categorical(labels, len(data.LABELS))
    probe.fit(pooled, targets, batch_size=256, epochs=config.lp_epochs, verbose=0, shuffle=True)
    return probe.layers[-1].get_weights()


def _accuracy(top: keras.Model, activations: np.ndarray, labels: np.ndarray) -> float:
    logits = top.predict(activations, batch_size=128, verbose=0)[0]
    return float((logits.argmax(axis=1) == labels).mean())


def train(
    config: TransferConfig,
    train_split: data.Split,
    val_split: data.Split,
    dev_tune: data.Split,
    backbone_npz: Path,
    run_dir: Path,
    board_photos: int | None = None,
) -> Path:
    """Write run_dir/model.weights.h5 (the full two-output network) and history.json; return the path."""
    started = time.monotonic()
    run_dir.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(config.seed)
    arch = config.architecture
    full = lite_keras.build(len(data.LABELS), embedding_output=True, arch=arch)
    lite_keras.load_imagenet_backbone(full, backbone_npz, arch)
    trunk = lite_keras.build_trunk(config.first_top_block, arch=arch)
    lite_keras.copy_weights_by_name(full, trunk)

    board = len(train_split.paths) if board_photos is None else board_photos
    acts, labels = train_activations(config, train_split, trunk, run_dir, board)
    val_acts = activations_of(trunk, val_split, config.input_wh, "decode val")
    dev_acts = activations_of(trunk, dev_tune, config.input_wh, "decode dev tune")

    top = lite_keras.build_top(len(data.LABELS), config.first_top_block, dropout=config.dropout, arch=arch)
    lite_keras.copy_weights_by_name(full, top)
    _freeze_batch_norm(top)
    pooled = keras.Model(top.inputs, top.outputs[1]).predict(acts, batch_size=128, verbose=0)
    top.get_layer("logits").set_weights(linear_probe(config, pooled, labels))
    probe_weights = _top_weights(top)
    history: dict = {"config": asdict(config), "train_images": len(acts)}
    history["probe"] = {
        "val_top1": _accuracy(top, val_acts, val_split.labels),
        "dev_tune_top1": _accuracy(top, dev_acts, dev_tune.labels),
    }
    print("linear probe:", history["probe"])

    steps_per_epoch = len(acts) // config.batch_size
    # Trains the same layers as `top` (shared), on the logits alone.
    classifier = keras.Model(top.inputs, top.outputs[0])
    classifier.compile(
        optimizer=keras.optimizers.AdamW(
            keras.optimizers.schedules.CosineDecay(config.ft_lr, config.ft_epochs * steps_per_epoch),
            weight_decay=config.weight_decay,
        ),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        jit_compile=False,
    )
    dataset = (
        tf.data.Dataset.from_tensor_slices((acts, keras.utils.to_categorical(labels, len(data.LABELS))))
        .shuffle(len(acts), seed=config.seed, reshuffle_each_iteration=True)
        .map(lambda x, y: (tf.cast(x, tf.float32), y))
        .batch(config.batch_size, drop_remainder=True)
        .prefetch(2)
    )
    epochs = []
    for epoch in range(config.ft_epochs):
        fit = classifier.fit(dataset, epochs=1, verbose=0)
        record = {
            "epoch": epoch + 1,
            "loss": float(fit.history["loss"][-1]),
            "val_top1": _accuracy(top, val_acts, val_split.labels),
            "dev_tune_top1": _accuracy(top, dev_acts, dev_tune.labels),
        }
        epochs.append(record)
        print(record)
    tuned_weights = _top_weights(top)

    def blend(alpha: float) -> None:
        top.set_weights(
            [(1 - alpha) * p + alpha * t for p, t in zip(probe_weights, tuned_weights, strict=True)]
        )

    # WiSE-FT: blend every top weight; choose the blend on val and the dev tune half, equally weighted.
    blends = []
    for alpha in config.wise_alphas:
        blend(alpha)
        blends.append(
            {
                "alpha": alpha,
                "val_top1": _accuracy(top, val_acts, val_split.labels),
                "dev_tune_top1": _accuracy(top, dev_acts, dev_tune.labels),
            }
        )
        print(blends[-1])
    best = max(blends, key=lambda b: (b["val_top1"] + b["dev_tune_top1"], -abs(b["alpha"] - 0.5)))
    history["wise"] = {"blends": blends, "chosen_alpha": best["alpha"], "chosen_on": "val + dev tune half"}
    blend(best["alpha"])
    lite_keras.copy_weights_by_name(top, full)
    weights = run_dir / "model.weights.h5"
    full.save_weights(weights)
    history["train_seconds"] = time.monotonic() - started
    history["epochs"] = epochs
    (run_dir / "history.json").write_text(json.dumps(history, indent=1))
    return weights


def calibration_images(config: TransferConfig, split: data.Split, count: int = 300) -> np.ndarray:
    """Int8 calibration inputs like the ones the model will meet: half photos, half bin-like copies."""
    rng = np.random.default_rng(config.seed)
    per_class = count // len(data.LABELS)
    jobs = []
    for label in range(len(data.LABELS)):
        indices = rng.choice(np.flatnonzero(split.labels == label), size=per_class, replace=False)
        for n, index in enumerate(sorted(indices)):
            copy = 0 if n % 2 == 0 else 1 + int(rng.integers(0, max(config.copies, 1)))
            jobs.append((str(split.paths[index]), config.seed, int(index), copy, config.input_wh))
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        images = np.stack(list(pool.map(bin_scenes.training_input, jobs, chunksize=16)))
    return convert.pin_input_range(images)
