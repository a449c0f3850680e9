"""Shared helpers: small MNIST-format datasets and running the script."""

import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "autoencoder_mnist.py"
SHARED_MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k"

sys.path.insert(0, str(ROOT))


def idx_bytes(array):
    """Return array (uint8, 1 to 3 dims) encoded as an IDX file."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def synthetic_digits(n, seed):
    """Return n 28x28 uint8 images of ten blurry class shapes, and labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    shapes = []
    for k in range(10):
        cy, cx = 8 + (k % 3) * 6, 8 + (k // 3) * 4
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (10.0 + 4 * k))
        shapes.append(blob)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    images = np.stack([shapes[k] for k in labels])
    images = images * rng.uniform(0.6, 1.0, (n, 1, 1))
    images += rng.uniform(0, 0.1, images.shape)
    return (np.clip(images, 0, 1) * 255).astype(np.uint8), labels


def write_dataset(folder, n_train=300, n_test=100, gz=True, seed=0,
                  splits=("train", "t10k")):
    """Write MNIST-named IDX files of synthetic digits into folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sizes = {"train": n_train, "t10k": n_test}
    arrays = {}
    for offset, prefix in enumerate(splits):
        images, labels = synthetic_digits(sizes[prefix], seed + offset)
        arrays[prefix] = (images, labels)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(array)
            if gz:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return arrays


def run_script(*args, env=None, timeout=600):
    """Run the script with args; return the completed process."""
    full_env = dict(os.environ)
    # A proxy on a closed loopback port makes any download fail at once.
    full_env.update({"http_proxy": "http://127.0.0.1:9",
                     "https_proxy": "http://127.0.0.1:9",
                     "HTTP_PROXY": "http://127.0.0.1:9",
                     "HTTPS_PROXY": "http://127.0.0.1:9",
                     "no_proxy": "", "NO_PROXY": ""})
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)],
        capture_output=True, text=True, env=full_env, timeout=timeout,
        cwd=ROOT)


@pytest.fixture
def data_dir(tmp_path):
    """A folder of gzip'd synthetic MNIST files: 300 train, 100 test."""
    folder = tmp_path / "data"
    write_dataset(folder)
    return folder
