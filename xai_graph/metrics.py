"""Saliency-map quality metrics: numpy arrays in, numbers out, for maps from any source.

Maps are [H, W] arrays in the pixels of the image they explain (any dtype); images are [H, W, C].
Where a metric needs the map in [0, 1] it is min-max scaled (`_unit_scale`), so a uint8 map and the
float map it was made from score alike; a constant map scales to all ones (no pixel is less salient
than another, so every pixel carries full weight).

Pointing game (Zhang et al. 2016, "Top-down neural attention by excitation backprop", ECCV): a hit when
the map's maximum lies inside a ground-truth box. A pixel (column c, row r) is inside the box
(x1, y1, x2, y2) when x1 - t <= c <= x2 + t and y1 - t <= r <= y2 + t, t the tolerance in pixels (both
ends inclusive; Zhang et al. use 15 pixels and a Euclidean distance, here the box grows by t on each
side). Ties: a hit when ANY maximal pixel is inside, the usual rule; so a constant map, where every
pixel is maximal, hits whenever a box covers a pixel: callers may flag constant maps. NaN pixels are
never maximal.

Insertion and deletion (Petsiuk et al. 2018, "RISE: Randomized input sampling for explanation of
black-box models", BMVC): pixels are ranked by the map (`saliency_order`); step i of `steps` changes
the first round(i * H * W / steps) of them (halves round up). Deletion replaces them by a baseline
(step 0 is the image, the last step the baseline); insertion starts from the baseline and restores
them from the image (step 0 the baseline, the last step the image). The caller scores the class on
each image and takes `auc`: the trapezoid rule over equal steps on [0, 1]. A good map has a low
deletion AUC and a high insertion AUC. Baselines (`baseline_image`): "blur", a Gaussian blur with
sigma = 5% of the image's shorter side (reflected border); "zero"; "mean", each channel's mean.
RISE's reference code deletes to zeros and inserts into a blurred copy.

ADCC (Poppi et al. 2021, "Revisiting the evaluation of class activation mapping for explainability: a
novel metric and experimental analysis", CVPR workshops; reference code github.com/aimagelab/ADCC).
With L the map min-max scaled to [0, 1] and x * L the explanation-only image (`explanation_only`):
average drop = max(0, Y - O) / Y, Y the class score on the image, O on x * L (per image; the paper
averages it over the data set, as `mean_interval` does); coherency = (1 + PCC(L, L')) / 2, PCC
Pearson's correlation between the map and the map L' the same method gives for x * L, so that -1..1
maps to 0..1 (Pearson's r ignores any positive affine scaling, so neither map needs scaling first).
Where r is undefined, a constant map, coherency is 0.0: a map without structure cannot cohere, and ADCC
then flags it with 0 (the reference code gives NaN there); a map holding NaN gives NaN, which
`mean_interval` leaves out (the reference code gives 0 there, which would score a broken map); complexity =
||L||_1 / (H * W), the mean of L; ADCC = 3 / (1 / coherency + 1 / (1 - complexity) + 1 / (1 - average
drop)), the harmonic mean of the three, 0 when any of the three factors is 0 (no division by zero).

Sanity check by model randomisation (Adebayo et al. 2018, "Sanity checks for saliency maps",
NeurIPS): the maps of a trained and of a randomised model should differ; `spearman` is their rank
correlation: Pearson's r of the average ranks (ties share the mean of their ranks), 0.0 when either
array is constant, NaN when either holds a NaN.

`mean_interval` summarises a metric over images: the mean and its 95% interval, mean -+ t * s /
sqrt(n), s the sample standard deviation and t the two-sided 97.5% quantile of Student's t with n - 1
degrees of freedom (a table for 1..30, 1.96 beyond); NaNs are left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import cv2
import numpy as np

BASELINES = ("blur", "zero", "mean")
PERTURBATION_MODES = ("deletion", "insertion")
BLUR_SIGMA_FRACTION = 0.05  # of the shorter side: blurs away texture at any input size

# Student's t, two-sided 95% (the 0.975 quantile), for 1..30 degrees of freedom.
_T_95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)
_Z_95 = 1.96


# -- helpers ---------------------------------------------------------------------------------------------
def _as_map(saliency: np.ndarray) -> np.ndarray:
    saliency = np.asarray(saliency)
    if saliency.ndim != 2:
        raise ValueError(f"a saliency map is [H, W]; got shape {saliency.shape}")
    return saliency


def _as_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"an image is [H, W, C]; got shape {image.shape}")
    return image


def _check_map_fits(saliency: np.ndarray, image: np.ndarray) -> None:
    if saliency.shape != image.shape[:2]:
        raise ValueError(f"the map is {saliency.shape} but the image is {image.shape[:2]}; resize the map first")


def _cast_like(values: np.ndarray, like: np.ndarray) -> np.ndarray:
    """`values` in the dtype of `like`: integers rounded and clipped to the dtype's range, not wrapped."""
    if np.issubdtype(like.dtype, np.integer):
        limits = np.iinfo(like.dtype)
        return np.clip(np.rint(values), limits.min, limits.max).astype(like.dtype)
    return np.asarray(values).astype(like.dtype)


def _unit_scale(saliency: np.ndarray) -> np.ndarray:
    values = np.asarray(saliency, dtype=np.float64)
    low, high = values.min(), values.max()
    if high == low:
        return np.ones_like(values)  # nothing is less salient than anything else: all carry full weight
    return (values - low) / (high - low)  # NaN propagates through low/high: a broken map gives NaN metrics


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson's r of two flat float arrays; None when either is constant (r undefined)."""
    if a.max() == a.min() or b.max() == b.min():  # exact test: a float mean of a constant need not be exact
        return None
    a_centred, b_centred = a - a.mean(), b - b.mean()
    r = float(np.dot(a_centred, b_centred) / math.sqrt(np.dot(a_centred, a_centred) * np.dot(b_centred, b_centred)))
    return min(1.0, max(-1.0, r))  # rounding can step just outside [-1, 1]


# -- pointing game ---------------------------------------------------------------------------------------
def _maximal_pixels(saliency: np.ndarray) -> np.ndarray:
    if np.issubdtype(saliency.dtype, np.floating):
        if np.isnan(saliency).all():
            return np.zeros(saliency.shape, dtype=bool)
        return saliency == np.nanmax(saliency)
    return saliency == saliency.max()


def pointing_game(
    saliency: np.ndarray, boxes: Sequence[tuple[float, float, float, float]], tolerance: float = 0.0
) -> bool:
    """True when a maximal pixel of the map lies in a box (x1, y1, x2, y2), both ends inclusive, grown by
    `tolerance` pixels on each side; ties hit when any maximal pixel is inside (see the module notes)."""
    saliency = _as_map(saliency)
    if not tolerance >= 0:
        raise ValueError(f"the tolerance is a number of pixels >= 0; got {tolerance}")
    rows, cols = np.nonzero(_maximal_pixels(saliency))
    for x1, y1, x2, y2 in boxes:
        inside = (
            (cols >= x1 - tolerance) & (cols <= x2 + tolerance) & (rows >= y1 - tolerance) & (rows <= y2 + tolerance)
        )
        if inside.any():
            return True
    return False


# -- insertion and deletion ------------------------------------------------------------------------------
def saliency_order(saliency: np.ndarray) -> np.ndarray:
    """Flat pixel indices, most salient first; ties keep the lower flat index first; NaN pixels last."""
    flat = _as_map(saliency).astype(np.float64).ravel()
    return np.argsort(-flat, kind="stable")  # numpy sorts NaN after every number


def _pixels_changed(step: int, steps: int, pixel_count: int) -> int:
    # round(step * pixel_count / steps) with halves up, in integers: no float error at any image size
    return (2 * step * pixel_count + steps) // (2 * steps)


def perturbed_batch(image: np.ndarray, baseline: np.ndarray, saliency: np.ndarray, steps: int, mode: str) -> np.ndarray:
    """steps + 1 images [steps + 1, H, W, C] in the image's dtype; step i has the first
    round(i * H * W / steps) pixels of `saliency_order` deleted (set to the baseline) or inserted
    (restored from the image into the baseline)."""
    image, baseline, saliency = _as_image(image), _as_image(baseline), _as_map(saliency)
    if baseline.shape != image.shape:
        raise ValueError(f"the baseline is {baseline.shape} but the image is {image.shape}")
    _check_map_fits(saliency, image)
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps is a whole number >= 1; got {steps!r}")
    if mode not in PERTURBATION_MODES:
        raise ValueError(f"mode is one of {', '.join(PERTURBATION_MODES)}; got {mode!r}")
    height, width, channels = image.shape
    pixel_count = height * width
    start, target = (image, baseline) if mode == "deletion" else (baseline, image)
    target = _cast_like(target, image).reshape(pixel_count, channels)
    order = saliency_order(saliency)
    # Each step copies the previous one and changes only its new pixels: one pass over the batch.
    batch = np.empty((steps + 1, pixel_count, channels), dtype=image.dtype)
    batch[0] = _cast_like(start, image).reshape(pixel_count, channels)
    done = 0
    for step in range(1, steps + 1):
        batch[step] = batch[step - 1]
        upto = _pixels_changed(step, steps, pixel_count)
        changed = order[done:upto]
        batch[step, changed] = target[changed]
        done = upto
    return batch.reshape(steps + 1, height, width, channels)


def baseline_image(image: np.ndarray, kind: str) -> np.ndarray:
    """The image that deletion ends at and insertion starts from, in the image's dtype and shape."""
    image = _as_image(image)
    if kind == "zero":
        return np.zeros_like(image)
    if kind == "mean":
        means = image.reshape(-1, image.shape[2]).mean(axis=0, dtype=np.float64)
        return _cast_like(np.broadcast_to(means, image.shape), image)
    if kind == "blur":
        sigma = BLUR_SIGMA_FRACTION * min(image.shape[:2])
        # One channel at a time, in float64: any dtype and channel count cv2 would refuse.
        planes = [
            cv2.GaussianBlur(
                np.ascontiguousarray(image[:, :, channel], dtype=np.float64),
                (0, 0),
                sigmaX=sigma,
                sigmaY=sigma,
                borderType=cv2.BORDER_REFLECT_101,
            )
            for channel in range(image.shape[2])
        ]
        return _cast_like(np.stack(planes, axis=-1), image)
    raise ValueError(f"the baseline is one of {', '.join(BASELINES)}; got {kind!r}")


def auc(scores: Sequence[float]) -> float:
    """Area under scores[i] at x = i / (len(scores) - 1) on [0, 1], by the trapezoid rule."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size < 2:
        raise ValueError(f"an AUC needs at least 2 scores (steps + 1); got {values.size}")
    return float((values[:-1] + values[1:]).sum() / (2 * (values.size - 1)))


# -- ADCC ------------------------------------------------------------------------------------------------
def average_drop(full_score: float, explanation_score: float) -> float:
    """max(0, Y - O) / Y, clipped to [0, 1] (scores are probabilities); 0.0 when Y <= 0: nothing to drop."""
    if math.isnan(full_score) or math.isnan(explanation_score):
        return math.nan
    if full_score <= 0:
        return 0.0
    return min(1.0, max(0.0, full_score - explanation_score) / full_score)


def coherency(saliency: np.ndarray, saliency_of_explanation: np.ndarray) -> float:
    """(1 + Pearson's r of the two maps) / 2; 0.0 when either map is constant, NaN when either holds NaN."""
    a = np.asarray(saliency, dtype=np.float64).ravel()
    b = np.asarray(saliency_of_explanation, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"the maps differ in size: {np.shape(saliency)} and {np.shape(saliency_of_explanation)}")
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    r = _pearson(a, b)
    return 0.0 if r is None else (r + 1.0) / 2.0


def complexity(saliency: np.ndarray) -> float:
    """||L||_1 / (H * W) with L the map min-max scaled to [0, 1]: 1.0 for a constant map."""
    return float(_unit_scale(_as_map(saliency)).mean())


def adcc(average_drop: float, coherency: float, complexity: float) -> float:
    """Harmonic mean of coherency, 1 - complexity and 1 - average drop; 0.0 when any of them is <= 0."""
    factors = (coherency, 1.0 - complexity, 1.0 - average_drop)
    if any(math.isnan(factor) for factor in factors):
        return math.nan
    if any(factor <= 0 for factor in factors):
        return 0.0  # the limit of the harmonic mean as a factor goes to 0
    return 3.0 / sum(1.0 / factor for factor in factors)


def explanation_only(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The image weighted by its map, x * L (L min-max scaled to [0, 1]), in the image's dtype."""
    image, saliency = _as_image(image), _as_map(saliency)
    _check_map_fits(saliency, image)
    weighted = image.astype(np.float64) * _unit_scale(saliency)[:, :, None]
    return _cast_like(weighted, image)


# -- sanity check ----------------------------------------------------------------------------------------
def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    _, group_of, group_sizes = np.unique(values, return_inverse=True, return_counts=True)
    last_rank = np.cumsum(group_sizes)
    return (last_rank - (group_sizes - 1) / 2.0)[group_of.ravel()]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two arrays of equal size (flattened), average ranks for ties;
    0.0 when either is constant, NaN when either holds a NaN."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.size != b.size:
        raise ValueError(f"the arrays differ in size: {a.size} and {b.size}")
    if a.size == 0:
        return 0.0
    if np.isnan(a).any() or np.isnan(b).any():
        return math.nan
    r = _pearson(_average_ranks(a), _average_ranks(b))
    return 0.0 if r is None else r


# -- summary ---------------------------------------------------------------------------------------------
def mean_interval(values: Sequence[float]) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its 95% interval under Student's t; NaNs left out;
    one value v gives (v, v, v), none gives (nan, nan, nan)."""
    data = np.asarray(values, dtype=np.float64).ravel()
    data = data[~np.isnan(data)]
    if data.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(data.mean())
    if data.size == 1:
        return mean, mean, mean
    degrees = data.size - 1
    critical = _T_95[degrees - 1] if degrees <= len(_T_95) else _Z_95
    half_width = critical * float(data.std(ddof=1)) / math.sqrt(data.size)
    return mean, mean - half_width, mean + half_width
