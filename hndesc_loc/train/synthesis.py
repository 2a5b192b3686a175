"""Pair synthesis for self-supervised training: random homographies, colour
augmentation and photorealistic illumination change (stylized copies when given,
otherwise Reinhard colour transfer and a day-to-night rendering made on the fly).

All functions are pure: images are float32 RGB [H,W,3] in [0,1], randomness comes
from the `rng` (numpy Generator) they are given.
"""
from __future__ import annotations

import cv2
import numpy as np

default_homography_conf = {
    "perspective": 0.15,      # max corner displacement from perspective, as a fraction of the crop size
    "rotation": 25.0,         # max in-plane rotation (degrees)
    "scale": [0.7, 1.4],      # scale range
    "translation": 0.1,       # max translation, fraction of the crop size
}
default_photometric_conf = {
    "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05,
    "gamma": [0.7, 1.5], "blur_prob": 0.3, "blur_sigma": [0.5, 1.5], "noise_std": 0.02,
    "vignette": 0.0,          # max darkening at the corners (0: off)
    "jpeg_prob": 0.0,         # share of views re-encoded as JPEG (quality 30-90)
}


def random_homography(rng: np.random.Generator, size: int, conf: dict, max_tries: int = 100) -> np.ndarray:
    """3x3 homography mapping crop pixels to second-view pixels, both of side `size`.
    Built from the crop's corners so that every bound is in pixels of the crop. Draws whose
    corners do not stay in front of the camera (w <= 0.1 at a corner: the plane folds over
    or goes to infinity inside the crop) are drawn again, and so are draws whose inverse does
    the same inside the second view (its pixels would come from beyond the horizon: OpenCV's
    warp then returns values of millions)."""
    s = float(size)
    c = np.array([[0, 0], [s - 1, 0], [s - 1, s - 1], [0, s - 1]], np.float64)
    center = c.mean(0)
    for _ in range(max_tries):
        pts = c - center
        scale = np.exp(rng.uniform(np.log(conf["scale"][0]), np.log(conf["scale"][1])))
        ang = np.deg2rad(rng.uniform(-conf["rotation"], conf["rotation"]))
        rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
        pts = pts @ rot.T * scale
        pts += rng.uniform(-conf["perspective"], conf["perspective"], (4, 2)) * s
        pts += center + rng.uniform(-conf["translation"], conf["translation"], 2) * s
        H = cv2.getPerspectiveTransform(c.astype(np.float32), pts.astype(np.float32)).astype(np.float64)
        H = H / H[2, 2]
        w = np.concatenate([c, np.ones((4, 1))], 1) @ H[2]
        if np.all(w > 0.1) and _inverse_in_front(H, c):
            return H
    raise RuntimeError(f"no valid homography in {max_tries} draws: homography conf {conf} is too extreme")


def _inverse_in_front(H: np.ndarray, corners: np.ndarray) -> bool:
    """w of H^-1 at the second view's corners, relative to its value at the view's centre, > 0.02
    (at most 50x the centre's magnification)."""
    Hinv = np.linalg.inv(H)
    hom = np.concatenate([corners, np.ones((4, 1))], 1)
    w = hom @ Hinv[2]
    w_centre = np.append(corners.mean(0), 1.0) @ Hinv[2]
    return bool(np.all(w / w_centre > 0.02))


def warp_points(H: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply homography H [3,3] to points [N,2]."""
    p = np.concatenate([pts, np.ones((len(pts), 1))], 1) @ H.T
    return p[:, :2] / p[:, 2:3]


def photometric(rng: np.random.Generator, img: np.ndarray, conf: dict) -> np.ndarray:
    """Brightness, contrast, saturation, hue, gamma, blur and noise (a colour jitter)."""
    img = img * (1 + rng.uniform(-conf["brightness"], conf["brightness"]))
    mean = img.mean()
    img = (img - mean) * (1 + rng.uniform(-conf["contrast"], conf["contrast"])) + mean
    gray = img.mean(-1, keepdims=True)
    img = (img - gray) * (1 + rng.uniform(-conf["saturation"], conf["saturation"])) + gray
    img = np.clip(img, 0, 1).astype(np.float32)
    if conf["hue"] > 0:
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0] + 360 * rng.uniform(-conf["hue"], conf["hue"])) % 360
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    img = np.clip(img, 0, 1) ** rng.uniform(*conf["gamma"])
    if rng.random() < conf["blur_prob"]:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(*conf["blur_sigma"]))
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * np.float32(conf["noise_std"] * rng.random())
    if conf["vignette"] > 0:
        h, w = img.shape[:2]
        yy, xx = np.ogrid[0:h, 0:w]
        r2 = ((xx - rng.uniform(0, w)) ** 2 + (yy - rng.uniform(0, h)) ** 2).astype(np.float32) / (h * h + w * w)
        img = img * (1 - rng.uniform(0, conf["vignette"]) * np.clip(2 * r2, 0, 1))[..., None]
    img = np.clip(img, 0, 1).astype(np.float32)
    if rng.random() < conf["jpeg_prob"]:
        img = jpeg_roundtrip(img, int(rng.integers(30, 91)))
    return img


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """`img` float [H,W,3] in [0,1] coded as 8-bit JPEG at `quality` and decoded -> float32."""
    ok, buf = cv2.imencode(".jpg", (np.clip(img, 0, 1) * 255).round().astype(np.uint8),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).astype(np.float32) / 255


def color_transfer(img: np.ndarray, style: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Reinhard et al. colour transfer: match per-channel Lab mean/std of `img` to `style`."""
    src = cv2.cvtColor(img.astype(np.float32), cv2.COLOR_RGB2Lab)
    ref = cv2.cvtColor(style.astype(np.float32), cv2.COLOR_RGB2Lab)
    ms, ss = src.reshape(-1, 3).mean(0), src.reshape(-1, 3).std(0) + 1e-6
    mr, sr = ref.reshape(-1, 3).mean(0), ref.reshape(-1, 3).std(0) + 1e-6
    out = (src - ms) / ss * sr + mr
    out = cv2.cvtColor(out.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(strength * out + (1 - strength) * img, 0, 1).astype(np.float32)


def histogram_transfer(img: np.ndarray, style: np.ndarray, bins: int = 256) -> np.ndarray:
    """Per-channel histogram matching of `img` to `style` (CDF to CDF, on `bins` levels): the
    statistics of another photo."""
    out = np.empty_like(img)
    levels = (np.arange(bins) + 0.5) / bins
    for c in range(3):
        q = np.clip((img[..., c] * bins).astype(np.int32), 0, bins - 1)
        cdf_src = np.cumsum(np.bincount(q.ravel(), minlength=bins)) / q.size
        hist_ref = np.bincount(np.clip((style[..., c] * bins).astype(np.int32), 0, bins - 1).ravel(), minlength=bins)
        cdf_ref = np.cumsum(hist_ref) / hist_ref.sum()
        lut = np.interp(cdf_src, cdf_ref, levels).astype(np.float32)
        out[..., c] = lut[q]
    return out


def render_night(rng: np.random.Generator, img: np.ndarray, strength: float = 1.0) -> np.ndarray:
    """Day-to-night rendering: exposure and gamma drop, a colour cast (sodium or
    cold light), local light glows, blur, and sensor noise quantised to 8 bits."""
    h, w = img.shape[:2]
    exposure = np.exp(rng.uniform(np.log(0.06), np.log(0.35)) * strength)
    out = np.clip(img, 0, 1) ** rng.uniform(1.2, 2.0) * exposure
    cast = np.array([1.0, 0.8, 0.5]) if rng.random() < 0.6 else np.array([0.7, 0.8, 1.0])
    cast = 1 + (cast * rng.uniform(0.8, 1.2, 3) - 1) * strength
    out = out * cast
    # Street-light glows: additive, warm, falling off with distance.
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sigma = rng.uniform(0.05, 0.25) * max(h, w)
        glow = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))
        color = np.array([1.0, rng.uniform(0.6, 0.9), rng.uniform(0.2, 0.5)])
        out = out + (rng.uniform(0.1, 0.4) * strength) * glow[..., None] * color * (0.3 + img)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.5, 1.2))
    shot = np.sqrt(np.clip(out, 0, 1)) * rng.uniform(0.0, 0.04)
    out = out + rng.normal(0, 1, out.shape) * (shot + rng.uniform(0.002, 0.01))
    out = np.round(np.clip(out, 0, 1) * 255) / 255  # 8-bit quantisation destroys dark detail
    return out.astype(np.float32)


def lift_night(rng: np.random.Generator, dark: np.ndarray) -> np.ndarray:
    """What a camera's auto-exposure makes of a dark frame: `dark` [H,W,3] (an 8-bit night
    rendering, e.g. `render_night`) scaled up to a bright percentile, a tone curve that lifts the
    shadows, an optional in-camera denoising blur and JPEG coding. The noise and the quantisation
    banding of the dark frame are amplified with the signal, as in real night photos."""
    gain = np.clip(rng.uniform(0.8, 1.0) / max(float(np.percentile(dark, 99.5)), 1e-3), 1.0, 25.0)
    out = np.clip(dark * gain, 0, 1) ** (1 / rng.uniform(1.2, 2.2))
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(out.astype(np.float32), (0, 0), rng.uniform(0.4, 1.0))
    return jpeg_roundtrip(out, int(rng.integers(40, 91)))


def bright_smooth_regions(lum: np.ndarray, percentile: float) -> np.ndarray:
    """Soft mask [H,W] in [0,1] of the bright, untextured regions of luminance `lum` [H,W] (the sky
    of a day photo): an edge-preserving blur above its `percentile`-th value, with low local
    texture, grown back up to the outline over pixels as bright (the texture window blurs across
    the outline; without it a halo a window wide would keep the day's contrast)."""
    h, w = lum.shape
    smooth = cv2.bilateralFilter(lum, 9, 0.1, 0.02 * max(h, w))
    level = min(float(np.percentile(smooth, percentile)), float(smooth.max()) - 0.1)
    mean = cv2.GaussianBlur(lum, (0, 0), 3)
    texture = np.sqrt(np.maximum(cv2.GaussianBlur(lum * lum, (0, 0), 3) - mean * mean, 0))
    core = (1 / (1 + np.exp(-(smooth - level) / 0.03)) / (1 + np.exp((texture - 0.04) / 0.01))).astype(np.float32)
    bright = 1 / (1 + np.exp(-(cv2.GaussianBlur(lum, (0, 0), 0.7) - level) / 0.03))
    grown = cv2.dilate(core, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (15, 15))) * bright
    return cv2.GaussianBlur(np.maximum(core, grown).astype(np.float32), (0, 0), 0.7)


def relight_night(rng: np.random.Generator, img: np.ndarray, dark_sky_prob: float = 0.0) -> np.ndarray:
    """Night by relighting (a third night model): the day's illumination is divided out and
    floodlights put in its place, so that which regions are bright changes, not only how bright
    the whole image is (a lit facade against a dark sky where the day had a bright sky).

    Illumination is taken as the blurred luminance (retinex), reflectance = image / illumination;
    the new light is a dim ambient level plus a few broad spots with sodium or white colour;
    then a camera exposes the result to a random bright percentile, with gamma, noise, JPEG.
    With probability `dark_sky_prob` the day's brightest smooth regions (sky: the top of an
    edge-preserving blur of the luminance) get no light at all, so that the contrast across their
    outlines flips sign (bright sky over a roof by day, dark sky over a lit roof at night).
    img [H,W,3] float32 in [0,1] -> [H,W,3] float32 in [0,1]."""
    h, w = img.shape[:2]
    lum = img.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    illum = cv2.GaussianBlur(lum, (0, 0), rng.uniform(0.03, 0.12) * max(h, w)) + 0.05
    reflect = np.clip(img / illum[..., None], 0, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    light = np.full((h, w, 3), rng.uniform(0.01, 0.08), np.float32) * np.array([0.6, 0.7, 1.0], np.float32)
    for _ in range(rng.integers(1, 5)):
        cx, cy = rng.uniform(0, w), rng.uniform(0.3 * h, 1.2 * h)  # lamps sit low, light goes up
        sx, sy = rng.uniform(0.1, 0.5) * w, rng.uniform(0.1, 0.5) * h
        spot = np.exp(-0.5 * (((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))
        colour = np.array([1.0, 0.75, 0.4]) if rng.random() < 0.6 else np.array([1.0, 0.95, 0.9])
        light = light + (rng.uniform(0.3, 1.0) * spot)[..., None] * colour.astype(np.float32)
    if dark_sky_prob > 0 and rng.random() < dark_sky_prob:
        sky = bright_smooth_regions(lum, rng.uniform(60, 90))
        light = light * (1 - rng.uniform(0.85, 1.0) * sky)[..., None]
    out = reflect * light
    out = out / max(float(np.percentile(out, rng.uniform(97.0, 99.9))), 1e-3)
    out = np.clip(out, 0, 1) ** rng.uniform(0.8, 1.4)
    out = out + rng.normal(0, 1, out.shape).astype(np.float32) * rng.uniform(0.005, 0.03)
    if rng.random() < 0.5:
        out = cv2.GaussianBlur(np.clip(out, 0, 1).astype(np.float32), (0, 0), rng.uniform(0.4, 1.0))
    return jpeg_roundtrip(np.clip(out, 0, 1).astype(np.float32), int(rng.integers(50, 91)))


def make_pair(rng: np.random.Generator, image: np.ndarray, size: int, hconf: dict, pconf: dict,
              stylized: np.ndarray | None = None, style_source: np.ndarray | None = None,
              night_prob: float = 0.35, transfer_prob: float = 0.25, appearance_fn=None,
              lifted_night_share: float = 0.0, relit_night_share: float = 0.0,
              relit_dark_sky_share: float = 0.0) -> dict:
    """One training pair from `image` [H,W,3]: a random crop A, a homographic second view B.

    Returns {'image0', 'image1' (float32 [size,size,3]), 'H' (A->B, 3x3), 'appearance' (str)}.
    The pixels of B come from `stylized` (same geometry as `image`) when given.
    `appearance_fn(rng, image1) -> (image1, name)`, when given, is the only appearance change of B.
    `lifted_night_share`: share of the night views that the camera lifts back up (`lift_night`).
    `relit_night_share`: share of the night views made by `relight_night` instead of `render_night`,
    `relit_dark_sky_share` its `dark_sky_prob`.
    """
    h, w = image.shape[:2]
    if min(h, w) < size:
        s = size / min(h, w) * 1.05
        image = cv2.resize(image, (int(np.ceil(w * s)), int(np.ceil(h * s))), interpolation=cv2.INTER_LINEAR)
        if stylized is not None:
            stylized = cv2.resize(stylized, image.shape[1::-1], interpolation=cv2.INTER_LINEAR)
        h, w = image.shape[:2]
    x0, y0 = rng.integers(0, w - size + 1), rng.integers(0, h - size + 1)
    T = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], np.float64)  # source -> crop A
    H = random_homography(rng, size, hconf)  # crop A -> view B
    image0 = image[y0:y0 + size, x0:x0 + size]
    src1 = stylized if stylized is not None else image
    image1 = cv2.warpPerspective(src1, H @ T, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    appearance = "stylized" if stylized is not None else "colour"
    image0, image1, appearance = change_appearance(
        rng, image0, image1, appearance, pconf, stylized is not None, style_source, night_prob, transfer_prob,
        appearance_fn, lifted_night_share, relit_night_share, relit_dark_sky_share)
    return {"image0": image0, "image1": image1, "H": H, "appearance": appearance}


def change_appearance(rng: np.random.Generator, image0: np.ndarray, image1: np.ndarray, appearance: str,
                      pconf: dict, stylized: bool = False, style_source: np.ndarray | None = None,
                      night_prob: float = 0.35, transfer_prob: float = 0.25, appearance_fn=None,
                      lifted_night_share: float = 0.0, relit_night_share: float = 0.0,
                      relit_dark_sky_share: float = 0.0) -> tuple[np.ndarray, np.ndarray, str]:
    """The appearance changes of a pair [size,size,3] x 2 (see `make_pair`): night, colour or
    histogram transfer, or nothing more on view B (`stylized`: B comes from a stylized copy),
    then mild photometric noise on A and full on B (not after night). Returns float32 views and
    the name of B's change (`appearance` when no other)."""
    r = rng.random()
    if appearance_fn is not None:
        image1, appearance = appearance_fn(rng, image1)
        return image0.astype(np.float32), image1.astype(np.float32), appearance
    if not stylized and r < night_prob:
        if relit_night_share > 0 and rng.random() < relit_night_share:
            image1 = relight_night(rng, image1, relit_dark_sky_share)
        else:
            image1 = render_night(rng, image1)
            if lifted_night_share > 0 and rng.random() < lifted_night_share:
                image1 = lift_night(rng, image1)
        appearance = "night"
    elif not stylized and style_source is not None and r < night_prob + transfer_prob:
        if rng.random() < 0.5:
            image1, appearance = color_transfer(image1, style_source, rng.uniform(0.6, 1.0)), "transfer"
        else:
            image1, appearance = histogram_transfer(image1, style_source), "histogram"
    mild = {**pconf, **{k: pconf[k] * 0.5 for k in ("brightness", "contrast", "saturation", "hue")}}
    image0 = photometric(rng, image0, mild)
    if appearance != "night":
        image1 = photometric(rng, image1, pconf)
    return image0.astype(np.float32), image1.astype(np.float32), appearance
