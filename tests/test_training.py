"""SGD steps, evaluation in chunks and the output nonlinearity."""

import argparse
import tracemalloc

import numpy as np
import pytest

import autoencoder_mnist as ae

SIZES = [20, 12, 8, 4, 8, 12, 20]


def small_network(dtype, seed=0):
    """Return a small network's layers and a batch for it, in a Workspace."""
    rng = np.random.default_rng(seed)
    layers = ae.init_params(SIZES, rng, dtype)
    work = ae.Workspace(SIZES, 16, dtype)
    work.batch[...] = rng.uniform(0, 1, work.batch.shape)
    return layers, work


def batch_loss(layers, X):
    """Return the MSE of reconstructing X, from a separate forward pass."""
    sizes = ae.layer_sizes(layers)
    acts = ae.allocate_activations(sizes, len(X), X.dtype)
    acts[0][:, :-1] = X
    Y = ae.forward(layers, acts, ae.allocate_masks(sizes, len(X)))
    return ae.mse_loss(Y, X, np.empty_like(X))


def gradients(layers, work):
    """Return the loss gradient of every layer for the batch in work."""
    Y = ae.forward(layers, work.acts, work.masks)
    ae.mse_loss(Y, work.batch, work.diff)
    grads = [np.empty_like(P) for P in layers]
    ae.backward(layers, work.acts, work.masks, work.diff, grads, work.deltas)
    return grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum_power", [None, 0.9])
def test_sgd_step_lowers_loss_keeps_shapes(dtype, momentum_power):
    layers, work = small_network(dtype)
    velocity = [np.zeros_like(P) for P in layers]
    shapes = [P.shape for P in layers]
    before = batch_loss(layers, work.batch)

    step_loss = ae.sgd_step(layers, velocity, work, 0.5, momentum_power)

    assert step_loss == pytest.approx(before, rel=1e-6)
    assert batch_loss(layers, work.batch) < before
    assert [P.shape for P in layers] == shapes
    assert all(P.dtype == dtype for P in layers + velocity)
    assert all((A[:, -1] == 1).all() for A in work.acts[:-1])


def test_sgd_step_is_gradient_step():
    layers, work = small_network(np.float64)
    expected = [P - 0.3 * G for P, G in zip(layers, gradients(layers, work))]

    ae.sgd_step(layers, None, work, 0.3)

    for P, P_expected in zip(layers, expected):
        np.testing.assert_allclose(P, P_expected, rtol=1e-12, atol=1e-15)


def test_momentum_step_matches_formula():
    layers, work = small_network(np.float64)
    rng = np.random.default_rng(5)
    V_before = [rng.normal(0, 0.01, P.shape) for P in layers]
    # The arrays contain V / 0.5, and this step's momentum_power is
    # 0.5 * momentum 0.9.
    velocity = [np.zeros_like(P) for P in layers]
    for U, V in zip(velocity, V_before):
        U[...] = V / 0.5
    grads = gradients(layers, work)
    V_expected = [0.9 * V - 0.3 * G for V, G in zip(V_before, grads)]
    P_expected = [P + V for P, V in zip(layers, V_expected)]

    ae.sgd_step(layers, velocity, work, 0.3, momentum_power=0.45)

    for U, V_want in zip(velocity, V_expected):
        np.testing.assert_allclose(0.45 * U, V_want, rtol=1e-12, atol=1e-15)
    for P, P_want in zip(layers, P_expected):
        np.testing.assert_allclose(P, P_want, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-10),
                                         (np.float32, 1e-4)])
def test_momentum_epoch_matches_formula(monkeypatch, dtype, rtol):
    # At momentum 0.001 the momentum_power would reach 1e-45 in 15 steps,
    # too small for float32, so the velocities must be settled every other
    # step.
    args = argparse.Namespace(batch_size=8, lr=0.3, lr_decay=0.5,
                              momentum=0.001)
    layers, _ = small_network(dtype)
    work = ae.Workspace(SIZES, 8, dtype)
    X = np.random.default_rng(1).uniform(0, 1, (120, SIZES[0])).astype(dtype)
    velocity = [np.zeros_like(P) for P in layers]
    expected_layers = [P.copy() for P in layers]
    expected_velocity = [np.zeros_like(P) for P in layers]
    order = np.random.default_rng(2).permutation(len(X))
    lr = ae.learning_rate(args, 2, 0, 15)
    for lo in range(0, len(X), 8):
        work.batch[...] = X[order[lo:lo + 8]]
        grads = gradients(expected_layers, work)
        for P, V, G in zip(expected_layers, expected_velocity, grads):
            V *= args.momentum
            V -= lr * G
            P += V

    settlings = []
    settle = ae.settle_velocities

    def counted_settle(velocity, momentum_power):
        settlings.append(momentum_power)
        settle(velocity, momentum_power)

    monkeypatch.setattr(ae, "settle_velocities", counted_settle)
    works = {8: ae.Workspace(SIZES, 8, dtype)}
    ae.train_epoch(layers, velocity, X, args, np.random.default_rng(2),
                   works, epoch=2)

    assert len(settlings) == 8  # after steps 2, 4, ..., 14 and at the end
    for got, want in zip(layers + velocity,
                         expected_layers + expected_velocity):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * 1e-3)


def test_settling_flushes_tiny_velocities():
    V = np.array([1.0, -3e-22, 2e-21, 0.0], np.float32)
    ae.settle_velocities([V], 1e-8)
    np.testing.assert_allclose(V, [1e-8, 0, 2e-29, 0], rtol=1e-6, atol=0)


def test_learning_rate_warms_up_then_decays():
    args = argparse.Namespace(lr=2.0, lr_decay=0.5)
    first = [ae.learning_rate(args, 1, step, 4) for step in range(4)]
    assert first == [0.5, 1.0, 1.5, 2.0]
    assert ae.learning_rate(args, 2, 0, 4) == 1.0
    assert ae.learning_rate(args, 3, 3, 4) == 0.5


def test_gemm_writes_either_order():
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(3, 4)), np.asfortranarray(rng.normal(size=(4, 5)))
    for order in "CF":
        C = np.ones((3, 5), order=order)
        ae.gemm(2.0, X, Y, 0.5, C)
        np.testing.assert_allclose(C, 2 * X @ Y + 0.5, rtol=1e-12)


def test_gemm_rejects_strided_arrays():
    A = np.ones((4, 4))
    with pytest.raises(ValueError, match="contiguous"):
        ae.gemm(1.0, A, A, 0.0, A[:, ::2])
    with pytest.raises(ValueError, match="contiguous"):
        ae.gemm(1.0, A[::2], A, 0.0, np.zeros((2, 4)))


def test_step_rejects_misordered_velocity():
    layers, work = small_network(np.float64)
    velocity = [np.zeros(P.shape, order="C") for P in layers]
    assert any(P.flags.f_contiguous for P in layers)
    with pytest.raises(ValueError, match="same order"):
        ae.sgd_step(layers, velocity, work, 0.3, momentum_power=0.9)


def test_sigmoid_extremes_raise_no_warning():
    x = np.array([-1e30, -1e4, -100.0, 0.0, 100.0, 1e4, 1e30, -np.inf,
                  np.inf], np.float32)
    z = x / 2
    with np.errstate(all="raise"):
        ae.sigmoid_of_halved_(z)
    np.testing.assert_array_equal(z, [0, 0, 0, 0.5, 1, 1, 1, 0, 1])


def test_sigmoid_matches_logistic():
    x = np.linspace(-20, 20, 401)
    z = x / 2
    ae.sigmoid_of_halved_(z)
    np.testing.assert_allclose(z, 1 / (1 + np.exp(-x)), rtol=1e-12,
                               atol=1e-15)


def full_network(seed=0):
    rng = np.random.default_rng(seed)
    return ae.init_params(ae.LAYER_SIZES, rng, np.float32)


def test_evaluate_matches_one_big_batch():
    layers = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (2500, 784)).astype(np.float32)
    whole = batch_loss(layers, X)
    assert ae.evaluate(layers, X) == pytest.approx(whole, rel=1e-5)


def test_decoding_codes_matches_predict():
    layers = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (2500, 784)).astype(np.float32)
    codes = ae.predict(layers, X, layer=ae.CODE_LAYER - 1)
    rebuilt = ae.predict(layers, codes, start=ae.CODE_LAYER)
    assert codes.shape == (2500, ae.LAYER_SIZES[ae.CODE_LAYER])
    np.testing.assert_allclose(rebuilt, ae.predict(layers, X), atol=1e-6)


def peak_bytes(function):
    """Return the peak memory that function allocates, by tracemalloc."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_evaluate_memory_independent_of_rows():
    layers = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (20000, 784)).astype(np.float32)
    small = peak_bytes(lambda: ae.evaluate(layers, X[:2000]))
    large = peak_bytes(lambda: ae.evaluate(layers, X))
    # One forward pass over all 20,000 rows would need about 200 MB.
    assert large < 1.1 * small + 100_000
    assert large < 20_000_000


def test_encoding_memory_is_codes_plus_chunk():
    layers = full_network()
    X = np.random.default_rng(1).uniform(0, 1, (20000, 784)).astype(np.float32)
    layer = ae.CODE_LAYER - 1
    codes_bytes = 20000 * ae.LAYER_SIZES[ae.CODE_LAYER] * 4
    peak = peak_bytes(lambda: ae.predict(layers, X, layer=layer))
    assert peak < codes_bytes + 20_000_000
