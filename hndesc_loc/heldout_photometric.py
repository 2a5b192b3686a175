"""Photometric families held out from training: validation and benchmarks only.

Written independently of `hndesc_loc.train.synthesis` (which renders the training
appearance changes: colour jitter, gamma, Reinhard colour transfer, histogram transfer,
`render_night`) and never imported by it, so that a score on these pairs measures
generalisation to changes of illumination the network was not trained on:

- `sensor_night`: a low-light exposure simulated in linear light through a camera response
  (sRGB decode, exposure 1/20-1/120, white balance of a tungsten or mercury lamp,
  Poisson-Gaussian sensor noise, sRGB encode, 8-bit), no glows.
- `tone_curve`: per-channel S-shaped or logarithmic tone curves (film / HDR looks).
- `colour_temperature`: von Kries adaptation to a black-body illuminant of 2000-12000 K.
- `cast_shadow`: soft shadows of random polygons over half the image, darkening 40-80%.

Each function: (rng, img float32 [H,W,3] in [0,1]) -> img of the same shape.
"""
from __future__ import annotations

import cv2
import numpy as np


def _srgb_to_linear(x: np.ndarray) -> np.ndarray:
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


def sensor_night(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    lin = _srgb_to_linear(img.astype(np.float64))
    lamp = np.array([1.0, 0.62, 0.28]) if rng.random() < 0.5 else np.array([0.75, 1.0, 0.85])
    lin = lin * lamp / rng.uniform(20, 120)
    full_well = rng.uniform(300, 1500)  # photo-electrons at white: Poisson shot noise
    electrons = rng.poisson(np.clip(lin, 0, None) * full_well) / full_well
    read = rng.normal(0, rng.uniform(0.0005, 0.002), lin.shape)
    gain = rng.uniform(4, 12)  # the camera's auto-exposure lifts the image back up
    out = _linear_to_srgb((electrons + read) * gain)
    return (np.round(out * 255) / 255).astype(np.float32)


def tone_curve(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    out = np.empty_like(img)
    for c in range(3):
        if rng.random() < 0.5:
            k = rng.uniform(4, 12)  # S-curve (logistic), centre shifted per channel
            m = rng.uniform(0.35, 0.65)
            lo, hi = 1 / (1 + np.exp(k * m)), 1 / (1 + np.exp(-k * (1 - m)))
            out[..., c] = (1 / (1 + np.exp(-k * (img[..., c] - m))) - lo) / (hi - lo)
        else:
            a = rng.uniform(5, 60)  # logarithmic (lifts shadows strongly)
            out[..., c] = np.log1p(a * img[..., c]) / np.log1p(a)
    return np.clip(out, 0, 1).astype(np.float32)


def _blackbody_rgb(kelvin: float) -> np.ndarray:
    """Approximate linear-sRGB white of a black body (Tanner Helland's fit), max-normalised."""
    t = kelvin / 100
    r = 255.0 if t <= 66 else 329.698727446 * (t - 60) ** -0.1332047592
    g = 99.4708025861 * np.log(t) - 161.1195681661 if t <= 66 else 288.1221695283 * (t - 60) ** -0.0755148492
    b = 255.0 if t >= 66 else (0.0 if t <= 19 else 138.5177312231 * np.log(t - 10) - 305.0447927307)
    rgb = _srgb_to_linear(np.clip(np.array([r, g, b]) / 255, 1e-3, 1))
    return rgb / rgb.max()


def colour_temperature(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    kelvin = np.exp(rng.uniform(np.log(2000), np.log(12000)))
    lin = _srgb_to_linear(img.astype(np.float64)) * _blackbody_rgb(kelvin)
    return _linear_to_srgb(lin * rng.uniform(0.8, 1.3)).astype(np.float32)


def cast_shadow(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(1, 4)):
        n = rng.integers(3, 7)
        centre = rng.uniform([0, 0], [w, h])
        radius = rng.uniform(0.2, 0.6) * max(h, w)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = centre + np.stack([np.cos(ang), np.sin(ang)], 1) * radius * rng.uniform(0.5, 1.0, (n, 1))
        cv2.fillPoly(mask, [pts.astype(np.int32)], 1.0)
    mask = cv2.GaussianBlur(mask, (0, 0), rng.uniform(2, 12))
    dark = rng.uniform(0.2, 0.6)
    shade = 1 - (1 - dark) * mask[..., None]
    tint = np.array([0.9, 0.95, 1.1])  # shadows are lit by the blue sky
    lin = _srgb_to_linear(img.astype(np.float64)) * (shade * (1 + (tint - 1) * mask[..., None]))
    return _linear_to_srgb(lin).astype(np.float32)


FAMILIES = {"sensor_night": sensor_night, "tone_curve": tone_curve,
            "colour_temperature": colour_temperature, "cast_shadow": cast_shadow}


def apply_family(name: str):
    """An `appearance_fn(rng, img) -> (img, name)` for `PairDataset.sample` from a family name."""
    if name not in FAMILIES:
        raise KeyError(f"Unknown held-out family '{name}'; choose from {sorted(FAMILIES)}.")
    fn = FAMILIES[name]
    return lambda rng, img: (fn(rng, img), name)
