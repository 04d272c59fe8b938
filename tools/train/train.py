"""Fine-tune EfficientNet-Lite0 (ImageNet) on TrashNet and save the float Keras weights.

Where the time goes on 2 CPU cores: JPEG decoding is done once (all images live in RAM as uint8,
CACHE_MARGIN times the input size), augmentation runs in a parallel tf.data map, and early epochs
can run at a lower resolution (progressive resizing) because the graph is resolution-agnostic.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import data
import keras
import lite_keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

# Training crops are cut from a squash-resize this much larger than the final input, so random
# crops still see most of the frame at about the resolution the runtime squash gives.
CACHE_MARGIN = 1.15


class Segment(NamedTuple):
    """A stretch of epochs trained the same way."""

    width: int
    height: int
    epochs: int
    crop_area: tuple[float, float]
    mixup_alpha: float
    final: bool = False  # part of the last phase (the deployed size): where a teacher teaches
    whole_frame: bool = False  # the FixRes tail


@dataclass
class TrainConfig:
    seed: int = 0
    # (input width, input height, epochs) per phase; smaller sizes first are cheaper. The last
    # phase's size is the deployed input size.
    phases: list[tuple[int, int, int]] = field(default_factory=lambda: [(224, 224, 4)])
    batch_size: int = 32
    peak_lr: float = 1e-3
    warmup_epochs: float = 1.0
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    dropout: float = 0.2
    mixup_alpha: float = 0.0  # 0 disables; otherwise mixup with Beta(alpha, alpha)
    ema_momentum: float = 0.0  # 0 disables EMA of weights
    crop_area: tuple[float, float] = (0.5, 1.0)
    # Stochastic depth of the last residual block (0 disables); see lite_keras.build.
    drop_path: float = 0.0
    # The last this-many epochs of the final phase train on (nearly) whole frames without mixup:
    # random crops enlarge objects relative to the device's whole-frame squash, and a short tail
    # at the test-time framing removes that mismatch (Touvron et al. 2019, "FixRes").
    fixres_epochs: int = 0
    fixres_crop_area: tuple[float, float] = (0.85, 1.0)
    # Camera variation TrashNet lacks (one phone, daylight): per-channel white-balance gains,
    # exposure, sensor noise and slight defocus, each drawn per image.
    camera_jitter: bool = False
    # Knowledge distillation: the recipe (same seed) whose trained model teaches this one, and the
    # teacher's share of each target in the final phase. 0 trains on the labels alone.
    teacher: str = ""
    distill_weight: float = 0.0

    @property
    def epochs(self) -> int:
        return sum(e for _, _, e in self.phases)

    def segments(self) -> list[Segment]:
        """The phases in training order, the final one split off its whole-frame tail."""
        last = len(self.phases) - 1
        segments = [
            Segment(w, h, e, self.crop_area, self.mixup_alpha, final=i == last)
            for i, (w, h, e) in enumerate(self.phases)
        ]
        if self.fixres_epochs:
            final = segments[-1]
            if not 0 < self.fixres_epochs <= final.epochs:
                raise ValueError(
                    f"fixres_epochs {self.fixres_epochs} must be within the final phase's "
                    f"{final.epochs} epochs"
                )
            segments[-1] = final._replace(epochs=final.epochs - self.fixres_epochs)
            tail = final._replace(epochs=self.fixres_epochs, crop_area=self.fixres_crop_area)
            segments.append(tail._replace(mixup_alpha=0.0, whole_frame=True))
        return [segment for segment in segments if segment.epochs > 0]

    @property
    def input_wh(self) -> tuple[int, int]:
        width, height, _ = self.phases[-1]
        return width, height

    def cache_wh(self, teacher_wh: tuple[int, int] | None = None) -> tuple[int, int]:
        """The decoded-image size crops are cut from: a margin over the largest size trained on."""
        width, height = max(self.input_wh, teacher_wh or (0, 0))
        return round(width * CACHE_MARGIN), round(height * CACHE_MARGIN)


@dataclass
class Teacher:
    """A trained float model whose probabilities become part of the student's targets."""

    model: keras.Model
    input_wh: tuple[int, int]
    weight: float

    @classmethod
    def load(cls, weights: Path, input_wh: tuple[int, int], weight: float) -> Teacher:
        if not 0 < weight <= 1:
            raise ValueError(f"distill_weight {weight} must be in (0, 1]")
        model = lite_keras.build(len(data.LABELS))
        model.load_weights(weights)
        model.trainable = False
        return cls(model, input_wh, weight)

    def blend(self, views: tuple[tf.Tensor, tf.Tensor], targets: tf.Tensor):
        """(student view, teacher view) of one batch -> the student view with blended targets.

        Both views are the same crop, flip, jitter and mixup, each resized once from the cache
        to its own size ("consistent teaching", Beyer et al. 2022), so the teacher's
        probabilities describe the picture the student is graded on, at the student's sharpness.
        """
        student, teacher = views
        probs = tf.nn.softmax(self.model(teacher, training=False))
        return student, (1 - self.weight) * targets + self.weight * probs


def augment(
    image: tf.Tensor,
    label: tf.Tensor,
    seeds: tf.Tensor,
    sizes_wh: list[tuple[int, int]],
    crop_area: tuple[float, float],
    aspect: float,
    config: TrainConfig,
):
    """Random crop + flips + mild photometric jitter, all stateless so a seed fixes the run.

    One view per size in `sizes_wh`, all of the same crop and jitter; a lone view is returned
    as a tensor, several as a tuple.
    """
    seed = tf.cast(seeds, tf.int32)
    # Crop aspect ratios vary around the cache's own (`aspect`), the input's up to rounding.
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(0.75 * aspect, 1.33 * aspect),
        area_range=crop_area,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.cast(tf.slice(image, begin, crop_size), tf.float32)
    views = tuple(
        jitter(tf.image.resize(crop, (height, width), antialias=True), seed, (width, height), config)
        for width, height in sizes_wh
    )
    return views[0] if len(views) == 1 else views, tf.one_hot(label, len(data.LABELS))


def jitter(x: tf.Tensor, seed: tf.Tensor, size_wh: tuple[int, int], config: TrainConfig) -> tf.Tensor:
    x = tf.image.stateless_random_flip_left_right(x, seed=seed + 1)
    x = tf.image.stateless_random_flip_up_down(x, seed=seed + 2)
    x = tf.image.stateless_random_brightness(x, 0.1 * 255.0, seed=seed + 3)
    x = tf.image.stateless_random_contrast(x, 0.85, 1.15, seed=seed + 4)
    x = tf.image.stateless_random_saturation(x, 0.85, 1.15, seed=seed + 5)
    if config.camera_jitter:
        x = camera_jitter(x, seed + 6, size_wh)
    return tf.clip_by_value(x, 0.0, 255.0)


def camera_jitter(x: tf.Tensor, seed: tf.Tensor, size_wh: tuple[int, int]) -> tf.Tensor:
    """A different camera and light: white balance, exposure, defocus and noise, all stateless."""
    gains = tf.random.stateless_uniform([3], seed=seed, minval=0.8, maxval=1.2)
    exposure = tf.random.stateless_uniform([], seed=seed + 1, minval=0.6, maxval=1.15)
    x = x * gains * exposure
    # Defocus on a third of the images: down- then up-sampling by up to 2x softens like a lens blur.
    blur = tf.random.stateless_uniform([], seed=seed + 2, minval=1.0, maxval=2.0)
    blurred_hw = tf.cast(tf.cast([size_wh[1], size_wh[0]], tf.float32) / blur, tf.int32)
    soft = tf.image.resize(tf.image.resize(x, blurred_hw, antialias=True), (size_wh[1], size_wh[0]))
    x = tf.where(tf.random.stateless_uniform([], seed=seed + 3) < 1 / 3, soft, x)
    sigma = tf.random.stateless_uniform([], seed=seed + 4, minval=0.0, maxval=8.0)
    return x + sigma * tf.random.stateless_normal(tf.shape(x), seed=seed + 5)


def mixup(images: tf.Tensor, labels: tf.Tensor, seeds: tf.Tensor, alpha: float):
    """Blend each batch with its reverse; softer targets help calibration on a tiny dataset."""
    seed = tf.cast(seeds, tf.int32)
    g1 = tf.random.stateless_gamma([], seed=seed, alpha=alpha)
    g2 = tf.random.stateless_gamma([], seed=seed + 7, alpha=alpha)
    lam = g1 / (g1 + g2)

    def mix(x: tf.Tensor) -> tf.Tensor:
        return lam * x + (1 - lam) * tf.reverse(x, [0])

    return tf.nest.map_structure(mix, images), mix(labels)


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    size_wh: tuple[int, int],
    crop_area: tuple[float, float],
    mixup_alpha: float,
    config: TrainConfig,
    phase: int,
    teacher: Teacher | None = None,
) -> tf.data.Dataset:
    """Augmented, batched (image, target) pairs at `size_wh`; with a teacher, the targets are
    blended with its probabilities on the same crops at its own size."""
    n = len(images)
    sizes_wh = [size_wh, teacher.input_wh] if teacher else [size_wh]
    aspect = images.shape[2] / images.shape[1]
    base = (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(n, seed=config.seed + phase, reshuffle_each_iteration=True)
        .repeat()
    )
    seeds = tf.data.Dataset.random(seed=config.seed * 1000 + phase).batch(2)
    ds = tf.data.Dataset.zip((base, seeds)).map(
        lambda xy, s: augment(xy[0], xy[1], s, sizes_wh, crop_area, aspect, config),
        num_parallel_calls=2,
        deterministic=True,
    )
    ds = ds.batch(config.batch_size, drop_remainder=True)
    if mixup_alpha > 0:
        batch_seeds = tf.data.Dataset.random(seed=config.seed * 1000 + 500 + phase).batch(2)
        ds = tf.data.Dataset.zip((ds, batch_seeds)).map(
            lambda xy, s: mixup(xy[0], xy[1], s, mixup_alpha), num_parallel_calls=1, deterministic=True
        )
    if teacher:
        ds = ds.map(teacher.blend, num_parallel_calls=1, deterministic=True)
    return ds.prefetch(2)


class ProgressBar(keras.callbacks.Callback):
    """One tqdm bar over all training steps, with the running loss/accuracy and the epoch."""

    def __init__(self, total_steps: int, steps_per_epoch: int):
        super().__init__()
        self.bar = tqdm(total=total_steps, desc="train", unit="step")
        self.steps_per_epoch = steps_per_epoch

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(1)
        self.bar.set_postfix(
            epoch=self.bar.n // self.steps_per_epoch + 1, **{k: f"{v:.3f}" for k, v in (logs or {}).items()}
        )

    def on_epoch_end(self, epoch, logs=None):
        self.bar.write(f"epoch {epoch + 1}: " + ", ".join(f"{k} {v:.4f}" for k, v in (logs or {}).items()))

    def on_train_end(self, logs=None):
        self.bar.close()


class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    def __init__(self, peak_lr: float, warmup_steps: int, total_steps: int):
        self.peak_lr, self.warmup_steps, self.total_steps = peak_lr, warmup_steps, total_steps

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak_lr * (step + 1) / max(self.warmup_steps, 1)
        progress = tf.clip_by_value(
            (step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0
        )
        cosine = 0.5 * self.peak_lr * (1 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {"peak_lr": self.peak_lr, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps}


def build_model(config: TrainConfig, backbone_npz: Path) -> keras.Model:
    model = lite_keras.build(len(data.LABELS), dropout=config.dropout, drop_path=config.drop_path)
    lite_keras.load_imagenet_backbone(model, backbone_npz)
    return model


def train(
    config: TrainConfig,
    train_split: data.Split,
    val_split: data.Split,
    backbone_npz: Path,
    run_dir: Path,
    teacher: Teacher | None = None,
) -> Path:
    """Train and write `run_dir/model.weights.h5` (+ history.json); returns the weights path.

    Val accuracy is logged per epoch to show the learning curve only: nothing (epoch, weights)
    is selected on it. A teacher teaches in the final phase (and its whole-frame tail) only:
    the early low-resolution epochs are cheap, and a teacher forward pass there would double them.
    """
    keras.utils.set_random_seed(config.seed)
    images = data.load_images(
        train_split.paths, config.cache_wh(teacher.input_wh if teacher else None), "decode train"
    )
    val_images = data.load_images(val_split.paths, config.input_wh, "decode val").astype(np.float32)
    val_targets = keras.utils.to_categorical(val_split.labels, len(data.LABELS))
    model = build_model(config, backbone_npz)

    steps_per_epoch = len(images) // config.batch_size
    schedule = WarmupCosine(
        config.peak_lr, int(config.warmup_epochs * steps_per_epoch), config.epochs * steps_per_epoch
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=schedule,
        weight_decay=config.weight_decay,
        use_ema=config.ema_momentum > 0,
        ema_momentum=config.ema_momentum or 0.99,
    )
    # Decay only conv/dense kernels: shrinking BN scales and biases just fights the pretrained stats.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=["accuracy"],
        # XLA was not measured here; the README's timings are without it.
        jit_compile=False,
    )

    # One fit() over the concatenated phases: fit() swaps the EMA weights in when it returns, so
    # a fit() per phase would restart later phases from the averaged weights.
    ds = None
    segments = config.segments()
    for phase, segment in enumerate(segments):
        phase_ds = make_dataset(
            images,
            train_split.labels,
            (segment.width, segment.height),
            segment.crop_area,
            segment.mixup_alpha,
            config,
            phase,
            teacher if segment.final else None,
        ).take(segment.epochs * steps_per_epoch)
        ds = phase_ds if ds is None else ds.concatenate(phase_ds)
    sizes = [
        f"{segment.width}x{segment.height}"
        + (" whole-frame" if segment.whole_frame else "")
        + (" distilled" if teacher and segment.final else "")
        for segment in segments
        for _ in range(segment.epochs)
    ]
    started = time.monotonic()
    fit = model.fit(
        ds,
        epochs=config.epochs,
        steps_per_epoch=steps_per_epoch,
        verbose=0,
        validation_data=(val_images, val_targets),
        validation_batch_size=64,
        callbacks=[ProgressBar(config.epochs * steps_per_epoch, steps_per_epoch)],
    )
    history = [
        {"epoch": i + 1, "size": sizes[i], **{k: float(v[i]) for k, v in fit.history.items()}}
        for i in range(config.epochs)
    ]
    train_seconds = time.monotonic() - started

    run_dir.mkdir(parents=True, exist_ok=True)
    weights = run_dir / "model.weights.h5"
    model.save_weights(weights)
    (run_dir / "history.json").write_text(
        json.dumps({"config": asdict(config), "train_seconds": train_seconds, "epochs": history}, indent=1)
    )
    return weights
