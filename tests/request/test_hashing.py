import numpy as np
import pytest

from request.hashing import hash_ids, hash_rows

# (id, k, h_k(id), row with 1031 rows, row with 1000003 rows): the golden values of the
# interop contract's hashing table (docs/interop.md states the contract and more of them).
GOLDEN = [
    (0, 0, 16294208416658607535, 96, 950924),
    (0, 1, 7960286522194355700, 231, 152395),
    (1, 0, 10451216379200822465, 216, 868848),
    (1, 1, 13757245211066428519, 30, 35258),
    (2, 0, 10905525725756348110, 831, 518615),
    (2, 1, 13819372491320860226, 657, 154965),
    (42, 0, 13679457532755275413, 494, 927626),
    (42, 1, 2949826092126892291, 432, 507320),
    (1234567890123456789, 0, 11026200465730903474, 95, 76727),
    (1234567890123456789, 1, 8137580871910607288, 219, 413727),
    (9223372036854775808, 0, 5196802822362493915, 596, 636362),
    (9223372036854775808, 1, 14154714916085338130, 31, 124707),
    (18446744073709551615, 0, 16490336266968443936, 717, 871215),
    (18446744073709551615, 1, 16834447057089888969, 470, 112444),
]


@pytest.mark.parametrize("x, k, h, row_1031, row_1000003", GOLDEN)
def test_golden_values(x, k, h, row_1031, row_1000003):
    ids = np.array([x], dtype=np.uint64)
    assert int(hash_ids(ids, 2)[0, k]) == h
    assert int(hash_rows(ids, 2, 1031)[0, k]) == row_1031
    assert int(hash_rows(ids, 2, 1000003)[0, k]) == row_1000003


def test_vectorised_matches_one_at_a_time():
    ids = np.array([g[0] for g in GOLDEN[::2]], dtype=np.uint64)
    batch = hash_rows(ids, 3, 4099)
    for i, x in enumerate(ids):
        np.testing.assert_array_equal(batch[i], hash_rows(np.array([x], np.uint64), 3, 4099)[0])


def test_rows_never_hit_padding_row():
    ids = np.arange(100_000, dtype=np.uint64) * np.uint64(0x9E3779B1)
    rows = hash_rows(ids, 2, 7)
    assert rows.dtype == np.int32
    assert rows.min() == 1 and rows.max() == 6


def test_hash_k_is_splitmix64_output_k():
    # hash k of x is output k of SplitMix64 seeded with x: output k+1 of seed x is output k of
    # seed x + gamma.
    gamma = np.uint64(0x9E3779B97F4A7C15)
    x = np.array([123456789], np.uint64)
    np.testing.assert_array_equal(hash_ids(x, 3)[:, 1:], hash_ids(x + gamma, 2))


def test_too_few_rows_is_rejected():
    with pytest.raises(ValueError, match="at least 2 rows"):
        hash_rows(np.array([1], np.uint64), 2, 1)
