"""Train a fully connected autoencoder on MNIST, written from scratch in NumPy.

The network is 784-512-256-128-256-512-784: an encoder squeezes each 28x28
digit into a code of 128 numbers and a mirrored decoder rebuilds the image.
Forward and backward passes are written by hand; mini-batch SGD minimises the
mean squared error over every pixel of every image.  The published result
this reproduces is a final training MSE of 0.0040 after 100 epochs.

    python autoencoder_mnist.py            # downloads MNIST into data/

Training uses SGD with momentum and a learning rate that shrinks by a fixed
factor each epoch.  It runs on the CPU only.  No autograd library checks
the hand-written gradients; the finite-difference tests in tests/ do.
"""

import argparse
import gzip
import json
import math
import multiprocessing
import os
import signal
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
from scipy.linalg import blas

# N images per batch, D = 784 pixels per image, K = 128 numbers per code.
LAYER_SIZES = [784, 512, 256, 128, 256, 512, 784]
CODE_LAYER = LAYER_SIZES.index(min(LAYER_SIZES))  # index of the code's layer
EVAL_ROWS = 1000  # images per chunk when evaluating, encoding and decoding
MIN_TEST_IMAGES = 10  # the reconstruction figure shows ten

# Training defaults, chosen on 60,000 Fashion-MNIST images (see the README).
LR = 4.0  # learning rate at the end of the first epoch's warm-up
LR_DECAY = 0.96  # factor per epoch: epoch 100 trains at about LR / 57
MOMENTUM = 0.9

# With momentum, the velocity arrays store V / momentum_power, where
# momentum_power is the momentum raised to the number of steps since they
# last stored V (see train_epoch).  settle_velocities multiplies them out
# whenever that power would fall below MIN_MOMENTUM_POWER, which is why
# --momentum takes no value between 0 and MIN_MOMENTUM_POWER.  It also sets
# every velocity below VELOCITY_FLOOR to 0.  Otherwise the velocities of
# units that stopped learning shrink into the subnormal floats (below
# 1.2e-38 in float32), on which x86 processors compute many times slower:
# an epoch at batch 64 took nearly twice as long.  Between two settlings a
# velocity is multiplied by at least MIN_MOMENTUM_POWER, so one at
# VELOCITY_FLOOR or above stays normal (1e-29 * 1e-8 = 1e-37).  A velocity
# below 1e-29 moves a weight by less than float32 (float64) can resolve,
# unless the weight is below about 1e-22 (1e-13).
MIN_MOMENTUM_POWER = 1e-8
VELOCITY_FLOOR = 1e-29

DATASETS = {  # --dataset value: torchvision class name
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
    "kmnist": "KMNIST",
}
TITLES = {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST",
          "kmnist": "KMNIST"}
MAX_SEED = 2**32 - 1  # the largest seed scikit-learn's random_state takes
SPLIT_PREFIX = {"train": "train", "test": "t10k"}

EXIT_BAD_INPUT = 2  # argparse's own code for bad flags; also used for bad data
EXIT_DIVERGED = 1  # training stopped early: a non-finite loss, say
EXIT_INTERRUPTED = 130  # the shell's code for a process stopped by Ctrl-C

OUTPUT_FILES = [
    "loss_curve.png",
    "latent_space_pca.png",
    "reconstructed_images.png",
    "latent_interpolation.png",
    "metrics.json",
    "autoencoder.npz",
    "training_log.txt",
]
PARTIAL_LOG = "training_log.partial.txt"
REPLACE_FILE_HINT = ("Copy an intact file into its place, or move the "
                     "folder's dataset files away and run again to download "
                     "all four.")


class InputError(Exception):
    """Data or a file that cannot be used; the message gives the fix."""


class TrainingDiverged(Exception):
    """The loss stopped being finite during training."""


# ---------------------------------------------------------------------------
# Data


def image_stems(split):
    """Return the names of a split's image and label files, uncompressed."""
    prefix = SPLIT_PREFIX[split]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def normalized_name(name):
    """Map common variants of an IDX file name onto torchvision's name."""
    name = name.lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    return name.replace(".", "-").replace("_", "-")


def candidate_folders(data_dir, class_name):
    """List the folders, most likely first, that may hold the IDX files.

    torchvision keeps them in DATA_DIR/MNIST/raw.  DATA_DIR itself, its
    MNIST or raw folder, and SUB/MNIST/raw one level down are accepted
    too.  Other subfolders are not searched, because they may contain
    another dataset's files under the same names.
    """
    root = Path(data_dir)
    folders = [root / class_name / "raw", root / "raw", root,
               root / class_name]
    if root.is_dir():
        for child in sorted(root.iterdir()):
            if child.is_dir():
                folders.append(child / class_name / "raw")
    return folders


def find_files(data_dir, class_name, stems):
    """Return the first folder holding any of the files, and stem -> path.

    An uncompressed file is preferred to its .gz beside it, as torchvision
    leaves both after a download.
    """
    for folder in candidate_folders(data_dir, class_name):
        if not folder.is_dir():
            continue
        found = {}
        for path in sorted(folder.iterdir()):
            stem = normalized_name(path.name)
            if stem in stems and path.is_file():
                if stem not in found or found[stem].suffix.lower() == ".gz":
                    found[stem] = path
        if found:
            return folder, found
    return None, {}


def download(data_dir, dataset):
    """Download a dataset's four files into DATA_DIR with torchvision."""
    datasets = import_torchvision_datasets()
    class_name = DATASETS[dataset]
    raw = Path(data_dir) / class_name / "raw"
    print(f"Downloading {class_name} into {raw} ...", flush=True)
    try:
        getattr(datasets, class_name)(data_dir, train=True, download=True)
    except (RuntimeError, OSError) as error:
        first_line = str(error).strip().splitlines()[-1] if str(error) else ""
        names = ", ".join(f"{s}.gz" for split in SPLIT_PREFIX
                          for s in image_stems(split))
        raise InputError(
            f"could not download {class_name} into {raw}: {first_line}\n"
            f"Without network access, copy the four files ({names}) "
            f"into {raw} or into {data_dir} itself, then run again."
        ) from None


def import_torchvision_datasets():
    """Import torchvision's datasets, which only the data loading needs."""
    try:
        from torchvision import datasets
    except ImportError as error:
        raise InputError(
            f"torchvision is needed to load the data ({error}); "
            "install it with: pip install -r requirements.txt"
        ) from None
    return datasets


def read_idx(path, kind):
    """Parse one IDX file, plain or gzip'd, with torchvision's reader."""
    from torchvision.datasets import mnist

    if kind == "images":
        reader = mnist.read_image_file
    else:
        reader = mnist.read_label_file
    with tempfile.TemporaryDirectory() as tmp:
        plain = path
        if path.suffix.lower() == ".gz":
            plain = Path(tmp) / path.stem
            try:
                with gzip.open(path) as src, open(plain, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
            except (OSError, EOFError, zlib.error) as error:
                raise InputError(
                    f"{path} is not a valid gzip file or is truncated "
                    f"({error}).\n{REPLACE_FILE_HINT}"
                ) from None
        try:
            return reader(str(plain)).numpy()
        except (AssertionError, RuntimeError, ValueError, TypeError,
                KeyError, IndexError) as error:
            detail = f" ({error})" if str(error) else ""
            raise InputError(
                f"{path} is not an IDX file of {kind} or is truncated"
                f"{detail}.\n{REPLACE_FILE_HINT}"
            ) from None


def check_split(images, labels, image_path, label_path):
    """Raise InputError unless the arrays are a split of 28x28 digits."""
    pixels = LAYER_SIZES[0]
    side = math.isqrt(pixels)
    if images.ndim != 3 or images.shape[1:] != (side, side):
        raise InputError(
            f"{image_path} contains images of shape {images.shape[1:]}, "
            f"expected ({side}, {side}); it is not an MNIST-format file."
        )
    if labels.shape != (len(images),):
        raise InputError(
            f"{label_path} contains {labels.size} labels for the "
            f"{len(images)} images in {image_path}; the two files do not "
            "belong together. Replace both with a matching pair."
        )
    if len(images) == 0:
        raise InputError(f"{image_path} contains no images.")
    if labels.max() > 9:
        raise InputError(
            f"{label_path} contains the label {labels.max()}, expected 0 "
            "to 9; it is not an MNIST-format labels file."
        )


def load_data(data_dir, dataset, splits):
    """Return {split: (uint8 images (N, D), labels (N,))} and the folder.

    Files already on disk are read with no network access; with none there,
    torchvision downloads, checks and unpacks them first.
    """
    class_name = DATASETS[dataset]
    needed_stems = [stem for split in splits for stem in image_stems(split)]
    folder, files = find_files(data_dir, class_name, needed_stems)
    if not files:
        download(data_dir, dataset)
        folder, files = find_files(data_dir, class_name, needed_stems)
    missing = [stem for stem in needed_stems if stem not in files]
    if missing:
        hint = ""
        if all(stem.startswith("train") for stem in missing):
            hint = ("\nWith only the test files, --split-test-set N trains "
                    "on the first N test images.")
        raise InputError(
            f"{folder} contains part of {class_name} but not "
            f"{', '.join(missing)} (plain or .gz).\nCopy the missing "
            f"files into {folder}, or move that folder away and run again "
            f"to download all of them.{hint}"
        )
    data = {}
    for split in splits:
        image_stem, label_stem = image_stems(split)
        images = read_idx(files[image_stem], "images")
        labels = read_idx(files[label_stem], "labels")
        check_split(images, labels, files[image_stem], files[label_stem])
        data[split] = (images.reshape(len(images), -1), labels)
    return data, folder


def class_names(dataset):
    """Return the dataset's ten class names as torchvision gives them."""
    return list(getattr(import_torchvision_datasets(),
                        DATASETS[dataset]).classes)


def read_dataset(data_dir, dataset, splits):
    """Return load_data's splits and folder, and the class names."""
    data, folder = load_data(data_dir, dataset, splits)
    return data, folder, class_names(dataset)


def send_dataset(connection, data_dir, dataset, splits):
    """Send read_dataset's result, or its InputError, down connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        connection.send((True, read_dataset(data_dir, dataset, splits)))
    except InputError as error:
        connection.send((False, str(error)))
    finally:
        connection.close()


def read_dataset_in_child(data_dir, dataset, splits):
    """Run read_dataset in a child process and return its result.

    torchvision needs torch, whose import alone takes about 670 MiB of
    resident memory (torch 2.14 with CUDA, measured).  A child that exits
    after loading keeps that memory out of the training process.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    child = context.Process(target=send_dataset,
                            args=(sender, data_dir, dataset, splits))
    child.start()
    sender.close()
    try:
        succeeded, result = receiver.recv()
    except EOFError:
        child.join()
        raise InputError(
            f"the process loading the data ended with exit code "
            f"{child.exitcode} before sending it; a negative code is the "
            "signal that killed it, such as -9 when memory ran out."
        ) from None
    finally:
        receiver.close()
        if child.is_alive():
            child.terminate()
        child.join()
    if not succeeded:
        raise InputError(result)
    return result


# ---------------------------------------------------------------------------
# Model
#
# Layer i is one (n_i + 1, n_{i+1}) array: its weights, with its bias as an
# extra last row.  Every layer's input carries a last column of ones, so one
# matrix product applies weights and bias together, and the product that
# gives the weight gradient gives the bias gradient with it.
#
# Hidden layers' outputs are stored column by column (Fortran order), as
# BLAS stores matrices.  The first n columns of such an array are one
# contiguous block, so a layer's product can write its output straight into
# the next layer's input, beside the column of ones.  The input batch and
# the reconstruction stay row by row, like the images they are compared
# with, because an elementwise operation between the two orders is slow.
#
# The product that gives a layer's gradient writes straight into the layer
# (or its velocity).  OpenBLAS 0.3.30 computed it up to 1.6 times faster
# (AVX-512, batch 64) when that output, read in its memory order, had fewer
# rows than columns.  So a layer that narrows (n_out < n_in) is stored
# row-major and one that widens is stored column-major.


def layer_order(n_in, n_out):
    """Return the memory order ("C" or "F") of an (n_in + 1, n_out) layer."""
    return "F" if n_in < n_out else "C"


def init_params(sizes, rng, dtype):
    """Return one (n_in + 1, n_out) array per layer: He-initialised weights
    above a bias row of zeros."""
    layers = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:]):
        layer = np.zeros((n_in + 1, n_out), dtype, layer_order(n_in, n_out))
        layer[:-1] = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
        layers.append(layer)
    return layers


def allocate_activations(sizes, rows, dtype):
    """Return one array per size n in sizes, for a batch of `rows` rows.

    acts[0] (row-major) takes the input batch, and acts[i + 1] the output
    of layer i: column-major for hidden layers, row-major for the last.
    All but the last are (rows, n + 1), with a last column of ones.
    """
    acts = []
    for i, n in enumerate(sizes):
        if i == len(sizes) - 1:
            acts.append(np.empty((rows, n), dtype))
            continue
        A = np.empty((rows, n + 1), dtype, order="C" if i == 0 else "F")
        A[:, -1] = 1
        acts.append(A)
    return acts


def without_ones(acts, i):
    """Return the view of acts[i] without its column of ones."""
    return acts[i] if i == len(acts) - 1 else acts[i][:, :-1]


def allocate_masks(sizes, rows):
    """Return one (rows, n) boolean array per hidden layer size n."""
    return [np.empty((rows, n), bool, order="F") for n in sizes[1:-1]]


def allocate_deltas(sizes, rows, dtype):
    """Return one array per size n: (rows, n) row-major for the last, else
    (rows, n + 1) column-major.  The extra last column receives the
    gradient with respect to the column of ones, which goes unused."""
    deltas = [np.empty((rows, n + 1), dtype, order="F") for n in sizes[:-1]]
    deltas.append(np.empty((rows, sizes[-1]), dtype))
    return deltas


def blas_operand(X):
    """Return (A, trans) with A column-major and X = A.T if trans else A."""
    if X.flags.f_contiguous:
        return X, 0
    if X.flags.c_contiguous:
        return X.T, 1
    raise ValueError("gemm needs operands that are contiguous in memory, "
                     "because SciPy would pass BLAS a copy of any other")


def gemm(alpha, X, Y, beta, C):
    """Set C = alpha * X @ Y + beta * C in place, with one BLAS call.

    Each array must be contiguous, in either order.  A row-major C is
    written as its column-major transpose: C.T = Y.T @ X.T.  Every product
    of training goes through here, not through np.matmul: NumPy and SciPy
    bring separate OpenBLAS thread pools, and alternating between them in
    one step made an epoch several times slower.
    """
    if not C.flags.f_contiguous:
        X, Y, C = Y.T, X.T, C.T
    if not C.flags.f_contiguous:
        raise ValueError("gemm needs an output array that is contiguous "
                         "in memory")
    product = blas.sgemm if C.dtype == np.float32 else blas.dgemm
    a, trans_a = blas_operand(X)
    b, trans_b = blas_operand(Y)
    product(alpha, a, b, beta=beta, c=C, trans_a=trans_a, trans_b=trans_b,
            overwrite_c=True)


def sigmoid_of_halved_(z):
    """Replace z = x / 2 by the logistic sigmoid 1 / (1 + exp(-x)) in place.

    It uses sigmoid(x) = (1 + tanh(x / 2)) / 2, which cannot overflow and
    took about two thirds of the time of the exp form (float32, NumPy 2.4,
    AVX-512).  forward halves the output layer's product inside the product,
    which saves a pass over it.  In float32 the result is within about 6e-8
    of the exact value.  Below x = -17 or so it is 0 where the exact value
    is at most a few 1e-8, a difference no pixel MSE can see.
    """
    np.tanh(z, out=z)
    z *= 0.5
    z += 0.5


def forward(layers, acts, masks, start=0):
    """Run the batch in acts[start] through layers start..L-1 in place.

    Inputs:
      layers: init_params' arrays.
      acts: allocate_activations' arrays for the network's sizes, with the
        batch (N, n_start) in acts[start][:, :-1]; every later acts[i + 1]
        receives the output of layer i.
      masks: allocate_masks' arrays; masks[i] receives where layer i's
        ReLU passes its input, for backward.
    Returns:
      the reconstruction (N, D), acts[-1], each pixel in [0, 1].
    ReLU follows every layer but the last, which ends in a sigmoid.
    """
    last = len(layers) - 1
    for i in range(start, last + 1):
        Z = without_ones(acts, i + 1)
        if i < last:
            gemm(1.0, acts[i], layers[i], 0.0, Z)
            np.greater(Z, 0, out=masks[i])
            np.multiply(Z, masks[i], out=Z)  # ReLU
        else:
            gemm(0.5, acts[i], layers[i], 0.0, Z)
            sigmoid_of_halved_(Z)
    return acts[-1]


def mse_loss(Y, T, diff):
    """Mean squared error of a batch: sum((Y - T)**2) / (N * D).

    Inputs:
      Y: (N, D) reconstructions; T: (N, D) targets.
      diff: (N, D) row-major array that receives Y - T, for the backward
        pass.
    Returns:
      the mean over all N * D pixels, as a Python float.
    """
    np.subtract(Y, T, out=diff)
    flat = diff.reshape(-1)  # a view, so no copy
    dot = blas.sdot if flat.dtype == np.float32 else blas.ddot
    return float(dot(flat, flat)) / diff.size


def backward(layers, acts, masks, diff, grads, deltas, scale=1.0, beta=0.0,
             input_grad=False, when_done=None):
    """Backpropagate the MSE of mse_loss through the network.

    Inputs:
      layers, acts, masks: as given to and left by forward.
      diff: (N, D) Y - T as left by mse_loss.
      grads: arrays shaped like layers; each becomes
        scale * dLoss/dLayer + beta * itself.  sgd_step passes the layers
        themselves or their velocities, so the update happens inside the
        products.
      deltas: allocate_deltas' arrays; deltas[i + 1] is overwritten with
        scale * dLoss/dZ of layer i, and deltas[0] with scale * dLoss/dX
        if input_grad (each beside its unused last column).
      when_done: None, or a function called with i as soon as grads[i] is
        final, from the last layer down; layers[i] is not read after that.
    Returns:
      the (N, n_0) view of deltas[0] if input_grad, else None.
    """
    N, D = diff.shape
    Y = acts[-1]
    delta = deltas[-1]

    # dLoss/dZ at the output: 2 (Y - T) / (N D) times sigmoid' = Y (1 - Y).
    np.multiply(Y, Y, out=delta)
    np.subtract(Y, delta, out=delta)
    delta *= diff
    delta *= scale * 2.0 / (N * D)

    for i in range(len(layers) - 1, -1, -1):
        below = deltas[i][:, :-1]
        if i > 0 or input_grad:  # uses layers[i] before any update
            # All of layers[i], bias row included, is one contiguous
            # operand.  The bias row's share lands in deltas[i]'s last column.
            gemm(1.0, delta, layers[i].T, 0.0, deltas[i])
        gemm(1.0, acts[i].T, delta, beta, grads[i])
        if when_done is not None:
            when_done(i)
        if i > 0:
            np.multiply(below, masks[i - 1], out=below)  # ReLU'
        delta = below
    return below if input_grad else None


class Workspace:
    """Arrays for batches of one size, reused so that a step allocates none."""

    def __init__(self, sizes, rows, dtype):
        self.acts = allocate_activations(sizes, rows, dtype)
        self.masks = allocate_masks(sizes, rows)
        self.deltas = allocate_deltas(sizes, rows, dtype)
        self.diff = np.empty((rows, sizes[-1]), dtype)
        self.batch = self.acts[0][:, :-1]  # where the input batch goes


def sgd_step(layers, velocity, work, lr, momentum_power=None):
    """Take one SGD step on the batch in work.batch; return the batch's MSE.

    Plain SGD (momentum_power None) adds -lr * gradient to each layer
    inside the product that computes the gradient.  velocity is not used.

    With momentum, momentum_power is the momentum raised to the number of
    steps since the velocities last stored V, this step included (see
    train_epoch).  So velocity[i] contains layer i's velocity V times
    momentum / momentum_power.  Adding -lr / momentum_power * gradient to it
    inside the gradient's product makes it V' / momentum_power, where
    V' = momentum * V - lr * gradient, with no pass over V to multiply it by
    the momentum.  Layer i then moves by momentum_power * velocity[i] = V'.
    """
    Y = forward(layers, work.acts, work.masks)
    loss = mse_loss(Y, work.batch, work.diff)
    if momentum_power is None:
        backward(layers, work.acts, work.masks, work.diff, layers,
                 work.deltas, scale=-lr, beta=1.0)
        return loss

    if any(V.strides != P.strides for P, V in zip(layers, velocity)):
        raise ValueError("each velocity must lie in memory in the same "
                         "order as its layer")
    axpy = blas.saxpy if Y.dtype == np.float32 else blas.daxpy

    def move_layer(i):
        # layers[i] += momentum_power * velocity[i], while both are in cache.
        axpy(velocity[i].ravel(order="K"), layers[i].ravel(order="K"),
             a=momentum_power)

    backward(layers, work.acts, work.masks, work.diff, velocity, work.deltas,
             scale=-lr / momentum_power, beta=1.0, when_done=move_layer)
    return loss


def settle_velocities(velocity, momentum_power):
    """Multiply each velocity array by momentum_power in place, so that it
    is V itself, and set every V below VELOCITY_FLOOR in magnitude to 0."""
    for V in velocity:
        V *= momentum_power
        V[np.abs(V) < VELOCITY_FLOOR] = 0


def layer_sizes(layers):
    """Return the layer sizes that the layers' arrays imply."""
    return [layers[0].shape[0] - 1] + [P.shape[1] for P in layers]


def chunks(layers, X, start, rows):
    """Yield (lo, acts, masks) for X in chunks of `rows` rows.

    Each chunk is copied into acts[start] as the input of layer start.
    """
    sizes = layer_sizes(layers)
    buffers = {}  # keyed by length, because the last chunk can be shorter
    for lo in range(0, len(X), rows):
        chunk = X[lo:lo + rows]
        n = len(chunk)
        if n not in buffers:
            buffers[n] = (allocate_activations(sizes, n, X.dtype),
                          allocate_masks(sizes, n))
        acts, masks = buffers[n]
        acts[start][:, :-1] = chunk
        yield lo, acts, masks


def predict(layers, X, layer=-1, start=0, rows=EVAL_ROWS):
    """Return the output of layer `layer` for all of X, computed in chunks.

    X is the input of layer `start`: images for 0, codes for CODE_LAYER.
    """
    i = layer % len(layers)
    out = np.empty((len(X), layers[i].shape[1]), X.dtype)
    for lo, acts, masks in chunks(layers, X, start, rows):
        forward(layers, acts, masks, start)
        out[lo:lo + len(acts[0])] = without_ones(acts, i + 1)
    return out


def evaluate(layers, X, rows=EVAL_ROWS):
    """Return the per-pixel MSE of reconstructing X, computed in chunks."""
    total = 0.0
    for _, acts, masks in chunks(layers, X, 0, rows):
        Y = forward(layers, acts, masks)
        total += mse_loss(Y, acts[0][:, :-1], diff=Y) * Y.size  # in place
    return total / X.size


def pca_test_mse(X_train, X_test, n_components, seed):
    """Return the test MSE of a PCA with n_components fit on X_train."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=n_components, random_state=seed).fit(X_train)
    total = 0.0
    for lo in range(0, len(X_test), EVAL_ROWS):
        chunk = X_test[lo:lo + EVAL_ROWS]
        rebuilt = pca.inverse_transform(pca.transform(chunk))
        total += float(np.sum((rebuilt - chunk) ** 2))
    return total / X_test.size


# ---------------------------------------------------------------------------
# Training


def learning_rate(args, epoch, step, steps):
    """Return the learning rate of step `step` of `steps` in epoch `epoch`.

    Epoch e (from 1) trains at lr * lr_decay**(e - 1).  The first epoch
    starts lower and rises linearly to lr, which keeps larger rates
    usable: at lr 12, full steps from the random initial weights made the
    loss jump up and down for the first epochs.  No rate depends on
    --epochs, so a run resumed for more epochs continues the same
    schedule.
    """
    rate = args.lr * args.lr_decay ** (epoch - 1)
    if epoch == 1:
        rate *= (step + 1) / steps
    return rate


def train_epoch(layers, velocity, X_train, args, rng, works, epoch):
    """Take one epoch of SGD steps in place; return the mean batch MSE.

    works maps a batch size to its Workspace.  The mean weights each
    batch's MSE by its size, so it is the MSE over every pixel the epoch
    saw.  Raises TrainingDiverged on a loss that is not finite.

    With momentum, the velocity arrays store V / momentum_power during the
    epoch, momentum_power being the momentum raised to the number of steps
    since they last stored V.  So each step multiplies one number by the
    momentum, not every V.  They store V again at the end of the epoch, for
    checkpoints.
    """
    n_train = len(X_train)
    batch_size = min(args.batch_size, n_train)
    steps = math.ceil(n_train / batch_size)
    momentum_power = 1.0
    order = rng.permutation(n_train)
    loss_sum = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for step, lo in enumerate(range(0, n_train, batch_size)):
            idx = order[lo:lo + batch_size]
            work = works[len(idx)]
            if args.momentum:
                if momentum_power * args.momentum < MIN_MOMENTUM_POWER:
                    settle_velocities(velocity, momentum_power)
                    momentum_power = 1.0
                momentum_power *= args.momentum

            # Gather the shuffled batch into the reused buffer.
            np.take(X_train, idx, axis=0, out=work.batch)

            lr = learning_rate(args, epoch, step, steps)
            power = momentum_power if args.momentum else None
            loss = sgd_step(layers, velocity, work, lr, power)
            if not math.isfinite(loss):
                suggestion = min(args.lr / 10, LR)
                raise TrainingDiverged(
                    f"the training loss became {loss} in epoch {epoch}, "
                    f"batch {step + 1}; try a smaller learning rate "
                    f"than --lr {args.lr:g}, such as --lr {suggestion:g}."
                )
            loss_sum += loss * len(idx)
    if args.momentum:
        settle_velocities(velocity, momentum_power)
    return loss_sum / n_train


def train(layers, velocity, X_train, X_test, args, rng, history, log):
    """Train in place until len(history) == args.epochs; return history.

    Each epoch reshuffles the training images with rng, takes SGD steps
    of args.batch_size images, then evaluates the whole test split.
    """
    batch_size = min(args.batch_size, len(X_train))
    sizes = {batch_size, len(X_train) % batch_size or batch_size}
    works = {n: Workspace(LAYER_SIZES, n, X_train.dtype) for n in sizes}
    for epoch in range(len(history) + 1, args.epochs + 1):
        start = time.perf_counter()
        train_mse = train_epoch(layers, velocity, X_train, args, rng, works,
                                epoch)
        seconds = time.perf_counter() - start
        record = {"epoch": epoch, "train_mse": train_mse,
                  "test_mse": evaluate(layers, X_test),
                  "train_seconds": seconds}
        history.append(record)
        log(format_epoch(record, args.epochs))
    return history


def format_epoch(record, epochs):
    """Return the log line of one epoch."""
    width = len(str(epochs))
    return (f"epoch {record['epoch']:{width}d}/{epochs}  "
            f"train MSE {record['train_mse']:.6f}  "
            f"test MSE {record['test_mse']:.6f}  "
            f"{record['train_seconds']:6.2f} s")


# ---------------------------------------------------------------------------
# Figures


def new_figure(**kwargs):
    """Return a matplotlib Figure drawn by Agg, whatever MPLBACKEND is."""
    # An invalid MPLBACKEND makes `import matplotlib` fail, and a GUI
    # backend needs a display; Figure with Agg needs neither.
    os.environ["MPLBACKEND"] = "agg"
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def plot_loss_curve(history, pca_mse, components, title, path):
    """Draw train and test MSE per epoch, with the PCA baseline as a line."""
    fig = new_figure(figsize=(6.4, 4.2), layout="constrained")
    from matplotlib.ticker import MaxNLocator  # after new_figure sets Agg

    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r["train_mse"] for r in history], label="train MSE")
    ax.plot(epochs, [r["test_mse"] for r in history], label="test MSE")
    ax.axhline(pca_mse, color="gray", linestyle="--",
               label=f"PCA, {components} components (test)")
    ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("mean squared error per pixel")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


def plot_latent_pca(codes, labels, classes, title, path):
    """Scatter the codes' first two principal components by class."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=2).fit(codes)
    xy = pca.transform(codes)
    share = pca.explained_variance_ratio_ * 100
    fig = new_figure(figsize=(7.5, 6), layout="constrained")
    ax = fig.add_subplot()
    for k, name in enumerate(classes):
        mask = labels == k
        ax.scatter(xy[mask, 0], xy[mask, 1], s=3, alpha=0.6, label=name,
                   color=f"C{k}")
    ax.set_xlabel(f"PC 1 ({share[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({share[1]:.1f}% of variance)")
    ax.set_title(title)
    ax.legend(markerscale=4, fontsize="small", loc="best")
    fig.savefig(path, dpi=120)


def plot_image_rows(rows, row_labels, title, path):
    """Draw rows of 28x28 images, each row labelled on its left."""
    side = math.isqrt(LAYER_SIZES[0])
    n_rows, n_cols = len(rows), len(rows[0])
    fig = new_figure(figsize=(1.0 * n_cols + 1.2, 1.0 * n_rows + 0.6),
                     layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (images, row_label) in enumerate(zip(rows, row_labels)):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image.reshape(side, side), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(row_label, rotation=0, ha="right", va="center")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)


def interpolation_rows(layers, codes, labels, classes, steps=10, pairs=4):
    """Decode evenly spaced codes between pairs of test images.

    Returns (rows, row_labels): pair k joins the first test image of class
    k with the first of class k + 5.  A class missing from the test images
    falls back to image 0, and a pair of one image to image 0 and 1.
    """
    t = np.linspace(0.0, 1.0, steps, dtype=codes.dtype)[:, None]
    rows, row_labels = [], []
    for k in range(pairs):
        a = int(np.argmax(labels == k % 10))
        b = int(np.argmax(labels == (k + 5) % 10))
        if a == b:
            b = (a + 1) % len(codes)
        line = (1 - t) * codes[a] + t * codes[b]  # (steps, K)
        rows.append(predict(layers, line, start=CODE_LAYER))
        row_labels.append(f"{classes[labels[a]]}\nto {classes[labels[b]]}")
    return rows, row_labels


def draw_figures(layers, data, history, pca_mse, components, folder):
    """Write every figure of a run into folder."""
    X_test, y_test, classes = data["X_test"], data["y_test"], data["classes"]
    name = data["title"]
    plot_loss_curve(history, pca_mse, components,
                    f"{name}: reconstruction error", folder / "loss_curve.png")

    codes = predict(layers, X_test, layer=CODE_LAYER - 1)
    plot_latent_pca(codes, y_test, classes,
                    f"{name}: {codes.shape[1]}-number codes of the test "
                    "images, PCA to 2-D", folder / "latent_space_pca.png")

    originals = X_test[:10]
    rebuilt = predict(layers, originals)
    plot_image_rows([originals, rebuilt], ["original", "reconstruction"],
                    f"{name}: test images and their reconstructions",
                    folder / "reconstructed_images.png")

    rows, row_labels = interpolation_rows(layers, codes, y_test, classes)
    plot_image_rows(rows, row_labels,
                    f"{name}: decoded points on the line between two codes",
                    folder / "latent_interpolation.png")


# ---------------------------------------------------------------------------
# Saving and resuming


def save_checkpoint(path, layers, velocity, history, rng, config):
    """Write the parameters, velocities, history, config and generator state.

    Layer i is saved as its weights W{i}, bias b{i} and velocity V{i}.
    """
    arrays = {}
    for i, (layer, V) in enumerate(zip(layers, velocity)):
        arrays.update({f"W{i}": layer[:-1], f"b{i}": layer[-1], f"V{i}": V})
    arrays["epoch"] = np.array(len(history))
    arrays["history"] = np.array(json.dumps(history))
    arrays["rng_state"] = np.array(json.dumps(rng.bit_generator.state))
    arrays["config"] = np.array(json.dumps(config))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def valid_history(history):
    """Return whether history is a list of epoch records, epochs 1, 2, ..."""
    keys = ["epoch", "train_mse", "test_mse", "train_seconds"]
    if not isinstance(history, list):
        return False
    for number, record in enumerate(history, start=1):
        if not (isinstance(record, dict) and record.get("epoch") == number
                and all(isinstance(record.get(key), (int, float))
                        for key in keys)):
            return False
    return True


def load_checkpoint(path, dtype):
    """Return layers, velocities, history, rng and config saved by a run."""
    not_checkpoint = (f"cannot resume from {path}: it is not an "
                      "autoencoder.npz written by this script")
    n = len(LAYER_SIZES) - 1
    try:
        saved = np.load(path, allow_pickle=False)
        if not isinstance(saved, np.lib.npyio.NpzFile):
            raise InputError(f"{not_checkpoint} (a single array).")
        with saved:
            names = [f"{kind}{i}" for kind in "WbV" for i in range(n)]
            missing = [name for name in names + ["history", "rng_state",
                                                 "config", "epoch"]
                       if name not in saved.files]
            if missing:
                raise InputError(
                    f"cannot resume from {path}: it has no "
                    f"{', '.join(missing)}. "
                    "A checkpoint of an older version of the script has "
                    "no velocities V0..V5 and cannot be resumed; start a "
                    "new run without --resume.")
            arrays = [[saved[f"{kind}{i}"] for i in range(n)]
                      for kind in "WbV"]
            epoch = int(saved["epoch"])
            history = json.loads(str(saved["history"]))
            rng = np.random.default_rng()
            rng.bit_generator.state = json.loads(str(saved["rng_state"]))
            config = json.loads(str(saved["config"]))
    except (OSError, EOFError, KeyError, ValueError, TypeError,
            zipfile.BadZipFile, zlib.error) as error:
        raise InputError(f"{not_checkpoint} ({type(error).__name__}).") \
            from None
    shapes = [[a.shape for a in kind] for kind in arrays]
    pairs = list(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:]))
    expected = [pairs, [(n_out,) for _, n_out in pairs],
                [(n_in + 1, n_out) for n_in, n_out in pairs]]
    if shapes != expected:
        raise InputError(
            f"cannot resume from {path}: its weights, biases and "
            f"velocities have shapes {shapes}, this script's have "
            f"{expected}."
        )
    if not (isinstance(config, dict) and valid_history(history)
            and len(history) == epoch):
        raise InputError(f"{not_checkpoint} (its history or settings are "
                         "damaged).")
    orders = [layer_order(n_in, n_out) for n_in, n_out in pairs]
    layers = [np.asarray(np.vstack([W, b]), dtype, order)
              for W, b, order in zip(*arrays[:2], orders)]
    velocity = [np.asarray(V, dtype, order)
                for V, order in zip(arrays[2], orders)]
    return layers, velocity, history, rng, config


# ---------------------------------------------------------------------------
# Command line


def parse_number(kind, text):
    """Return text as a kind, or raise argparse's error naming the text."""
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"invalid {kind.__name__} value: {text!r}") from None


def positive(kind):
    """Return an argparse type that accepts only finite values above 0."""
    def parse(text):
        value = parse_number(kind, text)
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(
                f"must be a finite number greater than 0, got {text}")
        return value
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def seed(text):
    """Parse a seed that both NumPy and scikit-learn accept."""
    value = parse_number(int, text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(
            f"must be from 0 to {MAX_SEED}, got {text}")
    return value


def momentum(text):
    """Parse a momentum: 0, or a number from MIN_MOMENTUM_POWER up to, but
    not including, 1 (train_epoch divides by powers of it)."""
    value = parse_number(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(
            f"must be at least 0 and below 1, got {text}")
    if 0 < value < MIN_MOMENTUM_POWER:
        raise argparse.ArgumentTypeError(
            f"must be 0 or at least {MIN_MOMENTUM_POWER:g}, got {text}.  "
            "A smaller momentum makes the scaled velocities overflow, so use "
            "0 for plain SGD")
    return value


def decay(text):
    """Parse a factor per epoch: a number above 0 and at most 1."""
    value = parse_number(float, text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be above 0 and at most 1, got {text}")
    return value


def path_flag(text):
    """Parse a non-empty path, expanding a leading ~ as a shell would."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return os.path.expanduser(text)


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults in --help, except for flags that are off by default."""

    def _get_help_string(self, action):
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None):
    """Parse and check the flags; exit with status 2 on a bad one."""
    parser = argparse.ArgumentParser(
        description="Train a NumPy autoencoder 784-512-256-128-256-512-784 "
                    "on MNIST, Fashion-MNIST or KMNIST with mini-batch SGD.",
        formatter_class=DefaultsHelpFormatter)
    parser.add_argument("--epochs", type=positive(int), default=100,
                        help="total epochs, counting those of --resume")
    parser.add_argument("--batch-size", type=positive(int), default=64,
                        help="images per SGD step")
    parser.add_argument("--lr", type=positive(float), default=LR,
                        help="learning rate, reached at the end of the "
                             "first epoch's linear warm-up")
    parser.add_argument("--lr-decay", type=decay, default=LR_DECAY,
                        help="factor applied to the learning rate after "
                             "each epoch")
    parser.add_argument("--momentum", type=momentum, default=MOMENTUM,
                        help="SGD momentum; 0 for plain SGD")
    parser.add_argument("--seed", type=seed, default=0,
                        help="seed of the generator for weights and shuffles")
    parser.add_argument("--dataset", choices=sorted(DATASETS),
                        default="mnist", help="dataset to train on")
    parser.add_argument("--data-dir", type=path_flag, default="data",
                        help="folder holding the dataset, or to download "
                             "it into")
    parser.add_argument("--out", type=path_flag, default="outputs",
                        help="folder for figures, log, metrics and weights")
    parser.add_argument("--limit", type=positive(int), default=None,
                        metavar="N",
                        help="train on the first N training images only")
    parser.add_argument("--split-test-set", type=positive(int), default=None,
                        metavar="N",
                        help="read only the test files: train on their first "
                             "N images and test on the rest")
    parser.add_argument("--dtype", choices=["float32", "float64"],
                        default="float32", help="floating-point type")
    parser.add_argument("--resume", type=path_flag, default=None,
                        metavar="PATH",
                        help="continue from the autoencoder.npz of a run, "
                             "with its generator state in place of --seed")
    args = parser.parse_args(argv)

    problem = unwritable_reason(Path(args.out))
    if problem:
        parser.error(f"argument --out: {problem}")
    if Path(args.data_dir).is_file():
        parser.error(f"argument --data-dir: {args.data_dir} is a file; give "
                     "the folder that holds the dataset")
    if args.resume is not None and not Path(args.resume).is_file():
        parser.error(f"argument --resume: no file {args.resume}; give the "
                     "autoencoder.npz of an earlier run")
    return args


def unwritable_reason(folder):
    """Return why files cannot be written into folder, or None if they can."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        return f"{existing} is a file, not a folder; choose another --out"
    if not os.access(existing, os.W_OK | os.X_OK):
        return (f"cannot write into {existing}; choose a folder you can "
                "write to")
    return None


def prepare_data(args, log):
    """Load the splits the flags ask for, as float arrays, and the titles."""
    splits = ["test"] if args.split_test_set else ["train", "test"]
    data, folder, classes = read_dataset_in_child(args.data_dir,
                                                  args.dataset, splits)
    log(f"read {TITLES[args.dataset]} from {folder}")
    if args.split_test_set:
        images, labels = data["test"]
        n = args.split_test_set
        if n > len(images) - MIN_TEST_IMAGES:
            raise InputError(
                f"--split-test-set {n} leaves fewer than {MIN_TEST_IMAGES} "
                f"test images: the test split contains {len(images)}. "
                f"Choose N of at most {len(images) - MIN_TEST_IMAGES}."
            )
        train_images = images[:n]
        test_images, test_labels = images[n:], labels[n:]
    else:
        train_images = data["train"][0]
        test_images, test_labels = data["test"]

    if args.limit is not None:
        if args.limit > len(train_images):
            log(f"note: --limit {args.limit} exceeds the "
                f"{len(train_images)} training images; using all of them")
        train_images = train_images[:args.limit]
    if args.batch_size > len(train_images):
        log(f"note: --batch-size {args.batch_size} exceeds the "
            f"{len(train_images)} training images; each batch is all of them")

    return {
        "X_train": to_unit_floats(train_images, args.dtype),
        "X_test": to_unit_floats(test_images, args.dtype),
        "y_test": test_labels,
        "classes": classes,
        "title": TITLES[args.dataset],
    }


def to_unit_floats(images, dtype):
    """Return uint8 images as floats in [0, 1], with no second copy."""
    floats = images.astype(dtype)
    floats *= np.asarray(1 / 255, dtype=dtype)
    return floats


class RunLog:
    """Print lines and write them to a log file, flushed line by line."""

    def __init__(self, path, earlier_lines=()):
        self.path = path
        self.file = open(path, "w", encoding="utf-8")
        for line in earlier_lines:
            self.file.write(line + "\n")

    def __call__(self, line="", stream=None):
        if not self.file.closed:
            self.file.write(line + "\n")
            self.file.flush()
        print(line, file=stream or sys.stdout, flush=True)

    def close(self):
        self.file.close()


def settings_lines(args, n_params, n_train, n_test):
    """Return the lines that open a run: settings and sizes."""
    flags = "  ".join(f"{k}={v}" for k, v in config_of(args).items())
    sizes = "-".join(str(n) for n in LAYER_SIZES)
    return [
        f"settings: {flags}",
        f"network: {sizes}, {n_params:,} parameters, "
        f"ReLU hidden layers, sigmoid output",
        f"data: {n_train:,} training images, {n_test:,} test images",
    ]


def config_of(args):
    """Return the flags as a JSON-ready dict."""
    return {k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()}


def initial_state(args, log):
    """Return layers, velocities, history and generator, new or resumed."""
    if args.resume is None:
        rng = np.random.default_rng(args.seed)
        layers = init_params(LAYER_SIZES, rng, args.dtype)
        return layers, [np.zeros_like(P) for P in layers], [], rng

    layers, velocity, history, rng, saved = load_checkpoint(args.resume,
                                                            args.dtype)
    if len(history) > args.epochs:
        raise InputError(
            f"{args.resume} has trained {len(history)} epochs, more than "
            f"--epochs {args.epochs}; --epochs counts all epochs, so give "
            f"at least {len(history)}."
        )
    if saved.get("seed") != args.seed:
        log(f"note: --seed {args.seed} is ignored; the generator continues "
            f"from {args.resume}, first seeded with {saved.get('seed')}")
        args.seed = saved.get("seed")
    ignored = {"epochs", "out", "resume", "seed", "data_dir"}
    changed = [f"--{k.replace('_', '-')} {saved.get(k)} -> {v}"
               for k, v in config_of(args).items()
               if k not in ignored and saved.get(k) != v]
    if changed:
        log("note: flags differ from the run being resumed, so the result "
            "will differ from one uninterrupted run: " + ", ".join(changed))
    return layers, velocity, history, rng


def write_results(layers, velocity, data, history, rng, args, log):
    """Evaluate, draw and save everything, then move it all into --out."""
    out = Path(args.out)
    # A PCA cannot have more components than training images.
    components = min(LAYER_SIZES[CODE_LAYER], len(data["X_train"]))
    with tempfile.TemporaryDirectory(dir=out, prefix=".staging-") as tmp:
        staging = Path(tmp)
        pca_mse = pca_test_mse(data["X_train"], data["X_test"], components,
                               args.seed)
        final = history[-1]
        log(f"PCA baseline ({components} components, fit on the training "
            f"images): test MSE {pca_mse:.6f}")
        epochs = f"{len(history)} epoch{'s' * (len(history) != 1)}"
        log(f"final: train MSE {final['train_mse']:.6f}, test MSE "
            f"{final['test_mse']:.6f} after {epochs}, "
            f"{sum(r['train_seconds'] for r in history):.1f} s of training")
        draw_figures(layers, data, history, pca_mse, components, staging)
        metrics = {"config": config_of(args), "epochs": history,
                   "final_train_mse": final["train_mse"],
                   "final_test_mse": final["test_mse"],
                   "pca_test_mse": pca_mse}
        (staging / "metrics.json").write_text(
            json.dumps(metrics, indent=2) + "\n")
        save_checkpoint(staging / "autoencoder.npz", layers, velocity,
                        history, rng, config_of(args))
        log(f"wrote {', '.join(OUTPUT_FILES)} to {out}")
        log.close()
        publish(staging, out)


def publish(staging, out):
    """Move the staged files and the log into out, holding off Ctrl-C.

    Each rename replaces one whole file, so out never contains a file cut
    short, and with Ctrl-C held off the whole set is replaced.
    """
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        for name in OUTPUT_FILES:
            if name != "training_log.txt":
                os.replace(staging / name, out / name)
        os.replace(out / PARTIAL_LOG, out / "training_log.txt")
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def lock_folder(out):
    """Lock the folder out for this run; return the locked descriptor.

    Two runs writing into one folder would mix their logs and outputs, so
    a second run stops with InputError.  The lock is on the folder itself,
    so no file is left behind.  Without fcntl (on Windows) there is no
    lock and None is returned.
    """
    try:
        import fcntl
    except ImportError:
        return None
    descriptor = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        raise InputError(
            f"another run is writing into --out {out}; wait for it to "
            f"finish, or choose another --out") from None
    return descriptor


def run(args):
    """Load, train, evaluate and write every output; return the exit code."""
    out = Path(args.out)
    early_lines = []  # printed before the log file exists

    def early_log(line):
        print(line, flush=True)
        early_lines.append(line)

    data = prepare_data(args, early_log)
    layers, velocity, history, rng = initial_state(args, early_log)

    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = lock_folder(out)  # released below, or when the process exits
        log = RunLog(out / PARTIAL_LOG, early_lines)
    except OSError as error:
        raise InputError(f"cannot write into --out {out}: {error}; choose "
                         "a folder you can write to") from None
    n_params = sum(P.size for P in layers)
    for line in settings_lines(args, n_params, len(data["X_train"]),
                               len(data["X_test"])):
        log(line)
    if history:
        log(f"resumed from {args.resume} after epoch {len(history)}")
        for record in history:
            log(format_epoch(record, args.epochs))

    try:
        train(layers, velocity, data["X_train"], data["X_test"], args, rng,
              history, log)
        write_results(layers, velocity, data, history, rng, args, log)
    except TrainingDiverged as error:
        log(f"error: {error}", sys.stderr)
        log(f"Training stopped; no figures were drawn. The results of "
            f"earlier runs in {out} are unchanged; this run's log is "
            f"{out / PARTIAL_LOG}.", sys.stderr)
        return EXIT_DIVERGED
    except KeyboardInterrupt:
        log(f"Interrupted after {len(history)} of {args.epochs} epochs. "
            f"The results of earlier runs in {out} are unchanged; this "
            f"run's log is {out / PARTIAL_LOG}.", sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        log.close()
        if lock is not None:
            os.close(lock)
    return 0


def interrupt(signum, frame):
    """Turn SIGTERM into KeyboardInterrupt, to stop as cleanly as Ctrl-C."""
    raise KeyboardInterrupt


def main(argv=None):
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        return run(args)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("Interrupted before training started; nothing was written.",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Standard output was closed early, as by `| head`.  Point it at
        # /dev/null so that the interpreter's final flush fails no more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"error: standard output was closed, so training stopped. "
              f"The results of earlier runs in {args.out} are unchanged; "
              f"this run's log is {Path(args.out) / PARTIAL_LOG}.",
              file=sys.stderr)
        return EXIT_DIVERGED


if __name__ == "__main__":
    sys.exit(main())
