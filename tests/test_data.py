"""Loading through torchvision's real code, from disk and from a server."""

import functools
import gzip
import hashlib
import http.server
import socket
import threading

import numpy as np
import pytest
from torchvision import datasets

import autoencoder_mnist as ae
from conftest import idx_bytes, write_dataset

SPLITS = ["train", "test"]


def assert_matches(data, arrays):
    """Check loaded splits against the uint8 arrays that were written."""
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = data[split]
        expected_images, expected_labels = arrays[prefix]
        assert images.shape == (len(expected_images), 784)
        np.testing.assert_array_equal(images,
                                      expected_images.reshape(-1, 784))
        np.testing.assert_array_equal(labels, expected_labels)


def test_gz_only_folder_loads(tmp_path):
    arrays = write_dataset(tmp_path, gz=True)
    assert_matches(ae.load_data(tmp_path, "mnist", SPLITS)[0], arrays)


def test_torchvision_layout_loads(tmp_path):
    arrays = write_dataset(tmp_path / "MNIST" / "raw", gz=False)
    assert_matches(ae.load_data(tmp_path, "mnist", SPLITS)[0], arrays)


def test_plain_file_preferred_to_gz(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    arrays = write_dataset(raw, gz=False)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"left over")
    assert_matches(ae.load_data(tmp_path, "mnist", SPLITS)[0], arrays)


def test_test_split_alone_needs_two_files(tmp_path):
    arrays = write_dataset(tmp_path, splits=("t10k",))
    data, _ = ae.load_data(tmp_path, "mnist", ["test"])
    np.testing.assert_array_equal(data["test"][1], arrays["t10k"][1])


@pytest.mark.parametrize("layout", ["MNIST", "MNIST/raw", "up"])
def test_folder_one_level_off_loads(tmp_path, layout):
    arrays = write_dataset(tmp_path / "data" / "MNIST" / "raw")
    data_dir = {"MNIST": tmp_path / "data" / "MNIST",
                "MNIST/raw": tmp_path / "data" / "MNIST" / "raw",
                "up": tmp_path}[layout]
    assert_matches(ae.load_data(data_dir, "mnist", SPLITS)[0], arrays)


@pytest.mark.parametrize("gz", [False, True])
def test_name_variants_load(tmp_path, gz):
    arrays = write_dataset(tmp_path, gz=gz)
    for path in tmp_path.iterdir():
        variant = path.name.replace("-idx", ".idx").upper()
        path.rename(tmp_path / variant)
    assert_matches(ae.load_data(tmp_path, "mnist", SPLITS)[0], arrays)


def test_sibling_folders_not_searched(tmp_path, monkeypatch):
    write_dataset(tmp_path / "fashion")
    monkeypatch.setattr(datasets.MNIST, "mirrors",
                        [f"http://127.0.0.1:{closed_port()}/"])
    with pytest.raises(ae.InputError, match="could not download MNIST"):
        ae.load_data(tmp_path, "mnist", SPLITS)


def test_only_test_files_suggests_split(tmp_path):
    write_dataset(tmp_path, splits=("t10k",))
    with pytest.raises(ae.InputError, match="--split-test-set N"):
        ae.load_data(tmp_path, "mnist", SPLITS)


def test_fashion_mnist_folder_loads(tmp_path):
    arrays = write_dataset(tmp_path / "FashionMNIST" / "raw")
    assert_matches(ae.load_data(tmp_path, "fashion-mnist", SPLITS)[0],
                   arrays)


@pytest.fixture
def served_mnist(tmp_path, monkeypatch):
    """Serve four gzip'd IDX files on loopback as torchvision's mirror."""
    site = tmp_path / "site"
    arrays = write_dataset(site, gz=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(site))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(datasets.MNIST, "mirrors",
                        [f"http://127.0.0.1:{server.server_port}/"])
    resources = [(path.name, hashlib.md5(path.read_bytes()).hexdigest())
                 for path in sorted(site.iterdir())]
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    yield server, arrays
    server.shutdown()
    server.server_close()


def test_download_then_offline_load(tmp_path, served_mnist):
    server, arrays = served_mnist
    data_dir = tmp_path / "data"
    assert_matches(ae.load_data(data_dir, "mnist", SPLITS)[0], arrays)
    raw = data_dir / "MNIST" / "raw"
    assert (raw / "train-images-idx3-ubyte").is_file()

    # With the server gone, the files on disk are enough.
    server.shutdown()
    server.server_close()
    assert_matches(ae.load_data(data_dir, "mnist", SPLITS)[0], arrays)


def test_download_checksum_mismatch_fails(tmp_path, served_mnist,
                                          monkeypatch):
    resources = [(name, "0" * 32) for name, _ in datasets.MNIST.resources]
    monkeypatch.setattr(datasets.MNIST, "resources", resources)
    with pytest.raises(ae.InputError, match="could not download MNIST"):
        ae.load_data(tmp_path / "data", "mnist", SPLITS)


def closed_port():
    """Return a loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_no_network_no_files_names_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.MNIST, "mirrors",
                        [f"http://127.0.0.1:{closed_port()}/"])
    with pytest.raises(ae.InputError) as raised:
        ae.load_data(tmp_path / "empty", "mnist", SPLITS)
    message = str(raised.value)
    assert "could not download MNIST" in message
    assert str(tmp_path / "empty" / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte.gz" in message


def test_missing_file_named(tmp_path):
    write_dataset(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ae.InputError) as raised:
        ae.load_data(tmp_path, "mnist", SPLITS)
    assert "t10k-labels-idx1-ubyte" in str(raised.value)
    assert str(tmp_path) in str(raised.value)


@pytest.mark.parametrize("damage", ["truncated gz", "truncated idx",
                                    "not idx", "not gz", "empty"])
def test_damaged_file_named(tmp_path, damage):
    write_dataset(tmp_path, gz=damage != "truncated idx")
    name = "train-images-idx3-ubyte"
    if damage == "truncated idx":
        path = tmp_path / name
        path.write_bytes(path.read_bytes()[:5000])
    else:
        path = tmp_path / f"{name}.gz"
        content = {"truncated gz": path.read_bytes()[:3000],
                   "not idx": gzip.compress(b"<html>Not found</html>"),
                   "not gz": b"<html>Not found</html>",
                   "empty": b""}[damage]
        path.write_bytes(content)
    with pytest.raises(ae.InputError) as raised:
        ae.load_data(tmp_path, "mnist", SPLITS)
    message = str(raised.value)
    assert str(path) in message
    assert "Copy an intact file into its place" in message


def test_wrong_image_shape_named(tmp_path):
    write_dataset(tmp_path, gz=False)
    images = np.zeros((300, 14, 14), np.uint8)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    with pytest.raises(ae.InputError, match=r"shape \(14, 14\)"):
        ae.load_data(tmp_path, "mnist", SPLITS)


def test_label_count_mismatch_named(tmp_path):
    write_dataset(tmp_path, gz=False)
    labels = np.zeros(7, np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(ae.InputError, match="7 labels for the 300 images"):
        ae.load_data(tmp_path, "mnist", SPLITS)


def test_label_out_of_range_named(tmp_path):
    write_dataset(tmp_path, gz=False)
    labels = np.full(100, 42, np.uint8)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    with pytest.raises(ae.InputError, match="the label 42, expected 0 to 9"):
        ae.load_data(tmp_path, "mnist", SPLITS)
