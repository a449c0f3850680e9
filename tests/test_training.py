"""SGD steps, evaluation in chunks and the output nonlinearity."""

import tracemalloc

import numpy as np
import pytest

import autoencoder_mnist as ae

SIZES = [20, 12, 8, 4, 8, 12, 20]


def small_network(dtype, seed=0):
    rng = np.random.default_rng(seed)
    weights, biases = ae.init_params(SIZES, rng, dtype)
    X = rng.uniform(0, 1, (16, SIZES[0])).astype(dtype)
    return weights, biases, X


def batch_loss(weights, biases, X):
    acts = ae.allocate_activations(SIZES, len(X), X.dtype)
    ae.forward(weights, biases, X, acts)
    return ae.mse_loss(acts[-1], X, np.empty_like(X))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_step_lowers_loss_keeps_shapes(dtype):
    weights, biases, X = small_network(dtype)
    shapes = [p.shape for p in weights + biases]
    work = ae.Workspace(SIZES, len(X), dtype)
    before = batch_loss(weights, biases, X)

    step_loss = ae.sgd_step(weights, biases, X, 0.5, *work.rows(16)[1:])

    assert step_loss == pytest.approx(before, rel=1e-6)
    assert batch_loss(weights, biases, X) < before
    assert [p.shape for p in weights + biases] == shapes
    assert all(p.dtype == dtype for p in weights + biases)


def test_sgd_step_is_gradient_step():
    weights, biases, X = small_network(np.float64)
    work = ae.Workspace(SIZES, len(X), np.float64)
    acts, deltas, diff = work.rows(16)[1:]
    ae.forward(weights, biases, X, acts)
    ae.mse_loss(acts[-1], X, diff)
    grads_w = [np.empty_like(W) for W in weights]
    grads_b = [np.empty_like(b) for b in biases]
    ae.backward(weights, X, acts, diff, grads_w, grads_b, deltas)
    expected_w = [W - 0.3 * g for W, g in zip(weights, grads_w)]
    expected_b = [b - 0.3 * g for b, g in zip(biases, grads_b)]

    ae.sgd_step(weights, biases, X, 0.3, acts, deltas, diff)

    for W, expected in zip(weights, expected_w):
        np.testing.assert_allclose(W, expected, rtol=1e-12, atol=1e-15)
    for b, expected in zip(biases, expected_b):
        np.testing.assert_allclose(b, expected, rtol=1e-12, atol=1e-15)


def test_sigmoid_extremes_raise_no_warning():
    z = np.array([-1e30, -1e4, -100.0, 0.0, 100.0, 1e4, 1e30, -np.inf,
                  np.inf], np.float32)
    with np.errstate(all="raise"):
        ae.sigmoid_(z)
    np.testing.assert_array_equal(z, [0, 0, 0, 0.5, 1, 1, 1, 0, 1])


def test_sigmoid_matches_logistic():
    z = np.linspace(-20, 20, 401)
    expected = 1 / (1 + np.exp(-z))
    ae.sigmoid_(z)
    np.testing.assert_allclose(z, expected, rtol=1e-12, atol=1e-15)


def full_network(seed=0):
    rng = np.random.default_rng(seed)
    return ae.init_params(ae.LAYER_SIZES, rng, np.float32)


def test_evaluate_matches_one_big_batch():
    weights, biases = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (2500, 784)).astype(np.float32)
    acts = ae.allocate_activations(ae.LAYER_SIZES, len(X), np.float32)
    ae.forward(weights, biases, X, acts)
    whole = ae.mse_loss(acts[-1], X, np.empty_like(X))
    assert ae.evaluate(weights, biases, X) == pytest.approx(whole, rel=1e-5)


def peak_bytes(function):
    """Return the peak memory that function allocates, by tracemalloc."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluate_memory_independent_of_rows():
    weights, biases = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (20000, 784)).astype(np.float32)
    small = peak_bytes(lambda: ae.evaluate(weights, biases, X[:2000]))
    large = peak_bytes(lambda: ae.evaluate(weights, biases, X))
    # One forward pass over all 20,000 rows would need about 200 MB.
    assert large < 1.1 * small + 100_000
    assert large < 20_000_000


def test_encoding_memory_is_codes_plus_chunk():
    weights, biases = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (20000, 784)).astype(np.float32)
    layer = ae.CODE_LAYER - 1
    codes_bytes = 20000 * ae.LAYER_SIZES[ae.CODE_LAYER] * 4
    peak = peak_bytes(lambda: ae.predict(weights, biases, X, layer=layer))
    assert peak < codes_bytes + 20_000_000
