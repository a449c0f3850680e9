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


def hidden_preactivations(layers, X):
    """Return the inputs of every ReLU for batch X."""
    zs, A = [], X
    for P in layers[:-1]:
        Z = A @ P[:-1] + P[-1]
        zs.append(Z)
        A = np.maximum(Z, 0)
    return zs


def make_problem(batch, seed):
    """Return layers, input and target away from any ReLU kink."""
    rng = np.random.default_rng(seed)
    for _ in range(100):
        layers = ae.init_params(SIZES, rng, np.float64)
        for P in layers:
            P[-1] = rng.normal(0, 0.1, P.shape[1])  # nonzero biases
        X = rng.uniform(0, 1, (batch, SIZES[0]))
        T = rng.uniform(0, 1, (batch, SIZES[-1]))
        zs = hidden_preactivations(layers, X)
        if min(np.abs(Z).min() for Z in zs) > KINK_MARGIN:
            return layers, X, T
    raise AssertionError("no draw kept every ReLU input off the kink")


def run_forward(layers, X, T):
    """Return forward's activations and masks, and mse_loss's Y - T and MSE.
    """
    acts = ae.allocate_activations(SIZES, len(X), np.float64)
    masks = ae.allocate_masks(SIZES, len(X))
    acts[0][:, :-1] = X
    Y = ae.forward(layers, acts, masks)
    diff = np.empty_like(T)
    return acts, masks, diff, ae.mse_loss(Y, T, diff)


def loss_of(layers, X, T):
    """Return the MSE of reconstructing target T from input X."""
    return run_forward(layers, X, T)[-1]


def gradients_from(layers, acts, masks, diff):
    """Return backward's gradients of the layers and of the input."""
    deltas = ae.allocate_deltas(SIZES, len(diff), np.float64)
    grads = [np.empty_like(P) for P in layers]
    grad_x = ae.backward(layers, acts, masks, diff, grads, deltas,
                         input_grad=True)
    return grads, grad_x


def analytic_gradients(layers, X, T):
    """Return backward's gradients for input X and target T."""
    acts, masks, diff, _ = run_forward(layers, X, T)
    return gradients_from(layers, acts, masks, diff)


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


def named_gradient_errors(layers, X, T, grads, grad_x):
    """Return {name: relative error} for every weight, bias and the input."""
    def loss():
        return loss_of(layers, X, T)

    errors = {}
    for i, (P, G) in enumerate(zip(layers, grads)):
        numeric = numeric_gradient(P, loss)
        errors[f"W{i}"] = relative_error(G[:-1], numeric[:-1])
        errors[f"b{i}"] = relative_error(G[-1], numeric[-1])
    errors["input"] = relative_error(grad_x, numeric_gradient(X, loss))
    return errors


@pytest.mark.parametrize("batch", [1, 4])
def test_backward_matches_finite_differences(batch):
    layers, X, T = make_problem(batch, seed=batch)
    grads = analytic_gradients(layers, X, T)
    errors = named_gradient_errors(layers, X, T, *grads)
    assert len(errors) == 2 * (len(SIZES) - 1) + 1
    for name, error in errors.items():
        assert error < TOLERANCE, f"{name}: relative error {error:.2e}"


def test_gradients_are_not_all_zero():
    layers, X, T = make_problem(4, seed=0)
    grads, grad_x = analytic_gradients(layers, X, T)
    for i, G in enumerate(grads):
        assert np.abs(G[:-1]).max() > 1e-6, f"W{i} gradient is all zero"
    assert np.abs(grad_x).max() > 1e-6


@pytest.mark.parametrize("name", ["W0", "b3", "W5", "input"])
def test_check_catches_one_wrong_entry(name):
    layers, X, T = make_problem(4, seed=0)
    grads, grad_x = analytic_gradients(layers, X, T)
    target = {"W0": grads[0][:-1], "b3": grads[3][-1], "W5": grads[5][:-1],
              "input": grad_x}[name]
    largest = np.unravel_index(np.argmax(np.abs(target)), target.shape)
    target[largest] *= 1.001  # a 0.1% error in one entry of the gradient
    errors = named_gradient_errors(layers, X, T, grads, grad_x)
    assert errors[name] > TOLERANCE


def with_ones_column(Z):
    """Return Z as forward stores a layer's output: a column of ones added."""
    A = np.ones((Z.shape[0], Z.shape[1] + 1), order="F")
    A[:, :-1] = Z
    return A


def test_check_catches_preactivation_mixup():
    layers, X, T = make_problem(4, seed=2)
    acts, masks, diff, _ = run_forward(layers, X, T)

    # A classic bug: weight gradients taken from the ReLU inputs, not outputs.
    zs = hidden_preactivations(layers, X)
    mixed = [acts[0]] + [with_ones_column(Z) for Z in zs] + [acts[-1]]
    grads, grad_x = gradients_from(layers, mixed, masks, diff)

    errors = named_gradient_errors(layers, X, T, grads, grad_x)
    mixed_up = [i for i in range(1, len(layers)) if (zs[i - 1] < 0).any()]
    assert mixed_up, "every ReLU input is positive, so nothing is mixed up"
    for i in mixed_up:
        assert errors[f"W{i}"] > TOLERANCE, f"W{i} passed a wrong gradient"


def test_check_catches_wrong_reduction():
    layers, X, T = make_problem(4, seed=3)
    grads, grad_x = analytic_gradients(layers, X, T)
    # Gradients of the per-image mean, summed over pixels, not the pixel mean.
    pixels = T.shape[1]
    errors = named_gradient_errors(layers, X, T, [G * pixels for G in grads],
                                   grad_x * pixels)
    for name, error in errors.items():
        assert error > TOLERANCE, f"{name} passed a wrong gradient"
