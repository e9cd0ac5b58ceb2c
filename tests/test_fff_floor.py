"""The probes of analysis/fff_floor.py compute what they claim (checked against NumPy), so that the
times they report are the times of that work."""


import numpy as np
import pytest

from .helpers import analysis_script


@pytest.fixture(scope="module")
def floor():
    return analysis_script("fff_floor")


def test_dots_walk_follows_the_logits(floor):
    rng = np.random.default_rng(1)
    M, C, levels, row_set = 9, 32, 5, 11
    x = rng.normal(size=(floor.GROUP, C)).astype(np.float32)
    rows = rng.normal(size=(row_set, C)).astype(np.float32)
    bias = rng.normal(size=row_set).astype(np.float32)
    nodes = np.zeros(M, np.int64)
    floor.dots_walk(x, rows, bias, levels, row_set, nodes)
    for t in range(M):
        node = 0
        for _ in range(levels):
            n = (node + t * floor.TOKEN_STRIDE) % row_set
            logit = float(x[t % floor.GROUP] @ rows[n] + bias[n])
            node = 2 * node + (2 if logit > 0 else 1)
        assert nodes[t] == node


def test_sums_build_each_tokens_output(floor):
    rng = np.random.default_rng(2)
    M, C, levels, tasks = 10, 48, 6, 3
    rows = rng.normal(size=(7, C)).astype(np.float32)
    paths = rng.integers(0, 7, (M, levels))
    acts = rng.normal(size=(M, levels)).astype(np.float32)
    sink = np.zeros(M, np.float32)
    floor.sums(rows, paths, acts, tasks, sink)
    expected = np.einsum("tl,tl->t", acts, rows[paths, 0])  # column 0 of each token's output
    np.testing.assert_allclose(sink, expected, rtol=1e-5, atol=1e-5)


def test_l2_read_sums_a_rolling_sweep(floor):
    pages = floor.huge_pages(2)
    size, per_token, M = 100, 37, 6
    pages[:, :size] = np.arange(2 * size, dtype=np.float32).reshape(2, size)
    sink = np.zeros(M, np.float32)
    floor.l2_read(pages, size, per_token, sink)
    for t in range(M):
        task, k = divmod(t, 3)  # 2 tasks of 3 tokens
        positions = (np.arange(per_token) + k * per_token) % size
        assert sink[t] == pages[task, positions].sum()
    assert pages.flags.c_contiguous and pages.ctypes.data % floor.HUGE_PAGE == 0


def test_row_sets_stay_inside_small_trees(floor):
    """A tree smaller than the L1 / L2 sets (depth 1: 3 nodes) caps them: the probes index rows[:size]."""
    sets = floor.row_sets(768 * 4, 3)
    assert sets == {"L1": 3, "L2": 3, "tree": 3}


def test_hidden_off_the_cache_line_grid_is_refused(floor, capsys):
    with pytest.raises(SystemExit):
        floor.main(["--hidden", "100"])
    assert "multiple of 16" in capsys.readouterr().err
