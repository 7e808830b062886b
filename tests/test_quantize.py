"""Quantized vectors: sentence-transformers' scheme through raylib.models.quantize, and its way back."""

import numpy as np
import pytest

from raylib.models.quantize import calibration_ranges, dequantize, quantize


def unit_vectors(rows: int, dims: int, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dims)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_scalar_codes_follow_the_documented_scheme():
    ranges = np.array([[0.0, -1.0], [1.0, 1.0]], np.float32)  # steps 1/255 and 2/255
    vectors = np.array([[0.0, -1.0], [0.5, 0.0], [0.9, 0.8], [2.0, -3.0]], np.float32)
    uint8 = quantize(vectors, "uint8", ranges)
    assert uint8.dtype == np.uint8
    assert uint8.tolist() == [[0, 0], [127, 127], [229, 229], [255, 0]]  # floor, clipped at the range's ends
    assert quantize(vectors, "int8", ranges).tolist() == (uint8.astype(int) - 128).tolist()


def test_bits_are_packed_signs():
    vectors = np.array([[0.5, -0.1, 0.0, 2.0, -1.0, 1.0, 1.0, -3.0, 0.2, -0.2]], np.float32)
    ubinary = quantize(vectors, "ubinary")
    assert ubinary.dtype == np.uint8 and ubinary.tolist() == [[0b10010110, 0b10000000]]
    assert quantize(vectors, "binary").tolist() == [[0b10010110 - 128, 0]]


def test_dequantize_inverts_codes_up_to_half_a_step():
    vectors = unit_vectors(500, 64)
    ranges = calibration_ranges(vectors[:400])
    step = (ranges[1] - ranges[0]) / 255
    inside = vectors[:400]
    for precision in ("int8", "uint8"):
        back = dequantize(quantize(inside, precision, ranges), precision, 64, ranges)
        assert np.all(np.abs(back - inside) <= step / 2 + 1e-6)
    for precision in ("binary", "ubinary"):
        back = dequantize(quantize(vectors[:, :61], precision), precision, 61)
        assert back.shape == (500, 61)
        np.testing.assert_array_equal(back > 0, vectors[:, :61] > 0)
        np.testing.assert_allclose(np.linalg.norm(back, axis=1), 1, atol=1e-6)


def test_scalar_codes_need_fitting_ranges():
    vectors = unit_vectors(10, 8)
    with pytest.raises(ValueError, match="needs calibration ranges"):
        quantize(vectors, "int8")
    with pytest.raises(ValueError, match="do not fit"):
        quantize(vectors, "uint8", calibration_ranges(unit_vectors(10, 4)))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        calibration_ranges(vectors[:1])
    with pytest.raises(ValueError, match="choose one of"):
        quantize(vectors, "int4")
