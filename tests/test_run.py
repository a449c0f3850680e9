"""The script end to end: outputs, resume, datasets and determinism."""

import json
import math

import numpy as np
import pytest

import autoencoder_mnist as ae
from conftest import SHARED_MNIST, run_script, write_dataset

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FIGURES = ["loss_curve.png", "latent_space_pca.png",
           "reconstructed_images.png", "latent_interpolation.png"]


def losses(out):
    """Return (train, test) MSE pairs of every epoch in out/metrics.json."""
    metrics = json.loads((out / "metrics.json").read_text())
    return [(r["train_mse"], r["test_mse"]) for r in metrics["epochs"]]


def check_outputs(out, epochs):
    """Check every output of a finished run of the given epochs."""
    for name in ae.OUTPUT_FILES:
        assert (out / name).is_file(), f"{name} missing"
    for name in FIGURES:
        assert (out / name).read_bytes().startswith(PNG_SIGNATURE), name
    assert not (out / ae.PARTIAL_LOG).exists()
    assert not list(out.glob(".staging-*"))

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["config"]) >= {"epochs", "batch_size", "lr",
                                      "lr_decay", "momentum", "seed",
                                      "data_dir", "out", "limit", "dtype",
                                      "dataset", "resume"}
    assert [r["epoch"] for r in metrics["epochs"]] == list(
        range(1, epochs + 1))
    for record in metrics["epochs"]:
        for key in ("train_mse", "test_mse", "train_seconds"):
            assert math.isfinite(record[key]), f"{key} of {record}"
    assert metrics["final_train_mse"] == metrics["epochs"][-1]["train_mse"]
    assert metrics["final_test_mse"] == metrics["epochs"][-1]["test_mse"]
    assert 0 < metrics["pca_test_mse"] < 1

    log = (out / "training_log.txt").read_text().splitlines()
    assert log[0].startswith("read ")
    assert log[1].startswith("settings: ")
    assert "1,132,944 parameters" in log[2]
    assert sum(line.startswith("epoch ") for line in log) == epochs
    assert any(line.startswith("final: ") for line in log)

    with np.load(out / "autoencoder.npz") as saved:
        for i, (n_in, n_out) in enumerate(zip(ae.LAYER_SIZES[:-1],
                                              ae.LAYER_SIZES[1:])):
            assert saved[f"W{i}"].shape == (n_in, n_out)
            assert saved[f"b{i}"].shape == (n_out,)
            assert saved[f"V{i}"].shape == (n_in + 1, n_out)
        assert int(saved["epoch"]) == epochs
    return metrics


def test_run_writes_every_output(tmp_path, data_dir):
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--epochs", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    metrics = check_outputs(out, 2)
    train = [r["train_mse"] for r in metrics["epochs"]]
    assert train[1] < train[0]
    assert "epoch 2/2" in result.stdout


@pytest.mark.skipif(not SHARED_MNIST.is_dir(),
                    reason="real MNIST test files are not on this machine")
def test_run_on_real_mnist_digits(tmp_path):
    out = tmp_path / "out"
    result = run_script("--data-dir", SHARED_MNIST, "--split-test-set", 9000,
                        "--limit", 1000, "--epochs", 2, "--out", out)
    assert result.returncode == 0, result.stderr
    metrics = check_outputs(out, 2)
    train = [r["train_mse"] for r in metrics["epochs"]]
    assert train[1] < train[0]
    assert "data: 1,000 training images, 1,000 test images" in result.stdout


@pytest.fixture(scope="module")
def four_epoch_runs(tmp_path_factory):
    """Run 4 epochs at once, then 2 epochs resumed to 4, on the same data."""
    root = tmp_path_factory.mktemp("resume")
    data_dir = root / "data"
    write_dataset(data_dir)
    common = ("--data-dir", data_dir, "--batch-size", 32)
    whole, half, resumed = root / "whole", root / "half", root / "resumed"
    for args in (("--epochs", 4, "--out", whole),
                 ("--epochs", 2, "--out", half),
                 ("--epochs", 4, "--out", resumed,
                  "--resume", half / "autoencoder.npz")):
        result = run_script(*common, *args)
        assert result.returncode == 0, result.stderr
    return {"root": root, "common": common, "whole": whole, "half": half,
            "resumed": resumed}


def test_resume_matches_uninterrupted_run(four_epoch_runs):
    whole = losses(four_epoch_runs["whole"])
    resumed = losses(four_epoch_runs["resumed"])
    assert len(whole) == 4
    assert resumed == whole
    check_outputs(four_epoch_runs["resumed"], 4)


def test_resume_with_no_epochs_left_redraws(four_epoch_runs):
    runs = four_epoch_runs
    out = runs["root"] / "again"
    result = run_script(*runs["common"], "--epochs", 4, "--out", out,
                        "--resume", runs["whole"] / "autoencoder.npz")
    assert result.returncode == 0, result.stderr
    assert losses(out) == losses(runs["whole"])
    check_outputs(out, 4)


def test_resume_past_epochs_rejected(four_epoch_runs):
    runs = four_epoch_runs
    out = runs["root"] / "fewer"
    result = run_script(*runs["common"], "--epochs", 3, "--out", out,
                        "--resume", runs["whole"] / "autoencoder.npz")
    assert result.returncode == 2
    assert "at least 4" in result.stderr
    assert not out.exists()


def test_same_seed_same_losses(four_epoch_runs):
    runs = four_epoch_runs
    out = runs["root"] / "repeat"
    result = run_script(*runs["common"], "--epochs", 4, "--out", out)
    assert result.returncode == 0, result.stderr
    assert losses(out) == losses(runs["whole"])


def test_other_seed_other_losses(four_epoch_runs):
    runs = four_epoch_runs
    out = runs["root"] / "seed1"
    result = run_script(*runs["common"], "--epochs", 4, "--seed", 1,
                        "--out", out)
    assert result.returncode == 0, result.stderr
    first, other = losses(runs["whole"]), losses(out)
    assert all(a != b for a, b in zip(first, other))


def test_fashion_mnist_run(tmp_path):
    data_dir = tmp_path / "data"
    write_dataset(data_dir / "FashionMNIST" / "raw")
    out = tmp_path / "out"
    result = run_script("--dataset", "fashion-mnist", "--data-dir", data_dir,
                        "--epochs", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    metrics = check_outputs(out, 1)
    assert metrics["config"]["dataset"] == "fashion-mnist"


@pytest.mark.parametrize("dataset, first_class", [
    ("mnist", "0 - zero"), ("fashion-mnist", "T-shirt/top"), ("kmnist", "o")])
def test_class_names_per_dataset(dataset, first_class):
    names = ae.class_names(dataset)
    assert len(names) == 10
    assert names[0] == first_class
