"""solvers/stats.py: packed sums and the one-pass moments behind the input and target scaling."""
import numpy as np
import pytest

from solvers.stats import StatsLayout, moment_sums, moments_from_sums, scaling_from_sums


def test_layout_packs_and_unpacks_named_parts():
    layout = StatsLayout({"n": (), "g": (2, 2), "v": (3,)})
    parts = {"n": 5.0, "g": np.arange(4.0).reshape(2, 2), "v": np.array([1.0, 2.0, 3.0])}
    vector = layout.pack(parts)
    assert vector.shape == (8,) and layout.size == 8
    out = layout.unpack(vector + layout.pack({"n": 1.0}))  # sums of packed vectors are the sums of the parts
    assert out["n"] == 6.0 and np.array_equal(out["g"], parts["g"]) and np.array_equal(out["v"], parts["v"])
    with pytest.raises(ValueError, match="layout expects 8"):
        layout.unpack(np.zeros(7))


def test_moments_of_chunks_add_up_to_the_moments_of_the_whole():
    rng = np.random.default_rng(0)
    X = rng.normal(1e4, 3.0, size=(1000, 3))  # a large offset: the shift keeps the variance exact
    X[:, 2] = 7.0                              # a constant column: scale 1
    shift = X[0]
    sums = moment_sums(X[:400], shift) + moment_sums(X[400:], shift)
    np.testing.assert_allclose(sums, moment_sums(X, shift), rtol=1e-12)
    mean, scale = moments_from_sums(sums, shift)
    np.testing.assert_allclose(mean, X.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(scale[:2], X[:, :2].std(axis=0), rtol=1e-9)
    assert scale[2] == 1.0


def test_regression_scaling_comes_from_the_same_sums_as_the_inputs():
    rng = np.random.default_rng(1)
    Xy = np.column_stack([rng.normal(size=(500, 2)), rng.normal(5.0, 2.0, size=500)])
    model = scaling_from_sums(moment_sums(Xy, Xy[0]), Xy[0], 2, "standard")
    np.testing.assert_allclose(model["x_mean"], Xy[:, :2].mean(axis=0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model["y_mean"], [Xy[:, 2].mean()], rtol=1e-12)
    np.testing.assert_allclose(model["y_scale"], [Xy[:, 2].std()], rtol=1e-9)
    assert "y_mean" not in scaling_from_sums(moment_sums(Xy[:, :2], Xy[0, :2]), Xy[0, :2], 2, "standard")


def test_adding_parts_in_place_is_bitwise_adding_their_packed_vector():
    """The tile sums of every solver are added with StatsLayout.add: the same bits as ``total += pack(parts)`` (NaN: a NaN).

    Tiles miss names, carry −0.0, NaN, ±inf, float32 arrays, Python and NumPy scalars, ints and bools.
    """
    layout = StatsLayout({"n": (), "loss": (), "flag": (), "g": (3, 4), "c": (2, 5), "v": (6,)})
    rng = np.random.default_rng(0)

    def tile():
        parts = {"n": int(rng.integers(0, 600)), "loss": float(rng.standard_normal()), "flag": bool(rng.integers(2)),
                 "g": rng.standard_normal((3, 4)), "c": rng.standard_normal((2, 5)).astype(np.float32),
                 "v": rng.choice([-0.0, 0.0, np.nan, np.inf, -np.inf, 1e-310, -2.5], size=6)}
        if rng.random() < 0.3:
            parts["g"] = -np.zeros((3, 4))
        if rng.random() < 0.3:
            parts["loss"] = np.float32(-0.0)
        return {k: v for k, v in parts.items() if rng.random() < 0.75}

    for _ in range(200):
        tiles = [tile() for _ in range(int(rng.integers(1, 6)))]
        packed, added = np.zeros(layout.size), np.zeros(layout.size)
        with np.errstate(all="ignore"):  # inf − inf, as the kernels' tiles run (SolverBase.tiled)
            for parts in tiles:
                packed += layout.pack(parts)
                assert layout.add(added, parts) is added
        nan = np.isnan(packed)
        assert np.array_equal(nan, np.isnan(added))  # a NaN's sign bit follows NumPy's loop (vector body or tail)
        assert packed[~nan].tobytes() == added[~nan].tobytes()
    assert not np.signbit(layout.add(np.zeros(layout.size), {"g": -np.zeros((3, 4))})).any()  # 0.0 + −0.0 = +0.0


def _whole_block_moments(blocks):
    """The statistics as ``storage.data._Statistics.add`` summed them before sub-blocks: whole-block temporaries."""
    shift = sums = None
    for X, y in blocks:
        dev = np.empty((X.shape[0], X.shape[1] + 1))
        dev[:, :-1], dev[:, -1] = X, y
        if shift is None:
            shift, sums = dev[0].copy(), np.zeros(1 + 4 * dev.shape[1])
        dev -= shift
        dev2 = dev * dev
        sums += np.concatenate([[dev.shape[0]], dev.sum(axis=0), dev2.sum(axis=0), (dev2 * dev).sum(axis=0),
                                (dev2 * dev2).sum(axis=0)])
    return shift, sums


@pytest.mark.parametrize("sub_rows", [1, 3, 256])
def test_statistics_in_sub_blocks_are_bitwise_the_whole_blocks_sums(monkeypatch, sub_rows):
    """Row counts across sub-block edges, widths 1-785 features, signed zeros and large values: the same bits."""
    import storage.data as data

    monkeypatch.setattr(data, "SUB_ROWS", sub_rows)
    rng = np.random.default_rng(7)
    for d, sizes in ((1, [1, 5, 2]), (2, [7, 1]), (40, [600, 255, 257, 1]), (785, [513, 300])):
        blocks = []
        for m in sizes:
            X = (rng.standard_normal((m, d)) * 10.0 ** rng.integers(-3, 6, (m, d))).astype(np.float32)
            X[rng.random((m, d)) < 0.2] = -0.0
            blocks.append((X, rng.integers(0, 5, m).astype(np.float64)))
        stats = data._Statistics()
        for X, y in blocks:
            stats.add(X, y)
        shift, sums = _whole_block_moments(blocks)
        assert stats.shift.tobytes() == shift.tobytes() and stats.sums.tobytes() == sums.tobytes(), (d, sizes)
