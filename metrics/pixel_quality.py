"""A weight-free image-quality figure: KID on pixel features (the test bed's stand-in for FID).

Each image becomes a thumbnail (box-downsampled, RGB in [0, 1]) and its joint colour
histogram; the KID of ``metrics.core.kernel_distance`` compares the generated images of
held-out prompts with reference images of the same captions. A blob, a wrong colour or a
shape that is not drawn moves both parts; two samples of one distribution score about 0.
Reported times 100 (KID is usually given times 1000 for Inception features; pixel features
give larger values).
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from metrics.core import kernel_distance

THUMBNAIL_SIZE = 12  # ours: 12x12 of the test bed's 48x48 keeps a 6-pixel shape's outline
HISTOGRAM_BINS = 4  # ours: per channel, 4^3 = 64 joint colour bins
# ours: the histogram (shares summing to 1) scaled so its squared norm is of the order of the
# thumbnail's (432 values around 0.4)
HISTOGRAM_WEIGHT = 10.0
# ours: the share of pixels per bin of the grey-level gradient magnitude (0..1 per pixel step),
# so that a blur or a blob (no sharp edge) differs from a drawn shape; weighted as the colours
EDGE_BINS = np.array([0.02, 0.05, 0.1, 0.2, 0.4])
EDGE_WEIGHT = 10.0
KID_SCALE = 100.0


def pixel_features(images: list[Image.Image]) -> torch.Tensor:
    """[n, 3 * THUMBNAIL_SIZE^2 + HISTOGRAM_BINS^3 + len(EDGE_BINS) + 1]: thumbnail pixels, then
    the weighted joint colour histogram and edge-strength histogram."""
    rows = []
    for image in images:
        rgb = image.convert("RGB")
        thumbnail = np.asarray(rgb.resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.BOX), np.float64) / 255
        bins = np.asarray(rgb, np.int64) * HISTOGRAM_BINS // 256  # [h, w, 3] in 0..bins-1
        index = (bins[..., 0] * HISTOGRAM_BINS + bins[..., 1]) * HISTOGRAM_BINS + bins[..., 2]
        histogram = np.bincount(index.ravel(), minlength=HISTOGRAM_BINS ** 3) / index.size
        grey = np.asarray(rgb.convert("L"), np.float64) / 255  # [h, w]
        edges = np.hypot(np.diff(grey, axis=0)[:, :-1], np.diff(grey, axis=1)[:-1])  # [h - 1, w - 1]
        sharpness = np.bincount(np.digitize(edges.ravel(), EDGE_BINS), minlength=len(EDGE_BINS) + 1) / edges.size
        rows.append(np.concatenate([thumbnail.ravel(), HISTOGRAM_WEIGHT * histogram, EDGE_WEIGHT * sharpness]))
    return torch.from_numpy(np.stack(rows))


def pixel_kid(generated: list[Image.Image], references: list[Image.Image]) -> float:
    """KID x 100 of ``generated`` against ``references`` on pixel features."""
    return KID_SCALE * kernel_distance(pixel_features(generated), pixel_features(references))
