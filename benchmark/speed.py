"""Time training epochs of the NumPy autoencoder against PyTorch's.

Both sides train the same 784-512-256-128-256-512-784 network (ReLU inside,
sigmoid output, per-pixel MSE) in float32 on the same 60,000 images, with
SGD at the script's momentum and again as plain SGD.  They take turns in one
process, so that both see the same machine load.  A third contender runs
only the 17 matrix products of each SGD step through NumPy, as a plain
NumPy version would call them: the floor.  A fourth runs the same products
through PyTorch, which shows how much of the gap to PyTorch lies in the
matrix-product libraries themselves.

    python benchmark/speed.py --data-dir DIR   # DIR contains Fashion-MNIST

Prints seconds per epoch (the median of --repeats), the ratio to PyTorch,
the floors, and the peak resident memory of the script's default run.
"""

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The pause before each timed epoch.  Without it, NumPy's epochs took 5%
# longer, likely because the worker threads of the contender before them
# were still spinning on the cores while waiting for work.
SETTLE_SECONDS = 1.0
sys.path.insert(0, str(ROOT))

import autoencoder_mnist as ae  # noqa: E402  (needs the path above)


def flops_per_image(sizes):
    """Return the FLOPs of the matrix products of one image's SGD step.

    Forward, weight gradient and input gradient each cost 2 n_in n_out per
    layer; the first layer needs no input gradient.
    """
    pairs = list(zip(sizes[:-1], sizes[1:]))
    macs = 3 * sum(m * n for m, n in pairs) - pairs[0][0] * pairs[0][1]
    return 2 * macs


def numpy_epoch(state, X, args):
    """Train the project's network for one epoch; return the seconds."""
    layers, velocity, rng, works = state
    start = time.perf_counter()
    # Epoch 2 has no warm-up, so every step runs at the same rate.
    ae.train_epoch(layers, velocity, X, args, rng, works, epoch=2)
    return time.perf_counter() - start


def floor_epoch(state, n_images, batch_size, matmul):
    """Run only the 17 matrix products of every step; return the seconds.

    matmul is np.matmul for NumPy arrays in state, torch.mm for tensors.
    """
    weights, acts, deltas, grads = state
    start = time.perf_counter()
    for lo in range(0, n_images, batch_size):
        n = min(batch_size, n_images - lo)
        A = [a[:n] for a in acts]
        D = [d[:n] for d in deltas]
        for i, W in enumerate(weights):
            matmul(A[i], W, out=A[i + 1])
        for i in range(len(weights) - 1, -1, -1):
            matmul(A[i].T, D[i + 1], out=grads[i])
            if i > 0:
                matmul(D[i + 1], weights[i].T, out=D[i])
    return time.perf_counter() - start


def torch_epoch(state, X, batch_size):
    """Train the PyTorch reference for one epoch; return the seconds."""
    import torch

    model, optimizer, generator = state
    loss_fn = torch.nn.MSELoss()  # mean over every pixel, as in the script
    start = time.perf_counter()
    order = torch.randperm(len(X), generator=generator)
    total = 0.0
    for lo in range(0, len(X), batch_size):
        batch = X[order[lo:lo + batch_size]]
        loss = loss_fn(model(batch), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
    seconds = time.perf_counter() - start
    if not math.isfinite(total):
        raise RuntimeError("the PyTorch reference diverged")
    return seconds


def torch_state(sizes, lr, momentum, seed):
    """Return the PyTorch reference network, its SGD and a generator."""
    import torch

    torch.manual_seed(seed)
    layers = []
    for i, (m, n) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(m, n))
        last = i == len(sizes) - 2
        layers.append(torch.nn.Sigmoid() if last else torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return model, optimizer, torch.Generator().manual_seed(seed)


def floor_state(sizes, batch_size, seed):
    """Return random weights and buffers for the matrix products alone,
    all row-major."""
    rng = np.random.default_rng(seed)
    weights = [np.ascontiguousarray(P[:-1])
               for P in ae.init_params(sizes, rng, np.float32)]
    acts = [rng.random((batch_size, n), np.float32) for n in sizes]
    deltas = [rng.random((batch_size, n), np.float32) * 1e-3 for n in sizes]
    grads = [np.empty_like(W) for W in weights]
    return weights, acts, deltas, grads


def time_batch_size(X, args, repeats, seed):
    """Return median seconds per epoch for numpy, torch and both floors.

    args contains the script's settings: batch size, learning rate, momentum.
    """
    import torch

    sizes = ae.LAYER_SIZES
    rng = np.random.default_rng(seed)
    layers = ae.init_params(sizes, rng, np.float32)
    velocity = [np.zeros_like(P) for P in layers]
    rows = {args.batch_size, len(X) % args.batch_size or args.batch_size}
    works = {n: ae.Workspace(sizes, n, np.float32) for n in rows}
    numpy_state = (layers, velocity, rng, works)
    reference = torch_state(sizes, args.lr, args.momentum, seed)
    floor = floor_state(sizes, args.batch_size, seed)
    # The PyTorch floor gets copies, so the two floors share no memory.
    torch_floor = [[torch.from_numpy(a.copy()) for a in arrays]
                   for arrays in floor]
    X_torch = torch.from_numpy(X)

    times = {"numpy": [], "torch": [], "floor": [], "torch floor": []}
    for _ in range(repeats):
        time.sleep(SETTLE_SECONDS)
        times["numpy"].append(numpy_epoch(numpy_state, X, args))
        time.sleep(SETTLE_SECONDS)
        times["torch"].append(torch_epoch(reference, X_torch,
                                          args.batch_size))
        time.sleep(SETTLE_SECONDS)
        times["floor"].append(floor_epoch(floor, len(X), args.batch_size,
                                          np.matmul))
        time.sleep(SETTLE_SECONDS)
        times["torch floor"].append(floor_epoch(torch_floor, len(X),
                                                args.batch_size, torch.mm))
    return {name: statistics.median(values) for name, values in times.items()}


def tree_rss_kib(pid):
    """Return the summed resident memory of pid and its descendants, KiB."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            children = Path(f"/proc/{current}/task/{current}/children")
            pending += [int(c) for c in children.read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue  # the process ended meanwhile
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def peak_memory_of_run(data_dir, epochs):
    """Run the script's defaults on Fashion-MNIST; return peak MiB.

    The peak is the largest sum, sampled every 20 ms, of the resident
    memory of the script and its data-loading child.
    """
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, str(ROOT / "autoencoder_mnist.py"),
                   "--dataset", "fashion-mnist", "--data-dir", str(data_dir),
                   "--epochs", str(epochs), "--out", out]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        peak = 0
        while process.poll() is None:
            peak = max(peak, tree_rss_kib(process.pid))
            time.sleep(0.02)
        if process.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed")
    return peak / 1024


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", required=True,
                        help="folder holding Fashion-MNIST's four files")
    parser.add_argument("--batch-sizes", type=int, nargs="+",
                        default=[64, 256])
    parser.add_argument("--momentums", type=float, nargs="+",
                        default=[ae.MOMENTUM, 0.0],
                        help="SGD momentum of both sides; 0 is plain SGD")
    parser.add_argument("--repeats", type=int, default=3,
                        help="epochs timed per contender; the median counts")
    parser.add_argument("--memory-epochs", type=int, default=1,
                        help="epochs of the run whose peak memory is "
                             "measured; 0 skips it")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    # Measured first, while this process is small: a child started later
    # would count this process's memory as its own until it execs.
    peak = None
    if args.memory_epochs > 0:
        peak = peak_memory_of_run(args.data_dir, args.memory_epochs)

    import torch
    from threadpoolctl import threadpool_info

    data, _ = ae.load_data(args.data_dir, "fashion-mnist", ["train"])
    X_uint8 = data["train"][0]
    X = ae.to_unit_floats(X_uint8, np.float32)
    defaults = ae.parse_args([])
    blas = [f"{i['internal_api']} {i['version']} ({i['num_threads']} "
            f"threads)" for i in threadpool_info() if i["user_api"] == "blas"]
    print(f"{len(X):,} Fashion-MNIST images, float32, lr {defaults.lr:g}; "
          f"{os.cpu_count()} CPUs; torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); numpy {np.__version__} "
          f"with {', '.join(blas)}")
    gflop = flops_per_image(ae.LAYER_SIZES) * len(X) / 1e9
    print(f"matrix products per epoch: {gflop:.1f} GFLOP; median of "
          f"{args.repeats} epochs each\n")

    header = (f"{'momentum':>8}  {'batch':>5}  {'numpy s':>8}  "
              f"{'torch s':>8}  {'numpy/torch':>11}  {'floor s':>8}  "
              f"{'numpy/floor':>11}  {'torch floor s':>13}  "
              f"{'numpy GFLOP/s':>13}  {'torch GFLOP/s':>13}")
    print(header)
    for momentum in args.momentums:
        for batch_size in args.batch_sizes:
            settings = argparse.Namespace(**vars(defaults))
            settings.batch_size, settings.momentum = batch_size, momentum
            t = time_batch_size(X, settings, args.repeats, args.seed)
            print(f"{momentum:>8g}  {batch_size:>5}  {t['numpy']:8.2f}  "
                  f"{t['torch']:8.2f}  {t['numpy'] / t['torch']:11.2f}  "
                  f"{t['floor']:8.2f}  {t['numpy'] / t['floor']:11.2f}  "
                  f"{t['torch floor']:13.2f}  "
                  f"{gflop / t['numpy']:13.1f}  {gflop / t['torch']:13.1f}",
                  flush=True)

    if peak is not None:
        print(f"\npeak resident memory of autoencoder_mnist.py and its "
              f"loader, default settings but {args.memory_epochs} epoch(s), "
              f"{len(X):,} images: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
