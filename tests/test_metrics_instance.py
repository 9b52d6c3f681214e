"""AJI and GlaS object F1 / Dice / Hausdorff on tiny label maps with hand-computed values, plus MoNuSeg.

Every metric is called as metric(pred, truth); the tables list truth first because the comments read that way.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from medsamkit.core.errors import InputError
from medsamkit.metrics import aji, object_dice, object_f1, object_f1_counts, object_hausdorff

A = np.array
SQ2 = math.sqrt(2)

# ---------------------------------------------------------------- AJI
# Each row: truth, prediction, AJI as a fraction worked out in the comment.
AJI_CASES = [
    # G1 (4 px) best S1: 3 / 4.  G2 (4 px) best S3 (1 px): 1 / 4.  AJI = (3+1) / (4+4).
    pytest.param(
        A([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]),
        A([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]]),
        Fraction(1, 2),
        id="basic",
    ),
    # S1 (9 px) is the best match of both G1 and G2 (4 px each, inside S1): picked twice, union counted twice.
    pytest.param(
        A([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 0, 0]]),
        A([[1, 1, 1, 1], [1, 1, 1, 1], [1, 0, 0, 0]]),
        Fraction(8, 18),
        id="pred-picked-by-two-truths",
    ),
    # G1 vs S1: 1 / 2.  G2 overlaps nothing: +|G2| = 2.  S5 never picked: +|S5| = 2.  AJI = 1 / (2+2+2).
    pytest.param(
        A([[1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 2, 0], [0, 0, 2, 0]]),
        A([[1, 0, 0, 5], [0, 0, 0, 5], [0, 0, 0, 0], [0, 0, 0, 0]]),
        Fraction(1, 6),
        id="truth-without-overlap-and-unused-pred",
    ),
    # G1 (6 px): S4 IoU 2/6, S9 IoU 3/9 -> tie, smallest label S4; S9 unused adds 6. AJI = 2 / (6+6).
    pytest.param(
        A([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]),
        A([[4, 4, 9, 9, 9, 0], [0, 0, 9, 9, 9, 0]]),
        Fraction(1, 6),
        id="iou-tie-small-label-small-pred",
    ),
    # Same shapes, labels swapped: the tie now picks the large prediction. AJI = 3 / (9+2).
    pytest.param(
        A([[1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]]),
        A([[8, 8, 2, 2, 2, 0], [0, 0, 2, 2, 2, 0]]),
        Fraction(3, 11),
        id="iou-tie-small-label-large-pred",
    ),
    # G1 (3 px): S2 IoU 2/3 beats S1 IoU 1/(3+4-1) = 1/6. G2 (2 px) picks S1: IoU 2/4. AJI = (2+2) / (3+4).
    pytest.param(
        A([[1, 1, 1, 0], [0, 2, 2, 0], [0, 0, 0, 0]]),
        A([[2, 2, 1, 0], [0, 1, 1, 1], [0, 0, 0, 0]]),
        Fraction(4, 7),
        id="two-truths-two-preds",
    ),
    # G1 (5 px): S1 overlaps 2 (IoU 2/5), S2 (13 px) overlaps 3 (IoU 3/15). Largest IoU, not largest
    # overlap, wins: S1. S2 unused adds 13. AJI = 2 / (5+13).
    pytest.param(
        A([[1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0]]),
        A([[1, 1, 2, 2, 2], [2, 2, 2, 2, 2], [2, 2, 2, 2, 2]]),
        Fraction(1, 9),
        id="largest-iou-not-largest-overlap",
    ),
    pytest.param(np.zeros((3, 3), int), np.zeros((3, 3), int), Fraction(1), id="both-empty"),
    pytest.param(np.zeros((3, 3), int), A([[0, 1, 1], [0, 0, 0], [2, 0, 0]]), Fraction(0), id="truth-empty"),
    pytest.param(A([[0, 1, 1], [0, 0, 0], [2, 0, 0]]), np.zeros((3, 3), int), Fraction(0), id="pred-empty"),
    pytest.param(
        A([[0, 3, 3], [7, 0, 0], [7, 0, 0]]),
        A([[0, 1, 1], [2, 0, 0], [2, 0, 0]]),
        Fraction(1),
        id="identical-up-to-ids",
    ),
]


@pytest.mark.parametrize("truth, pred, expected", AJI_CASES)
def test_aji_table(truth, pred, expected):
    assert aji(pred, truth) == pytest.approx(float(expected), abs=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint32, np.int64, np.uint64, np.float32])
def test_any_integer_dtype_and_sparse_ids(dtype):
    truth, pred, expected = AJI_CASES[0].values
    # Ids 1 -> 200 and 2 -> 100 keep the same objects; relabelling must not change the score.
    remapped = np.select([truth == 1, truth == 2], [200, 100], 0).astype(dtype)
    assert aji(pred.astype(dtype), remapped) == pytest.approx(float(expected))


def test_negative_and_huge_ids_are_objects():
    truth = A([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]])
    pred = A([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]])
    assert aji(np.where(pred == 3, 10**15, pred), np.where(truth == 1, -5, truth)) == pytest.approx(1 / 2)


def test_non_integer_float_labels_rejected():
    with pytest.raises(InputError, match="truth label map has non-integer values"):
        aji(A([[1, 1]]), A([[0.5, 1.0]]))
    with pytest.raises(InputError, match="prediction contains NaN"):
        object_f1(A([[np.nan, 1.0]]), A([[0, 1]]))
    with pytest.raises(InputError, match=r"prediction shape \(2, 2\) does not match truth shape \(1, 2\)"):
        aji(np.zeros((2, 2), int), A([[0, 1]]))


# ---------------------------------------------------------------- GlaS
# Case "partner-le-half": G1 (4 px) top-left, G2 (6 px) right. S1 = 3 px of G1 (TP, 3/4 > 1/2),
# S2 = 2 px of G2 (partner G2, 2/6 <= 1/2: FP, and G2 IS FN: FN = n_truth - TP = 1), S3 = 2 px of
# background only (FP). F1 = 2 / (2 + 2 + 1).
GLAS_TRUTH = A([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2], [0, 0, 0, 2, 2], [0, 0, 0, 0, 0]])
GLAS_PRED = A([[1, 1, 0, 2, 0], [1, 0, 0, 2, 0], [0, 0, 0, 0, 0], [3, 3, 0, 0, 0]])
# Object Dice: S side (sum 7): 3/7*6/7 + 2/7*1/2 + 2/7*0 = 25/49; G side (sum 10): 4/10*6/7 + 6/10*1/2 = 9/14.
# Hausdorff: H(S1,G1) = 1, H(S2,G2) = sqrt2; S3 has no partner -> nearest G: H(S3,G1) = 3 < H(S3,G2) = sqrt18.
#   S side: (3*1 + 2*sqrt2 + 2*3)/7; G side: (4*1 + 6*sqrt2)/10; mean = (59 + 31 sqrt2)/70.
# Case "truth-without-partner": S1 = G1 exactly; G2 is a single pixel at (0,5) that nothing covers,
# paired with S1 at Hausdorff sqrt(1 + 25) = sqrt26 (S1's (1,0) to (0,5)). FN = 1.
# Case "partner-tie-*": S1 (row 0, 4 px) covers 2 px each of a 4-px G and a 2-px G; the tie goes to the
# smaller label. Small label on the 2-px G: TP (2/2), FN 1. Small label on the 4-px G: FP (2/4 is not
# > 1/2) and both G are FN (FN = n_truth - TP = 2).
GLAS_CASES = [
    pytest.param(
        GLAS_TRUTH,
        GLAS_PRED,
        (1, 2, 1),
        Fraction(2, 5),
        Fraction(113, 196),
        (59 + 31 * SQ2) / 70,
        id="partner-le-half-and-background-only-pred",
    ),
    pytest.param(
        A([[1, 1, 0, 0, 0, 2], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
        A([[1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0]]),
        (1, 0, 1),
        Fraction(2, 3),
        Fraction(9, 10),
        math.sqrt(26) / 10,
        id="truth-without-partner",
    ),
    # S side: Dice(S1, 2-px G) = 4/6. G side (sum 6): 4/6 * Dice(4-px G, S1)=1/2 + 2/6 * 2/3 = 5/9.
    # Hausdorff: H(S1, 2-px G at (0,2),(0,3)) = 2 ((0,0) to (0,2)); H(4-px G, S1) = 2 ((0,3) to (0,1)).
    #   Every pair is at 2, so the weighted mean is 2.
    pytest.param(
        A([[5, 5, 3, 3], [5, 5, 0, 0]]),
        A([[1, 1, 1, 1], [0, 0, 0, 0]]),
        (1, 0, 1),
        Fraction(2, 3),
        Fraction(11, 18),
        2.0,
        id="partner-tie-small-label-small-G",
    ),
    # S side: Dice(S1, 4-px G) = 4/8; G side as above 5/9 -> 19/36. Hausdorff: all pairs at 2 as above.
    pytest.param(
        A([[2, 2, 8, 8], [2, 2, 0, 0]]),
        A([[1, 1, 1, 1], [0, 0, 0, 0]]),
        (0, 1, 2),
        Fraction(0),
        Fraction(19, 36),
        2.0,
        id="partner-tie-small-label-large-G",
    ),
    # One truth id in two separate blobs is one object; the same split prediction matches it exactly.
    pytest.param(
        A([[4, 4, 0, 0], [0, 0, 0, 4]]),
        A([[9, 9, 0, 0], [0, 0, 0, 9]]),
        (1, 0, 0),
        Fraction(1),
        Fraction(1),
        0.0,
        id="non-contiguous-object",
    ),
    pytest.param(
        np.zeros((3, 3), int),
        np.zeros((3, 3), int),
        (0, 0, 0),
        Fraction(1),
        Fraction(1),
        0.0,
        id="both-empty",
    ),
    pytest.param(
        np.zeros((3, 3), int),
        A([[1, 0, 2], [0, 0, 0], [0, 0, 0]]),
        (0, 2, 0),
        Fraction(0),
        Fraction(0),
        math.inf,
        id="truth-empty",
    ),
    pytest.param(
        A([[1, 0, 2], [0, 0, 0], [0, 0, 0]]),
        np.zeros((3, 3), int),
        (0, 0, 2),
        Fraction(0),
        Fraction(0),
        math.inf,
        id="pred-empty",
    ),
]


@pytest.mark.parametrize("truth, pred, counts, f1, odice, ohausdorff", GLAS_CASES)
def test_glas_table(truth, pred, counts, f1, odice, ohausdorff):
    assert object_f1_counts(pred, truth) == counts
    assert object_f1(pred, truth) == pytest.approx(float(f1), abs=1e-12)
    assert object_dice(pred, truth) == pytest.approx(float(odice), abs=1e-12)
    assert object_hausdorff(pred, truth) == pytest.approx(ohausdorff, abs=1e-12)


def test_glas_nearest_pairing_picks_smallest_hausdorff_not_first_label():
    # S1 overlaps nothing; G1 (far, 1 px) has a larger Hausdorff distance to it than G2 (adjacent).
    truth = A([[1, 0, 0, 0, 0, 0, 2, 2]])
    pred = A([[0, 0, 0, 0, 0, 0, 0, 0]])
    pred[0, 5] = 1
    # S1 -> nearest G2: max(h(S1,G2)=1, h(G2,S1)=2) = 2 (G1 at distance 5). G1 -> S1: 5. G2 -> S1: 2.
    # S side 2; G side 1/3*5 + 2/3*2 = 3; mean 5/2.
    assert object_hausdorff(pred, truth) == pytest.approx(5 / 2)
    assert object_f1_counts(pred, truth) == (0, 1, 2)


def gland_strip() -> tuple[np.ndarray, np.ndarray]:
    """2x18 strip: six 2x2 truth glands G1..G6 (columns 0-1, 3-4, ..., 15-16) and five predictions.

    S1 = G1; S2 = 3 px of G2; S3 = G3 plus column 8; S4 = half of G4 (2/4, not > 1/2); S5 = column 17,
    background only. G5 and G6 are untouched.
    """
    truth = np.zeros((2, 18), dtype=np.int32)
    for k in range(6):
        truth[:, 3 * k : 3 * k + 2] = k + 1
    pred = np.zeros((2, 18), dtype=np.int32)
    pred[:, 0:2] = 1
    pred[0, 3:5] = 2
    pred[1, 3] = 2
    pred[:, 6:9] = 3
    pred[:, 9] = 4
    pred[:, 17] = 5
    return pred, truth


def test_glas_false_negatives_follow_official_f1score():
    pred, truth = gland_strip()
    # TP: S1, S2 (3/4 > 1/2), S3 (4/4); FP = 5 - 3 (S4, S5); FN = 6 - 3: G4 (its only partner S4 covers
    # exactly half), G5, G6. F1 = 6 / 11 = 0.545. The rule "FN = glands nobody partners" would give
    # FN 2 (G5, G6) and F1 6 / 10 = 0.600.
    assert object_f1_counts(pred, truth) == (3, 2, 3)
    assert object_f1(pred, truth) == pytest.approx(6 / 11)
    assert round(object_f1(pred, truth), 3) == 0.545


def test_glas_partner_is_the_majority_object():
    # S1 (columns 0-3, 8 px) holds all of G1 (1 px) but 4 px of G2 (6 px): its partner is G2, the label
    # most frequent under it, not the gland it covers best. 4/6 > 1/2: TP; G1 is a false negative.
    truth = np.zeros((2, 6), dtype=np.int32)
    truth[0, 0] = 1
    truth[:, 2:5] = 2
    pred = np.zeros((2, 6), dtype=np.int32)
    pred[:, 0:4] = 1
    assert object_f1_counts(pred, truth) == (1, 0, 1)


def brute_force_aji(pred: np.ndarray, truth: np.ndarray) -> float:
    """docs/protocols.md AJI written as literally as possible, one object at a time."""
    gs = [g for g in np.unique(truth) if g]
    ss = [s for s in np.unique(pred) if s]
    if not gs and not ss:
        return 1.0
    inter_sum = union_sum = 0
    picked = set()
    for g in gs:
        gm = truth == g
        best, best_iou = None, 0.0
        for s in ss:  # ascending labels, strict '>' keeps the smallest label on ties
            sm = pred == s
            i = np.count_nonzero(gm & sm)
            if i and Fraction(i, np.count_nonzero(gm | sm)) > best_iou:
                best, best_iou = s, Fraction(i, np.count_nonzero(gm | sm))
        if best is None:
            union_sum += np.count_nonzero(gm)
        else:
            picked.add(best)
            inter_sum += np.count_nonzero(gm & (pred == best))
            union_sum += np.count_nonzero(gm | (pred == best))
    union_sum += sum(np.count_nonzero(pred == s) for s in ss if s not in picked)
    return inter_sum / union_sum


def test_aji_matches_literal_definition_on_random_maps():
    rng = np.random.default_rng(7)
    for _ in range(30):
        truth = rng.integers(0, 5, size=(8, 8)) * (rng.random((8, 8)) > 0.3)
        pred = rng.integers(0, 6, size=(8, 8)) * (rng.random((8, 8)) > 0.3)
        assert aji(pred, truth) == pytest.approx(brute_force_aji(pred, truth), abs=1e-12)


def brute_force_glas(pred: np.ndarray, truth: np.ndarray) -> tuple[tuple[int, int, int], float, float]:
    """The official GlaS rules (F1score.m, ObjectDice.m, ObjectHausdorff.m) written literally."""
    from scipy.spatial.distance import directed_hausdorff

    def objects(lab):
        return {int(v): lab == v for v in np.unique(lab) if v}

    def partner(mask, other):
        under = other[mask & (other > 0)]
        if under.size == 0:
            return None
        ids, counts = np.unique(under, return_counts=True)
        return int(ids[np.argmax(counts)])  # argmax takes the first maximum: the smallest id

    def hausdorff(a, b):
        pa, pb = np.argwhere(a), np.argwhere(b)
        return max(directed_hausdorff(pa, pb)[0], directed_hausdorff(pb, pa)[0])

    gs, ss = objects(truth), objects(pred)
    s_partner = {s: partner(m, truth) for s, m in ss.items()}
    g_partner = {g: partner(m, pred) for g, m in gs.items()}
    tp = sum(1 for s, g in s_partner.items() if g and 2 * np.count_nonzero(ss[s] & gs[g]) > gs[g].sum())
    fn = len(gs) - tp  # F1score.m: FN = numG - TP

    def side(own, other, partners, score):
        total = sum(m.sum() for m in own.values())
        return sum(m.sum() / total * score(m, partners[k], other) for k, m in own.items())

    def dice_score(m, k, other):
        return 0.0 if k is None else 2 * np.count_nonzero(m & other[k]) / (m.sum() + other[k].sum())

    def hd_score(m, k, other):
        if k is not None:
            return hausdorff(m, other[k])
        return min(hausdorff(m, o) for o in other.values())

    odice = 0.5 * (side(ss, gs, s_partner, dice_score) + side(gs, ss, g_partner, dice_score))
    ohd = 0.5 * (side(ss, gs, s_partner, hd_score) + side(gs, ss, g_partner, hd_score))
    return (tp, len(ss) - tp, fn), odice, ohd


def test_glas_matches_literal_definition_on_random_maps():
    from scipy import ndimage

    rng = np.random.default_rng(11)
    for _ in range(20):
        # Blobs with random ids (some ids shared by two blobs) on a 16x16 image.
        truth = ndimage.label(ndimage.binary_dilation(rng.random((16, 16)) > 0.93))[0]
        pred = ndimage.label(ndimage.binary_dilation(rng.random((16, 16)) > 0.93))[0]
        truth = np.where(truth > 0, rng.integers(1, 6, truth.max() + 1)[truth], 0)
        if not truth.any() or not pred.any():
            continue
        counts, odice, ohd = brute_force_glas(pred, truth)
        assert object_f1_counts(pred, truth) == counts
        assert object_dice(pred, truth) == pytest.approx(odice, abs=1e-12)
        assert object_hausdorff(pred, truth) == pytest.approx(ohd, abs=1e-9)


# ---------------------------------------------------------------- real data
def read_label(path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_monuseg_self_agreement_and_shift(monuseg_root):
    # Timing of these calls: benchmarks/metrics_speed.py (wall-clock limits do not belong in unit tests).
    path = sorted((monuseg_root / "test" / "labels").glob("*.png"))[0]
    label = read_label(path)
    n = len(np.unique(label)) - 1
    assert label.shape == (1000, 1000) and n > 300
    assert aji(label, label) == 1.0
    assert object_f1(label, label) == 1.0
    assert object_f1_counts(label, label) == (n, 0, 0)
    assert object_dice(label, label) == 1.0
    shifted = np.roll(label, 3, axis=1)
    score = aji(shifted, label)
    assert 0.3 < score < 1.0  # a 3-px shift of ~20-px nuclei loses a good part of each overlap
