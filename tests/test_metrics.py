"""xai_graph.metrics against references written here from the papers' definitions, pixel by pixel in
plain loops (deliberately unlike the vectorised library code), on small maps whose answers are known."""

import math
from fractions import Fraction

import numpy as np
import pytest

from xai_graph import metrics


# -- references, from the definitions --------------------------------------------------------------------
def reference_pointing_game(saliency, boxes, tolerance=0.0):
    """Zhang et al.: the maximum of the map is in a box; any of several equal maxima will do."""
    height, width = saliency.shape
    best = max(float(saliency[r, c]) for r in range(height) for c in range(width))
    for r in range(height):
        for c in range(width):
            if float(saliency[r, c]) != best:
                continue
            for x1, y1, x2, y2 in boxes:
                if x1 - tolerance <= c <= x2 + tolerance and y1 - tolerance <= r <= y2 + tolerance:
                    return True
    return False


def reference_order(saliency):
    flat = [float(v) for v in saliency.ravel()]
    return sorted(range(len(flat)), key=lambda index: (-flat[index], index))


def reference_count(step, steps, pixels):
    """round(step * pixels / steps), halves up, in exact fractions."""
    return math.floor(Fraction(step * pixels, steps) + Fraction(1, 2))


def reference_auc(scores):
    total, width = 0.0, 1.0 / (len(scores) - 1)
    for left, right in zip(scores[:-1], scores[1:]):
        total += width * (left + right) / 2  # one trapezoid per step
    return total


def reference_pearson(a, b):
    a, b = [float(v) for v in np.ravel(a)], [float(v) for v in np.ravel(b)]
    mean_a, mean_b = sum(a) / len(a), sum(b) / len(b)
    covariance = sum((x - mean_a) * (y - mean_b) for x, y in zip(a, b))
    spread_a = math.sqrt(sum((x - mean_a) ** 2 for x in a))
    spread_b = math.sqrt(sum((y - mean_b) ** 2 for y in b))
    return covariance / (spread_a * spread_b)


def reference_ranks(values):
    """Rank of v = (number of smaller values) + (number of equal values + 1) / 2: the mean tied rank."""
    values = [float(v) for v in np.ravel(values)]
    return [sum(w < v for w in values) + (sum(w == v for w in values) + 1) / 2 for v in values]


def reference_unit_scale(saliency):
    values = [float(v) for v in saliency.ravel()]
    low, high = min(values), max(values)
    return [1.0 if high == low else (v - low) / (high - low) for v in values]


def peak_map(height=20, width=30, row=10, col=20):
    saliency = np.zeros((height, width), dtype=np.float32)
    saliency[row, col] = 1.0
    return saliency


# -- pointing game ---------------------------------------------------------------------------------------
def test_pointing_game_hits_a_peak_inside_a_box_and_misses_one_outside():
    saliency = peak_map(row=10, col=20)
    assert metrics.pointing_game(saliency, [(15, 5, 25, 15)]) is True
    assert metrics.pointing_game(saliency, [(0, 0, 10, 10)]) is False
    assert metrics.pointing_game(saliency, [(0, 0, 10, 10), (18, 8, 22, 12)]) is True  # any box
    assert metrics.pointing_game(saliency, []) is False
    assert metrics.pointing_game(saliency, [(20, 10, 20, 10)]) is True  # edges inclusive: the one pixel
    assert metrics.pointing_game(saliency, [(0, 0, 19.5, 30)]) is False
    assert metrics.pointing_game(saliency, [(20.5, 0, 29, 19)]) is False


def test_pointing_game_tolerance_turns_a_near_miss_into_a_hit():
    saliency = peak_map(row=10, col=20)
    near = [(10, 5, 17, 15)]  # three columns short of the peak
    assert metrics.pointing_game(saliency, near) is False
    assert metrics.pointing_game(saliency, near, tolerance=2) is False
    assert metrics.pointing_game(saliency, near, tolerance=3) is True
    with pytest.raises(ValueError):
        metrics.pointing_game(saliency, near, tolerance=-1)


def test_pointing_game_ties_hit_when_any_maximum_is_inside():
    saliency = peak_map(row=10, col=20)
    saliency[2, 3] = 1.0
    assert metrics.pointing_game(saliency, [(0, 0, 5, 5)]) is True
    assert metrics.pointing_game(saliency, [(15, 5, 25, 15)]) is True
    assert metrics.pointing_game(saliency, [(6, 6, 12, 12)]) is False


def test_pointing_game_constant_map_hits_any_box_that_covers_a_pixel():
    constant = np.full((20, 30), 7, dtype=np.uint8)
    assert metrics.pointing_game(constant, [(3, 4, 5, 6)]) is True
    assert metrics.pointing_game(constant, [(40, 0, 50, 10)]) is False  # right of the image
    assert metrics.pointing_game(constant, [(3.2, 4.2, 3.8, 4.8)]) is False  # between pixel centres


def test_pointing_game_ignores_nan_pixels():
    saliency = peak_map(row=10, col=20)
    saliency[0, 0] = np.nan
    assert metrics.pointing_game(saliency, [(0, 0, 1, 1)]) is False
    assert metrics.pointing_game(saliency, [(20, 10, 20, 10)]) is True
    assert metrics.pointing_game(np.full((4, 4), np.nan), [(0, 0, 3, 3)]) is False  # no maximum at all


def test_pointing_game_matches_the_reference_on_random_maps_with_ties():
    generator = np.random.default_rng(0)
    for _ in range(200):
        saliency = generator.integers(0, 4, size=(6, 7))  # few levels: many tied maxima
        corners = generator.uniform(-2, 7, size=(generator.integers(0, 3), 2))
        boxes = [(x1, y1, x1 + generator.uniform(0, 3), y1 + generator.uniform(0, 3)) for x1, y1 in corners]
        tolerance = float(generator.choice([0.0, 0.5, 1.0]))
        assert metrics.pointing_game(saliency, boxes, tolerance) == reference_pointing_game(saliency, boxes, tolerance)


# -- ordering and perturbation ---------------------------------------------------------------------------
def test_saliency_order_matches_the_reference_with_ties_kept_in_index_order():
    generator = np.random.default_rng(1)
    for dtype in (np.uint8, np.int16, np.float32, np.float64):
        saliency = generator.integers(0, 5, size=(7, 9)).astype(dtype)
        assert metrics.saliency_order(saliency).tolist() == reference_order(saliency)
    assert metrics.saliency_order(np.array([[1.0, np.nan], [2.0, 1.0]])).tolist() == [2, 0, 3, 1]


def make_image_pair(height=6, width=5, channels=3, dtype=np.uint8):
    """An image and a baseline that differ at every pixel and channel, so each change shows."""
    generator = np.random.default_rng(2)
    image = generator.integers(100, 200, size=(height, width, channels)).astype(dtype)
    baseline = generator.integers(0, 50, size=(height, width, channels)).astype(dtype)
    return image, baseline


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
@pytest.mark.parametrize("steps", [1, 4, 7, 30, 45])
def test_deletion_changes_exactly_the_first_k_ranked_pixels_at_each_step(dtype, steps):
    image, baseline = make_image_pair(dtype=dtype)
    saliency = np.random.default_rng(3).integers(0, 6, size=image.shape[:2])
    batch = metrics.perturbed_batch(image, baseline, saliency, steps, "deletion")
    assert batch.shape == (steps + 1, *image.shape) and batch.dtype == image.dtype
    assert np.array_equal(batch[0], image) and np.array_equal(batch[-1], baseline)
    order = reference_order(saliency)
    width = image.shape[1]
    for step in range(steps + 1):
        count = reference_count(step, steps, saliency.size)
        for rank, index in enumerate(order):
            row, col = divmod(index, width)
            expected = baseline[row, col] if rank < count else image[row, col]
            assert np.array_equal(batch[step, row, col], expected), (step, rank)


def test_insertion_starts_at_the_baseline_and_restores_the_ranked_pixels():
    image, baseline = make_image_pair()
    saliency = np.random.default_rng(4).random(image.shape[:2])
    steps = 8
    batch = metrics.perturbed_batch(image, baseline, saliency, steps, "insertion")
    assert np.array_equal(batch[0], baseline) and np.array_equal(batch[-1], image)
    order = reference_order(saliency)
    for step in range(steps + 1):
        restored = np.all(batch[step] == image, axis=-1)
        count = reference_count(step, steps, saliency.size)
        assert int(restored.sum()) == count
        assert sorted(np.flatnonzero(restored).tolist()) == sorted(order[:count])


def test_step_counts_round_halves_up_and_a_float_baseline_takes_the_image_dtype():
    image, baseline = make_image_pair(height=2, width=5, channels=1)
    batch = metrics.perturbed_batch(image, baseline, np.zeros((2, 5)), 4, "deletion")
    changed = [int((batch[step] != image).any(axis=-1).sum()) for step in range(5)]
    assert changed == [0, 3, 5, 8, 10]  # 2.5 -> 3 and 7.5 -> 8
    batch = metrics.perturbed_batch(image, np.full(image.shape, 99.6), np.zeros((2, 5)), 2, "deletion")
    assert batch.dtype == np.uint8 and int(batch[-1, 0, 0, 0]) == 100  # rounded, not truncated


def test_perturbed_batch_rejects_bad_arguments():
    image, baseline = make_image_pair()
    saliency = np.zeros(image.shape[:2])
    for arguments in (
        (baseline, saliency, 0, "deletion"),
        (baseline, saliency, 2.0, "deletion"),
        (baseline, saliency, 4, "delete"),
        (baseline[:-1], saliency, 4, "deletion"),
        (baseline, saliency.T, 4, "deletion"),
    ):
        with pytest.raises(ValueError):
            metrics.perturbed_batch(image, *arguments)


def test_perturbed_batch_at_224_pixels_and_32_steps_is_one_plain_array():
    image = np.ones((224, 224, 3), dtype=np.float32)
    batch = metrics.perturbed_batch(
        image, np.zeros_like(image), np.random.default_rng(5).random((224, 224)), 32, "insertion"
    )
    assert batch.shape == (33, 224, 224, 3) and batch.nbytes == 33 * 224 * 224 * 3 * 4
    assert batch[16].sum() == 3 * reference_count(16, 32, 224 * 224)


# -- the toy model: a good map deletes fast and inserts fast ---------------------------------------------
def object_scene(size=16):
    mask = np.zeros((size, size), dtype=bool)
    mask[4:9, 6:12] = True
    return np.where(mask, 1.0, 0.3)[:, :, None], mask  # a bright object on a dim background, one channel


def toy_scores(batch, mask):
    """A 'model' whose class score is the mean brightness of the object's pixels."""
    return [float(np.mean([frame[r, c, 0] for r, c in zip(*np.nonzero(mask))])) for frame in batch]


def test_the_object_mask_deletes_faster_and_inserts_faster_than_its_reverse():
    image, mask = object_scene()
    baseline = metrics.baseline_image(image, "zero")
    curves = {}
    for name, saliency in (("mask", mask.astype(float)), ("reversed", 1.0 - mask)):
        for mode in metrics.PERTURBATION_MODES:
            batch = metrics.perturbed_batch(image, baseline, saliency, 16, mode)
            curves[name, mode] = metrics.auc(toy_scores(batch, mask))
    assert curves["mask", "deletion"] < curves["mask", "insertion"]
    assert curves["reversed", "deletion"] > curves["reversed", "insertion"]
    assert curves["mask", "deletion"] < curves["reversed", "deletion"]


def test_deletion_and_insertion_auc_of_the_perfect_map_are_exact():
    image, mask = object_scene()
    pixels, object_pixels = mask.size, int(mask.sum())
    baseline = np.zeros_like(image)
    # One pixel a step: the score falls linearly to 0 over the object's share of the pixels, so the
    # trapezoid rule is exact: the deletion area is the triangle object_pixels / pixels / 2.
    deletion = metrics.perturbed_batch(image, baseline, mask.astype(float), pixels, "deletion")
    insertion = metrics.perturbed_batch(image, baseline, mask.astype(float), pixels, "insertion")
    assert metrics.auc(toy_scores(deletion, mask)) == pytest.approx(object_pixels / pixels / 2)
    assert metrics.auc(toy_scores(insertion, mask)) == pytest.approx(1 - object_pixels / pixels / 2)


# -- baselines and AUC -----------------------------------------------------------------------------------
def test_zero_and_mean_baselines():
    image = np.random.default_rng(6).integers(0, 256, size=(5, 4, 3)).astype(np.uint8)
    zero = metrics.baseline_image(image, "zero")
    assert zero.dtype == np.uint8 and zero.shape == image.shape and not zero.any()
    mean = metrics.baseline_image(image, "mean")
    assert mean.dtype == np.uint8 and mean.shape == image.shape
    for channel in range(3):
        total = sum(int(image[r, c, channel]) for r in range(5) for c in range(4))
        assert np.all(mean[:, :, channel] == round(total / 20))
    with pytest.raises(ValueError):
        metrics.baseline_image(image, "noise")


def test_blur_baseline_spreads_an_impulse_by_five_percent_of_the_shorter_side():
    height, width = 100, 200
    image = np.zeros((height, width, 2), dtype=np.float32)
    image[50, 100, 0] = 1.0
    blurred = metrics.baseline_image(image, "blur")
    assert blurred.dtype == np.float32 and blurred.shape == image.shape
    assert not blurred[:, :, 1].any()  # channels blur apart
    plane = blurred[:, :, 0].astype(np.float64)
    assert plane.sum() == pytest.approx(1.0, abs=1e-3)
    columns = np.arange(width)
    variance = float((plane.sum(axis=0) * (columns - 100) ** 2).sum() / plane.sum())
    assert math.sqrt(variance) == pytest.approx(0.05 * height, rel=0.05)  # sigma = 5 pixels
    constant = np.full((30, 40, 3), 77, dtype=np.uint8)
    assert np.array_equal(metrics.baseline_image(constant, "blur"), constant)


def test_auc_of_a_constant_a_ramp_and_random_scores():
    assert metrics.auc([0.7] * 9) == pytest.approx(0.7)
    assert metrics.auc(np.linspace(0, 1, 33)) == pytest.approx(0.5)
    assert metrics.auc([0.0, 1.0, 0.0]) == pytest.approx(0.5)
    scores = np.random.default_rng(7).random(17).tolist()
    assert metrics.auc(scores) == pytest.approx(reference_auc(scores))
    with pytest.raises(ValueError):
        metrics.auc([0.5])


# -- ADCC ------------------------------------------------------------------------------------------------
def test_average_drop_on_known_scores():
    assert metrics.average_drop(0.8, 0.6) == pytest.approx(0.25)
    assert metrics.average_drop(0.8, 0.9) == 0.0  # a rise is no drop
    assert metrics.average_drop(0.5, 0.0) == 1.0
    assert metrics.average_drop(0.0, 0.3) == 0.0
    assert math.isnan(metrics.average_drop(math.nan, 0.3))


def test_coherency_is_the_pearson_correlation_mapped_to_zero_one():
    generator = np.random.default_rng(8)
    a, b = generator.random((8, 8)), generator.random((8, 8))
    assert metrics.coherency(a, b) == pytest.approx((reference_pearson(a, b) + 1) / 2)
    assert metrics.coherency(a, a) == pytest.approx(1.0)
    assert metrics.coherency(a, -a) == pytest.approx(0.0)
    assert metrics.coherency(a, 3 * b + 2) == pytest.approx(metrics.coherency(a, b))  # scaling-free
    assert metrics.coherency(a, np.full((8, 8), 0.1)) == 0.0  # r undefined
    assert math.isnan(metrics.coherency(a, np.where(b > 0.5, np.nan, b)))
    with pytest.raises(ValueError):
        metrics.coherency(a, b[:4])


def test_complexity_is_the_mean_of_the_min_max_scaled_map():
    generator = np.random.default_rng(9)
    saliency = generator.random((6, 7)) * 40 - 10
    expected = sum(reference_unit_scale(saliency)) / saliency.size
    assert metrics.complexity(saliency) == pytest.approx(expected)
    half = np.zeros((4, 4))
    half[:2] = 5.0
    assert metrics.complexity(half) == pytest.approx(0.5)
    assert metrics.complexity(np.full((4, 4), 3.0)) == 1.0
    assert metrics.complexity((half * 51).astype(np.uint8)) == pytest.approx(0.5)


def test_adcc_is_the_harmonic_mean_and_zero_when_a_factor_is_zero():
    assert metrics.adcc(0.0, 1.0, 0.0) == pytest.approx(1.0)
    assert metrics.adcc(0.25, 0.5, 0.5) == pytest.approx(3 / (1 / 0.5 + 1 / 0.5 + 1 / 0.75))
    assert metrics.adcc(0.2, 0.9, 0.3) == pytest.approx(3 / (1 / 0.9 + 1 / 0.7 + 1 / 0.8))
    assert metrics.adcc(0.2, 0.0, 0.3) == 0.0
    assert metrics.adcc(0.2, 0.9, 1.0) == 0.0
    assert metrics.adcc(1.0, 0.9, 0.3) == 0.0
    assert math.isnan(metrics.adcc(0.2, math.nan, 0.3))


def test_explanation_only_weights_each_pixel_by_the_scaled_map():
    generator = np.random.default_rng(10)
    image = generator.integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    saliency = generator.random((5, 6)) * 8 - 3
    weights = reference_unit_scale(saliency)
    result = metrics.explanation_only(image, saliency)
    assert result.dtype == np.uint8
    for index, weight in enumerate(weights):
        row, col = divmod(index, 6)
        for channel in range(3):
            assert int(result[row, col, channel]) == round(int(image[row, col, channel]) * weight)
    as_float = metrics.explanation_only(image.astype(np.float32), saliency)
    assert as_float.dtype == np.float32
    assert np.allclose(as_float, image * np.array(weights).reshape(5, 6, 1), atol=1e-4)
    assert np.array_equal(metrics.explanation_only(image, np.full((5, 6), 0.2)), image)  # constant: kept
    with pytest.raises(ValueError):
        metrics.explanation_only(image, saliency.T)


# -- sanity check ----------------------------------------------------------------------------------------
def test_spearman_matches_the_reference_with_ties():
    generator = np.random.default_rng(12)
    for _ in range(20):
        a, b = generator.integers(0, 5, size=(6, 6)), generator.integers(0, 5, size=36)
        assert metrics.spearman(a, b) == pytest.approx(reference_pearson(reference_ranks(a), reference_ranks(b)))


def test_spearman_of_monotone_and_reversed_transforms():
    a = np.random.default_rng(13).random((9, 9))
    assert metrics.spearman(a, np.exp(3 * a)) == pytest.approx(1.0)
    assert metrics.spearman(a, a**3 + 5) == pytest.approx(1.0)
    assert metrics.spearman(a, -a) == pytest.approx(-1.0)
    assert metrics.spearman(a, 1 / (a + 1)) == pytest.approx(-1.0)
    assert metrics.spearman([1, 2, 2, 3], [10, 20, 20, 30]) == pytest.approx(1.0)
    assert metrics.spearman(a, np.zeros((9, 9))) == 0.0 and metrics.spearman(np.full(81, 2), a) == 0.0
    assert math.isnan(metrics.spearman(a, np.where(a > 0.5, np.nan, a)))
    with pytest.raises(ValueError):
        metrics.spearman(a, a[:5])


# -- summary ---------------------------------------------------------------------------------------------
def test_mean_interval_against_hand_computed_values():
    # n = 5, mean 3, s = sqrt(2.5), t(4) = 2.776: half width 2.776 * 1.58114 / 2.23607 = 1.96296
    mean, low, high = metrics.mean_interval([1, 2, 3, 4, 5])
    assert (mean, low, high) == pytest.approx((3.0, 1.03704, 4.96296), abs=1e-4)
    assert metrics.mean_interval([1, math.nan, 2, 3, 4, 5]) == pytest.approx((mean, low, high))
    # n = 40 of 0 and 1: s = sqrt(10 / 39) = 0.506370, normal 1.96: half width 0.156925
    assert metrics.mean_interval([0, 1] * 20) == pytest.approx((0.5, 0.343075, 0.656925), abs=1e-5)
    # n = 2: t(1) = 12.706, s = sqrt(2), half width 12.706
    assert metrics.mean_interval([0, 2]) == pytest.approx((1.0, -11.706, 13.706))
    assert metrics.mean_interval([0.42]) == (0.42, 0.42, 0.42)
    assert metrics.mean_interval([math.nan, 0.42]) == (0.42, 0.42, 0.42)
    assert all(math.isnan(v) for v in metrics.mean_interval([]))
    assert all(math.isnan(v) for v in metrics.mean_interval([math.nan, math.nan]))


def student_t_cdf(t, degrees, intervals=20000):
    """P(T <= t) by the trapezoid rule over Student's t density, from 0 (where the CDF is 1/2)."""
    scale = math.exp(math.lgamma((degrees + 1) / 2) - math.lgamma(degrees / 2)) / math.sqrt(degrees * math.pi)
    total, width = 0.0, t / intervals
    for k in range(intervals + 1):
        x = k * width
        weight = 0.5 if k in (0, intervals) else 1.0
        total += weight * scale * (1 + x * x / degrees) ** (-(degrees + 1) / 2)
    return 0.5 + total * width


@pytest.mark.parametrize("n", [2, 3, 4, 6, 11, 16, 25, 31])
def test_mean_interval_uses_the_97_5_percent_quantile_of_student_t(n):
    data = list(range(n))
    mean, low, high = metrics.mean_interval(data)
    standard_error = float(np.std(data, ddof=1)) / math.sqrt(n)
    critical = (high - mean) / standard_error
    assert mean - low == pytest.approx(high - mean)
    assert student_t_cdf(critical, n - 1) == pytest.approx(0.975, abs=2e-4)
