"""Bin-like training photos made from TrashNet's: the item cut off its white board and put in a bin.

TrashNet is one phone, daylight and a white poster board. A bin's camera sees a grey floor, a tray,
tiles or a dirty plate, under warm or dim light, through a cheap lens. The board is near uniform, so
the item can be cut out from it with a colour-distance mask; it is then pasted, rotated, smaller or
larger and off-centre, onto a procedurally drawn floor, with a shadow, and the whole picture gets a
different camera: light gradient, white balance, exposure, gamma, saturation, blur, noise and JPEG.
Some copies keep the board and only get the camera changes, so TrashNet-like scenes stay familiar.

Everything is NumPy/OpenCV on the full-size BGR photo, drawn from a seeded Generator per copy, and
the result goes through the runtime's own resize (`data.load_rgb`'s contract), so a copy is exactly
what the device would feed the model had its camera taken that picture.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import data
import numpy as np

# The share of copies that leave the board for a drawn floor, when the item can be cut out.
PASTE_PROBABILITY = 0.75
# A mask covering less or more of the photo than this is not trusted (white paper on white board).
MIN_ITEM_AREA, MAX_ITEM_AREA = 0.03, 0.85


def item_mask(bgr: np.ndarray) -> np.ndarray | None:
    """Soft alpha (float32, 0..1, full size) of the item on TrashNet's board, or None if unsure.

    The board colour is the median of the photo's border; a pixel is item when its chroma differs
    from the board's or it is much darker (shadows close to the item come along, which a pasted
    item may as well keep). Small specks go, holes are filled, the largest parts are kept.
    """
    small = cv2.resize(bgr, (128, 96), interpolation=cv2.INTER_AREA)
    lab = cv2.cvtColor(small, cv2.COLOR_BGR2LAB).astype(np.float32)
    border = np.concatenate([lab[:4].reshape(-1, 3), lab[-4:].reshape(-1, 3), lab[:, :4].reshape(-1, 3)])
    board = np.median(border, axis=0)
    chroma = np.hypot(lab[..., 1] - board[1], lab[..., 2] - board[2])
    darker = board[0] - lab[..., 0]
    # Bright, nearly neutral pixels are board even where its tint or shade differs from the border's
    # (vignetting, the board's edge): without this, pasted items drag white polygons of board along.
    neutral = np.hypot(lab[..., 1] - 128, lab[..., 2] - 128) < 14
    board_like = neutral & (lab[..., 0] > min(board[0], 200) - 12)
    mask = (((chroma > 9) | (darker > 28)) & ~board_like).astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel, iterations=2)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    if count <= 1:
        return None
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = 1 + np.flatnonzero(areas >= 0.2 * areas.max())
    mask = np.isin(labels, keep).astype(np.uint8)
    # Fill holes: what the border cannot reach through the background is inside the item.
    flood = np.pad(1 - mask, 1, constant_values=1).astype(np.uint8)
    cv2.floodFill(flood, None, (0, 0), 2)
    mask = ((flood[1:-1, 1:-1] != 2) | (mask == 1)).astype(np.float32)
    share = float(mask.mean())
    if not MIN_ITEM_AREA <= share <= MAX_ITEM_AREA:
        return None
    alpha = cv2.resize(mask, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.GaussianBlur(alpha, (0, 0), sigmaX=1.5)


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    """A floor colour: mostly greys, browns and beiges, sometimes dark or saturated (BGR, 0..255)."""
    kind = rng.random()
    if kind < 0.45:
        grey = rng.uniform(35, 210)
        return np.clip(grey + rng.normal(0, 6, 3), 0, 255)
    if kind < 0.75:
        base = np.array([60, 100, 140]) * rng.uniform(0.4, 1.5)  # browns/beiges/wood
        return np.clip(base + rng.normal(0, 15, 3), 0, 255)
    if kind < 0.9:
        return rng.uniform(10, 70, 3)  # dark tray, rubber mat
    return rng.uniform(0, 255, 3)  # painted, coloured plastic


def _smooth_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    field = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        cells = 2 ** (octave + 1) + int(rng.integers(0, 3))
        grid = rng.random((cells, cells)).astype(np.float32)
        field += cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC) / 2**octave
    field -= field.min()
    return field / max(float(field.max()), 1e-6)


def draw_floor(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A procedurally drawn bin floor or tray (BGR float32 0..255)."""
    a, b = _palette_colour(rng), _palette_colour(rng)
    contrast = rng.uniform(0.05, 0.6)
    b = a + (b - a) * contrast
    kind = rng.integers(0, 4)
    if kind == 0:  # mottled: concrete, dirty plastic
        t = _smooth_noise(rng, height, width)
    elif kind == 1:  # stripes / wood grain
        angle = rng.uniform(0, np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        along = xx * np.cos(angle) + yy * np.sin(angle)
        wobble = _smooth_noise(rng, height, width, 3) * rng.uniform(5, 40)
        t = 0.5 + 0.5 * np.sin((along + wobble) * rng.uniform(0.02, 0.3))
    elif kind == 2:  # tiles with grout
        t = _smooth_noise(rng, height, width, 3) * 0.5
        size = int(rng.integers(30, 160))
        line = int(rng.integers(1, 5))
        yy, xx = np.mgrid[0:height, 0:width]
        grout = ((yy % size) < line) | ((xx % size) < line)
        t = np.where(grout, 1.0, t)
    else:  # plain with a little texture
        t = _smooth_noise(rng, height, width, 2) * 0.3
    floor = a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]
    grain = rng.standard_normal((height, width, 1), dtype=np.float32) * rng.uniform(0, 10)
    return np.clip(floor + grain, 0, 255).astype(np.float32)


def _place_item(
    rng: np.random.Generator, bgr: np.ndarray, alpha: np.ndarray, canvas: np.ndarray
) -> np.ndarray:
    height, width = canvas.shape[:2]
    ys, xs = np.nonzero(alpha > 0.5)
    top, bottom, left, right = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    item = bgr[top:bottom, left:right].astype(np.float32)
    item_alpha = alpha[top:bottom, left:right]
    # Rotate about the centre with room for the corners; scale so the item's longer side is a
    # share of the canvas's shorter side (from small and far to filling the view).
    angle = rng.uniform(0, 360)
    scale = rng.uniform(0.35, 0.95) * min(height, width) / max(item.shape[:2])
    h, w = item.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    cos, sin = abs(matrix[0, 0]), abs(matrix[0, 1])
    out_w, out_h = int(h * sin + w * cos) + 2, int(h * cos + w * sin) + 2
    matrix[0, 2] += out_w / 2 - w / 2
    matrix[1, 2] += out_h / 2 - h / 2
    item = cv2.warpAffine(item, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR)
    item_alpha = cv2.warpAffine(item_alpha, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR)
    # Centre anywhere that keeps most of the item in view.
    cx = rng.uniform(0.3, 0.7) * width
    cy = rng.uniform(0.3, 0.7) * height
    x0, y0 = int(cx - out_w / 2), int(cy - out_h / 2)
    layer = np.zeros_like(canvas)
    layer_alpha = np.zeros((height, width), np.float32)
    sx0, sy0 = max(0, -x0), max(0, -y0)
    dx0, dy0 = max(0, x0), max(0, y0)
    dx1, dy1 = min(width, x0 + out_w), min(height, y0 + out_h)
    if dx1 <= dx0 or dy1 <= dy0:
        return canvas
    layer[dy0:dy1, dx0:dx1] = item[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    layer_alpha[dy0:dy1, dx0:dx1] = item_alpha[sy0 : sy0 + dy1 - dy0, sx0 : sx0 + dx1 - dx0]
    # A soft shadow, offset as from a lamp above and to one side.
    shift = rng.normal(0, 0.03, 2) * min(height, width)
    shadow = cv2.warpAffine(layer_alpha, np.float32([[1, 0, shift[0]], [0, 1, shift[1]]]), (width, height))
    shadow = cv2.GaussianBlur(shadow, (0, 0), sigmaX=rng.uniform(3, 15)) * rng.uniform(0.15, 0.55)
    canvas = canvas * (1 - shadow[..., None])
    a = layer_alpha[..., None]
    return canvas * (1 - a) + layer * a


def camera(rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
    """Another camera and light on a BGR float image; returns uint8."""
    height, width = image.shape[:2]
    # Uneven light: a linear ramp in a random direction.
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (xx / width - 0.5) * np.cos(angle) + (yy / height - 0.5) * np.sin(angle)
    image = image * (1 + np.float32(rng.uniform(0, 0.5)) * ramp)[..., None]
    gains = rng.uniform(0.78, 1.22, 3)
    image = image * (gains / gains.mean() * rng.uniform(0.55, 1.3)).astype(np.float32)
    lut = (255.0 * (np.arange(256) / 255.0) ** rng.uniform(0.8, 1.25)).astype(np.float32)
    image = lut[np.clip(image, 0, 255).astype(np.uint8)]
    grey = image.mean(axis=2, keepdims=True)
    image = grey + (image - grey) * np.float32(rng.uniform(0.6, 1.3))
    if rng.random() < 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.5, 2.2))
    if rng.random() < 0.35:
        image = image + rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 10)
    out = np.clip(image, 0, 255).astype(np.uint8)
    if rng.random() < 0.4:
        ok, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(25, 90))])
        if ok:
            out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return out


def _board_view(rng: np.random.Generator, bgr: np.ndarray) -> np.ndarray:
    """The original scene, re-framed: a random crop of 70-100 % of each side, flips, quarter turns."""
    height, width = bgr.shape[:2]
    ch, cw = int(height * rng.uniform(0.7, 1.0)), int(width * rng.uniform(0.7, 1.0))
    y0, x0 = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
    view = bgr[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        view = view[:, ::-1]
    if rng.random() < 0.5:
        view = view[::-1]
    return np.ascontiguousarray(np.rot90(view, int(rng.integers(0, 4))) if rng.random() < 0.3 else view)


def bin_scene(bgr: np.ndarray, alpha: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """One bin-like copy of a TrashNet photo (BGR uint8, its own size and aspect)."""
    if alpha is not None and rng.random() < PASTE_PROBABILITY:
        aspect = rng.choice([4 / 3, 1.0, 3 / 4], p=[0.5, 0.3, 0.2])
        # A little above the model's input, as a camera frame is: the runtime halves, then resizes.
        height = int(rng.integers(250, 340))
        width = int(height * aspect)
        canvas = draw_floor(rng, height, width)
        return camera(rng, _place_item(rng, bgr, alpha, canvas))
    return camera(rng, _board_view(rng, bgr).astype(np.float32))


def training_input(job: tuple) -> np.ndarray:
    """(path, seed, photo index, copy, size[, cut out]) -> one RGB model input: the photo itself (copy 0)
    or a bin-like copy, through the runtime's resize. Top-level and light, for worker processes.

    Only photos on TrashNet's board are cut out and pasted; a site's own photos (cut out False) already
    show a bin and only get the camera changes.
    """
    path, seed, index, copy, size_wh, *rest = job
    cut_out = rest[0] if rest else True
    if copy == 0:
        return data.load_rgb(Path(path), size_wh)
    bgr = cv2.imdecode(np.fromfile(path, dtype=np.uint8), cv2.IMREAD_COLOR)
    rng = np.random.default_rng([seed, index, copy])
    scene = bin_scene(bgr, item_mask(bgr) if cut_out else None, rng)
    return cv2.cvtColor(data.shrink(scene, size_wh), cv2.COLOR_BGR2RGB)
