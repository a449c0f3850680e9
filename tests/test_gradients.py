"""Finite-difference checks of the hand-written backward pass."""

import numpy as np
import pytest

import autoencoder_mnist as ae

SIZES = [6, 5, 4, 3, 4, 5, 6]  # the real network's shape, in miniature
STEP = 1e-5  # finite-difference step
TOLERANCE = 1e-7  # largest relative error accepted
KINK_MARGIN = 1e-3  # smallest |pre-activation| allowed at a ReLU


def relative_error(analytic, numeric):
    """Return the largest elementwise |a - n| / max(|a| + |n|, 1e-8)."""
    scale = np.maximum(np.abs(analytic) + np.abs(numeric), 1e-8)
    return float(np.max(np.abs(analytic - numeric) / scale))


def hidden_preactivations(weights, biases, X):
    """Return the inputs of every ReLU for batch X."""
    zs, A = [], X
    for W, b in zip(weights[:-1], biases[:-1]):
        Z = A @ W + b
        zs.append(Z)
        A = np.maximum(Z, 0)
    return zs


def make_problem(batch, seed):
    """Return weights, biases, input and target away from any ReLU kink."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        weights, biases = ae.init_params(SIZES, rng, np.float64)
        biases = [rng.normal(0, 0.1, b.shape) for b in biases]
        X = rng.uniform(0, 1, (batch, SIZES[0]))
        T = rng.uniform(0, 1, (batch, SIZES[-1]))
        zs = hidden_preactivations(weights, biases, X)
        if min(np.abs(Z).min() for Z in zs) > KINK_MARGIN:
            return weights, biases, X, T
    raise AssertionError("no draw kept every ReLU input off the kink")


def loss_of(weights, biases, X, T):
    """Return the MSE of reconstructing target T from input X."""
    acts = ae.allocate_activations(SIZES, len(X), np.float64)
    ae.forward(weights, biases, X, acts)
    return ae.mse_loss(acts[-1], T, np.empty_like(T))


def analytic_gradients(weights, biases, X, T):
    """Return backward's gradients of weights, biases and input."""
    acts = ae.allocate_activations(SIZES, len(X), np.float64)
    deltas = ae.allocate_activations(SIZES, len(X), np.float64)
    diff = np.empty_like(T)
    ae.forward(weights, biases, X, acts)
    ae.mse_loss(acts[-1], T, diff)
    grads_w = [np.empty_like(W) for W in weights]
    grads_b = [np.empty_like(b) for b in biases]
    grad_x = ae.backward(weights, X, acts, diff, grads_w, grads_b, deltas,
                         input_grad=True)
    return grads_w, grads_b, grad_x


def numeric_gradient(array, loss):
    """Return dLoss/dArray by centred differences, perturbing in place."""
    grad = np.zeros_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + STEP
        up = loss()
        array[index] = saved - STEP
        down = loss()
        array[index] = saved
        grad[index] = (up - down) / (2 * STEP)
    return grad


def named_gradient_errors(weights, biases, X, T, grads_w, grads_b, grad_x):
    """Return {parameter name: relative error} for every array checked."""
    def loss():
        return loss_of(weights, biases, X, T)

    errors = {}
    for i, (W, b) in enumerate(zip(weights, biases)):
        errors[f"W{i}"] = relative_error(grads_w[i], numeric_gradient(W, loss))
        errors[f"b{i}"] = relative_error(grads_b[i], numeric_gradient(b, loss))
    errors["input"] = relative_error(grad_x, numeric_gradient(X, loss))
    return errors


@pytest.mark.parametrize("batch", [1, 4])
def test_backward_matches_finite_differences(batch):
    weights, biases, X, T = make_problem(batch, seed=batch)
    grads = analytic_gradients(weights, biases, X, T)
    errors = named_gradient_errors(weights, biases, X, T, *grads)
    assert len(errors) == 2 * (len(SIZES) - 1) + 1
    for name, error in errors.items():
        assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


def test_gradients_are_not_all_zero():
    weights, biases, X, T = make_problem(4, seed=0)
    grads_w, grads_b, grad_x = analytic_gradients(weights, biases, X, T)
    for i, dW in enumerate(grads_w):
        assert np.abs(dW).max() > 1e-6, f"W{i} gradient is all zero"
    assert np.abs(grad_x).max() > 1e-6


@pytest.mark.parametrize("name", ["W0", "b3", "W5", "input"])
def test_check_catches_one_wrong_entry(name):
    weights, biases, X, T = make_problem(4, seed=0)
    grads_w, grads_b, grad_x = analytic_gradients(weights, biases, X, T)
    target = {"W0": grads_w[0], "b3": grads_b[3], "W5": grads_w[5],
              "input": grad_x}[name]
    flat = target.reshape(-1)
    flat[np.argmax(np.abs(flat))] *= 1.001  # a 0.1% error in one entry
    errors = named_gradient_errors(weights, biases, X, T, grads_w, grads_b,
                                   grad_x)
    assert errors[name] > TOLERANCE


def test_check_catches_preactivation_mixup():
    weights, biases, X, T = make_problem(4, seed=2)
    acts = ae.allocate_activations(SIZES, len(X), np.float64)
    deltas = ae.allocate_activations(SIZES, len(X), np.float64)
    diff = np.empty_like(T)
    ae.forward(weights, biases, X, acts)
    ae.mse_loss(acts[-1], T, diff)

    # A classic bug: weight gradients taken from the ReLU inputs, not outputs.
    zs = hidden_preactivations(weights, biases, X)
    grads_w = [np.empty_like(W) for W in weights]
    grads_b = [np.empty_like(b) for b in biases]
    grad_x = ae.backward(weights, X, zs + [acts[-1]], diff, grads_w,
                         grads_b, deltas, input_grad=True)

    errors = named_gradient_errors(weights, biases, X, T, grads_w, grads_b,
                                   grad_x)
    mixed_up = [i for i in range(1, len(weights)) if (zs[i - 1] < 0).any()]
    assert mixed_up, "every ReLU input is positive, so nothing is mixed up"
    for i in mixed_up:
        assert errors[f"W{i}"] > TOLERANCE, f"W{i} passed a wrong gradient"


def test_check_catches_wrong_reduction():
    weights, biases, X, T = make_problem(4, seed=3)
    grads_w, grads_b, grad_x = analytic_gradients(weights, biases, X, T)
    # Gradients of the per-image mean, summed over pixels, not the pixel mean.
    pixels = T.shape[1]
    grads_w = [g * pixels for g in grads_w]
    grads_b = [g * pixels for g in grads_b]
    errors = named_gradient_errors(weights, biases, X, T, grads_w, grads_b,
                                   grad_x * pixels)
    for name, error in errors.items():
        assert error > TOLERANCE, f"{name} passed a wrong gradient"
