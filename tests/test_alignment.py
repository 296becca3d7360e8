"""pipeline.alignment: unaligned arrays out of Dask messages are copied, aligned ones pass through."""
from dataclasses import dataclass

import numpy as np

from pipeline.alignment import aligned


def unaligned(values, offset: int = 1):
    """Return a float64 copy of ``values`` starting ``offset`` bytes past an aligned address (as a message frame can)."""
    values = np.asarray(values, np.float64)
    buf = np.zeros(values.nbytes + 16, np.uint8)
    start = (-buf.ctypes.data) % 8 + offset
    out = buf[start:start + values.nbytes].view(np.float64).reshape(values.shape)
    out[...] = values
    return out


@dataclass(frozen=True)
class Params:
    hidden: tuple
    flag: bool


def test_unaligned_arrays_are_copied_equal_and_aligned():
    a = unaligned(np.arange(12.0).reshape(3, 4))
    assert not a.flags.aligned
    out = aligned(a)
    assert out.flags.aligned and out is not a
    np.testing.assert_array_equal(out, a)


def test_aligned_objects_pass_through_untouched():
    a = np.ones((2, 3))
    obj = {"W": [a, (a, 1.0)], "p": Params((a,), True)}
    assert aligned(obj) is obj


def test_nested_containers_and_frozen_dataclasses_are_rebuilt_around_the_copies():
    bad = unaligned([[1.0, 2.0], [3.0, 4.0]])
    good = np.zeros(3)
    p = aligned(Params((good, bad), False))
    assert isinstance(p, Params) and p.flag is False
    assert p.hidden[0] is good and p.hidden[1].flags.aligned
    np.testing.assert_array_equal(p.hidden[1], bad)
    d = aligned({"sums": [bad], "n": 3})
    assert d["n"] == 3 and d["sums"][0].flags.aligned


def test_ridge_path_weights_on_an_aligned_copy_equal_those_on_the_original_sums():
    """The client's output-layer solve on sums fetched from a worker: on unaligned bytes NumPy's
    own loops round differently (on this machine 39 of 200 such problems came out an ulp apart);
    on the aligned copy the weights are bitwise those of the original sums."""
    from solvers.linalg import RidgePath

    for seed in range(200):
        rng = np.random.default_rng(seed)
        A = rng.normal(size=(300, 11))
        A[:, -1] = 1.0
        G, C = A.T @ A, rng.normal(size=(1, 300)) @ A
        np.testing.assert_array_equal(RidgePath(aligned(unaligned(C, 3)), aligned(unaligned(G, 3))).weights(0.1),
                                      RidgePath(C, G).weights(0.1))
