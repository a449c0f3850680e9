"""Each kind of bad input or interruption ends cleanly, losing nothing."""

import fcntl
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import autoencoder_mnist as ae
from conftest import ROOT, SCRIPT, idx_bytes, run_script, write_dataset


def digests(folder):
    """Return {file name: SHA-256} for every file in folder."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def assert_clean_failure(result, out, code=2):
    """Check the exit code, a one-line reason and no traceback or output."""
    assert result.returncode == code, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "error" in result.stderr
    assert not out.exists(), f"{out} was created"


# Data folder problems ------------------------------------------------------

def test_no_files_no_network(tmp_path):
    out = tmp_path / "out"
    result = run_script("--data-dir", tmp_path / "empty", "--out", out)
    assert_clean_failure(result, out)
    assert "could not download MNIST" in result.stderr
    assert str(tmp_path / "empty" / "MNIST" / "raw") in result.stderr
    assert "t10k-labels-idx1-ubyte.gz" in result.stderr


@pytest.mark.parametrize("problem", ["missing", "truncated", "not idx",
                                     "wrong shape"])
def test_bad_data_folder(tmp_path, problem):
    data_dir = tmp_path / "data"
    write_dataset(data_dir)
    path = data_dir / "train-images-idx3-ubyte.gz"
    if problem == "missing":
        path.unlink()
    elif problem == "truncated":
        path.write_bytes(path.read_bytes()[:2000])
    elif problem == "not idx":
        path.write_bytes(b"<html>403 Forbidden</html>")
    else:
        path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 10, 10),
                                                          np.uint8))))
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--out", out)
    assert_clean_failure(result, out)
    assert "train-images-idx3-ubyte" in result.stderr
    assert str(data_dir) in result.stderr


def test_unambiguous_layout_loads(tmp_path):
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_dataset(raw, gz=False)
    for path in raw.iterdir():
        path.rename(raw / path.name.replace("-idx", ".idx"))
    out = tmp_path / "out"
    result = run_script("--data-dir", raw, "--epochs", 1, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "metrics.json").is_file()


# Flags -------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--epochs", "0"), ("--epochs", "-3"), ("--epochs", "2.5"),
    ("--batch-size", "0"), ("--lr", "0"), ("--lr", "-0.1"), ("--lr", "nan"),
    ("--lr", "inf"), ("--lr", "fast"), ("--limit", "0"), ("--limit", "-5"),
    ("--split-test-set", "0"), ("--dtype", "float16"),
    ("--dataset", "cifar10"), ("--seed", "-1"), ("--seed", "4294967296"),
    ("--seed", "x"), ("--data-dir", ""), ("--resume", " "),
    ("--momentum", "1"), ("--momentum", "-0.1"), ("--momentum", "nan"),
    ("--momentum", "1e-300"),
    ("--lr-decay", "0"), ("--lr-decay", "1.5"), ("--lr-decay", "nan")])
def test_bad_flag_rejected_before_loading(tmp_path, flag, value):
    out = tmp_path / "out"
    result = run_script("--data-dir", tmp_path / "nothing", "--out", out,
                        flag, value)
    assert_clean_failure(result, out)
    assert f"argument {flag}" in result.stderr
    assert "usage:" in result.stderr
    assert not (tmp_path / "nothing").exists()


def test_out_that_is_a_file_rejected(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    for out in (blocker, blocker / "sub"):
        result = run_script("--data-dir", tmp_path / "nothing", "--out", out)
        assert result.returncode == 2
        assert "argument --out" in result.stderr
        assert "is a file" in result.stderr
    assert blocker.read_text() == "not a folder"


def test_empty_out_rejected(tmp_path):
    result = run_script("--data-dir", tmp_path / "nothing", "--out", "")
    assert result.returncode == 2
    assert "argument --out: must not be empty" in result.stderr


def test_uncreatable_out_named(tmp_path, data_dir):
    out = "/proc/autoencoder-test-out"
    result = run_script("--data-dir", data_dir, "--out", out)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot write into --out {out}" in result.stderr


def test_data_dir_that_is_a_file_rejected(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a folder")
    result = run_script("--data-dir", blocker, "--out", tmp_path / "out")
    assert result.returncode == 2
    assert "argument --data-dir" in result.stderr
    assert "is a file" in result.stderr


def test_missing_resume_file_rejected(tmp_path):
    out = tmp_path / "out"
    result = run_script("--resume", tmp_path / "none.npz", "--out", out)
    assert_clean_failure(result, out)
    assert "argument --resume" in result.stderr


@pytest.mark.parametrize("content", ["text", "npy", "truncated npz"])
def test_resume_from_non_checkpoint_rejected(tmp_path, data_dir, content):
    bad = tmp_path / "bad.npz"
    if content == "text":
        bad.write_bytes(b"not an npz file")
    elif content == "npy":
        np.save(bad.with_suffix(".npy"), np.zeros(3))
        bad.with_suffix(".npy").rename(bad)
    else:
        np.savez(bad, W0=np.zeros((784, 512)))
        bad.write_bytes(bad.read_bytes()[:1000])
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--resume", bad,
                        "--out", out)
    assert_clean_failure(result, out)
    assert f"cannot resume from {bad}" in result.stderr


def damaged_checkpoint(tmp_path, data_dir, damage):
    """Write a real checkpoint, damage it as named, and return its path."""
    first = run_script("--data-dir", data_dir, "--epochs", 1,
                       "--out", tmp_path / "first")
    assert first.returncode == 0, first.stderr
    with np.load(tmp_path / "first" / "autoencoder.npz") as saved:
        arrays = dict(saved)
    if damage == "no velocities":
        for i in range(len(ae.LAYER_SIZES) - 1):
            del arrays[f"V{i}"]
    elif damage == "config a list":
        arrays["config"] = np.array(json.dumps([1, 2]))
    else:
        history = json.loads(str(arrays["history"]))
        history[0]["train_mse"] = "low"
        arrays["history"] = np.array(json.dumps(history))
    path = tmp_path / "damaged.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("damage, message", [
    ("no velocities", "has no V0"), ("config a list", "damaged"),
    ("history a string", "damaged")])
def test_resume_from_damaged_checkpoint_rejected(tmp_path, data_dir, damage,
                                                 message):
    path = damaged_checkpoint(tmp_path, data_dir, damage)
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--epochs", 2,
                        "--resume", path, "--out", out)
    assert_clean_failure(result, out)
    assert message in result.stderr


def test_second_run_into_busy_out_rejected(tmp_path, data_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    lock = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as a run in progress would
        result = run_script("--data-dir", data_dir, "--epochs", 1,
                            "--out", out)
    finally:
        os.close(lock)
    assert result.returncode == 2
    assert "another run is writing into --out" in result.stderr
    assert "Traceback" not in result.stderr
    assert [p.name for p in out.iterdir()] == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "{}"


def test_limit_below_code_size_runs(tmp_path, data_dir):
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--epochs", 1, "--limit", 50,
                        "--out", out)
    assert result.returncode == 0, result.stderr
    assert "PCA baseline (50 components" in result.stdout
    assert (out / "metrics.json").is_file()


def test_split_leaving_too_few_test_images(tmp_path, data_dir):
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--split-test-set", 95,
                        "--out", out)
    assert_clean_failure(result, out)
    assert "at most 90" in result.stderr


def test_killed_loader_reported(tmp_path, data_dir):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--data-dir", str(data_dir),
         "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        loader = None
        deadline = time.monotonic() + 60
        while loader is None and time.monotonic() < deadline:
            children = Path(f"/proc/{process.pid}/task/{process.pid}/children")
            for pid in children.read_text().split():
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"spawn_main" in cmdline:
                    loader = int(pid)
            time.sleep(0.05)
        assert loader is not None, "no loader process appeared"
        os.kill(loader, signal.SIGKILL)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert_clean_failure(subprocess.CompletedProcess([], process.returncode,
                                                     stdout, stderr), out)
    assert "ended with exit code -9" in stderr


def test_limit_and_batch_above_data_use_all(tmp_path, data_dir):
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--epochs", 1, "--limit",
                        10_000, "--batch-size", 5000, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "--limit 10000 exceeds the 300 training images" in result.stdout
    assert "--batch-size 5000 exceeds the 300" in result.stdout
    assert "data: 300 training images" in result.stdout


# Numbers -----------------------------------------------------------------

def test_divergence_stops_and_keeps_results(tmp_path, data_dir):
    out = tmp_path / "out"
    first = run_script("--data-dir", data_dir, "--epochs", 1, "--out", out)
    assert first.returncode == 0, first.stderr
    before = digests(out)

    result = run_script("--data-dir", data_dir, "--epochs", 3, "--lr", 1e30,
                        "--out", out)
    assert result.returncode == ae.EXIT_DIVERGED
    assert "Traceback" not in result.stderr
    assert "Warning" not in result.stderr
    assert "epoch 1, batch" in result.stderr
    assert "smaller learning rate" in result.stderr
    partial = out / ae.PARTIAL_LOG
    assert "epoch 1, batch" in partial.read_text()
    after = digests(out)
    del after[ae.PARTIAL_LOG]
    assert after == before
    assert not list(out.glob(".staging-*"))


# Results on disk -----------------------------------------------------------

@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_keeps_earlier_results(tmp_path, data_dir, signum):
    out = tmp_path / "out"
    first = run_script("--data-dir", data_dir, "--epochs", 1, "--out", out)
    assert first.returncode == 0, first.stderr
    before = digests(out)

    # A terminal delivers Ctrl-C as SIGINT to a process that has not
    # ignored it; a background job of a shell may have, so reset it.
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--data-dir", str(data_dir),
         "--epochs", "10000", "--out", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        lines = []
        for line in process.stdout:
            lines.append(line)
            if re.match(r"epoch +2/", line):
                break
        assert re.match(r"epoch +2/", lines[-1]), "".join(lines)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=60)
    finally:
        process.kill()

    assert process.returncode == ae.EXIT_INTERRUPTED
    assert "Traceback" not in stderr
    assert "Interrupted after" in stderr
    log = (out / ae.PARTIAL_LOG).read_text()
    assert re.search(r"^epoch +1/10000", log, re.MULTILINE)
    assert re.search(r"^epoch +2/10000", log, re.MULTILINE)
    after = digests(out)
    del after[ae.PARTIAL_LOG]
    assert after == before
    assert not list(out.glob(".staging-*"))


def test_success_replaces_every_file(tmp_path, data_dir):
    out = tmp_path / "out"
    for seed in (0, 1):
        result = run_script("--data-dir", data_dir, "--epochs", 1,
                            "--seed", seed, "--out", out)
        assert result.returncode == 0, result.stderr
        if seed == 0:
            before = digests(out)
    after = digests(out)
    assert sorted(after) == sorted(ae.OUTPUT_FILES)
    for name in ae.OUTPUT_FILES:
        assert after[name] != before[name], f"{name} was not replaced"
    config = json.loads((out / "metrics.json").read_text())["config"]
    assert config["seed"] == 1


# No display ----------------------------------------------------------------

@pytest.mark.parametrize("backend", ["tkagg", "qtagg", "no-such-backend"])
def test_any_mplbackend_without_display(tmp_path, data_dir, backend):
    out = tmp_path / "out"
    result = run_script("--data-dir", data_dir, "--epochs", 1, "--out", out,
                        env={"MPLBACKEND": backend, "DISPLAY": "",
                             "WAYLAND_DISPLAY": ""})
    assert result.returncode == 0, result.stderr
    assert (out / "loss_curve.png").is_file()
