"""train.data: the embedded digits (real data, fixed split), CIFAR-10 through TFDS (mocked: no download),
and a fast, clear failure when CIFAR-10 is neither prepared nor reachable."""

import socket
import time

import numpy as np
import pytest

from train import data


def test_digits_fixed_split_standardised():
  d = data.load("digits")
  assert (d.x_train.shape, d.x_test.shape, d.input_dim, d.num_classes) == ((1437, 64), (360, 64), 64, 10)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  assert abs(float(d.x_train.mean())) < 1e-5 and abs(float(d.x_train.std()) - 1) < 1e-4
  assert set(np.unique(d.y_train)) == set(range(10)) and set(np.unique(d.y_test)) == set(range(10))
  again = data.load("digits")  # the split is fixed: same arrays every time
  np.testing.assert_array_equal(d.x_test, again.x_test)
  np.testing.assert_array_equal(d.y_train, again.y_train)


def test_unknown_dataset():
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    data.load("mnist")


def test_cifar10_through_tfds_mock_loads_and_trains(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  from train import mlp
  with tfds.testing.mock_data(num_examples=64):
    d = data.load("cifar10", str(tmp_path / "tfds"))
    auto, notice = data.load_auto(str(tmp_path / "tfds"))  # --dataset auto takes CIFAR-10 when prepared
    lines = mlp.run(mlp.Config(dataset="cifar10", data_dir=str(tmp_path / "tfds"), width=8, epochs=1,
                               batch_size=16, out=str(tmp_path / "run"), progress=False))
  assert d.x_train.shape == (64, 3072) and d.x_test.shape == (64, 3072) and d.input_dim == 3072
  assert auto.name == "cifar10" and notice is None and np.array_equal(auto.x_train, d.x_train)
  assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int32
  assert d.y_train.min() >= 0 and d.y_train.max() < 10
  per_channel = d.x_train.reshape(64, 32, 32, 3)  # HWC order, standardised per channel
  np.testing.assert_allclose(per_channel.mean(axis=(0, 1, 2)), 0, atol=1e-4)
  np.testing.assert_allclose(per_channel.std(axis=(0, 1, 2)), 1, atol=1e-3)
  assert [m["step"] for m in lines] == [0, 4]  # 64 examples, batch 16
  assert lines[-1]["flops"] == 4 * 16 * 6 * (3072 * 8 + 8 * 8 + 8 * 10)


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_cifar10_offline_fails_fast_with_a_clear_message(tmp_path, monkeypatch):
  pytest.importorskip("tensorflow_datasets")
  monkeypatch.setattr(data, "CIFAR10_HOST", ("127.0.0.1", _closed_port()))
  monkeypatch.delenv("https_proxy", raising=False)
  monkeypatch.delenv("HTTPS_PROXY", raising=False)
  t0 = time.time()
  with pytest.raises(data.DataUnavailable, match=r"not prepared in .*--dataset digits"):
    data.load("cifar10", str(tmp_path))
  assert time.time() - t0 < 30  # TFDS alone retries for ~205 s
  assert not any(tmp_path.rglob("*.tfrecord*"))


def test_reachability_check_is_bounded():
  t0 = time.time()
  assert not data._reachable("127.0.0.1", _closed_port(), timeout=1.0)
  assert time.time() - t0 < 3


def test_both_reachability_checks_go_through_the_https_proxy(monkeypatch):
  # train.gpt's TFDS text data and train.mlp's CIFAR-10 ask the same question: behind a proxy, the proxy.
  from train import text_data
  with socket.socket() as proxy:
    proxy.bind(("127.0.0.1", 0))
    proxy.listen(2)
    monkeypatch.setenv("https_proxy", f"http://127.0.0.1:{proxy.getsockname()[1]}")
    assert text_data._reachable("127.0.0.1", _closed_port())
    assert data._reachable("127.0.0.1", _closed_port())
  monkeypatch.delenv("https_proxy")
  monkeypatch.delenv("HTTPS_PROXY", raising=False)
  assert not text_data._reachable("127.0.0.1", _closed_port())
