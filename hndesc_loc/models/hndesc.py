"""HNDesc as extractors: `HNDesc` (detector keypoints + HNDesc descriptors), `HNDescJoint`
(HNDesc's own detection head + descriptors, one forward pass) and `HNDescGlobal` (global
retrieval descriptor)."""
import math

import torch
import torch.nn.functional as F

from .. import registry
from ..utils.base_model import BaseModel
from .detection import detect_keypoints
from .matchability import select_matchable
from .network import load_network


class HNDesc(BaseModel):
    default_conf = {
        "backbone": "effnet_std",           # 'effnet_std', 'effnet' or 'lite' (shipped weights), 'caps' (paper's ResUNet)
        "weights": "default",               # 'default': shipped weights of the backbone, else a path
        "detector": {"name": "sift"},       # detector name + its own conf (see hndesc_loc.detectors)
        "descriptor": "fine",               # caps only: 'fine' (HNDesc) or 'coarse_fine' (CAPS release, 256-d)
        # Describe each keypoint on the image pyramid level (steps of sqrt(2)) where its detector
        # scale comes closest to `reference_size` px: descriptors then see the same apparent scale
        # in both images of a pair whatever the zoom between them. Needs a detector that reports
        # scales (sift). None: off, everything described at full resolution.
        "scale_adaptive": None,             # or {"reference_size": 8.0, "num_levels": 5}
        # Domain-size pooling (as DSP-SIFT, Dong & Soatto, CVPR 2015): describe every keypoint on
        # the image resized by each factor and average the unit descriptors (then normalise): the
        # descriptor then covers a range of apparent scales, so a zoom between the two images
        # of a pair moves it less. [1.0]: the network once, at full resolution. Exclusive with
        # scale_adaptive (which picks one level per keypoint instead).
        "scale_pooling": [1.0],
        # Tone pooling, the photometric counterpart of scale_pooling: every keypoint is also
        # described on copies of the image under the tone curves x -> x^gamma (x in [0, 1]) and
        # the unit descriptors (each pooled over scale_pooling) are averaged, then normalised.
        # A gamma below 1 lifts the darks, where a night photo keeps its structure and the
        # network's per-image standardisation leaves it faint. Must hold 1.0 (the untouched
        # image, which the matchability head scores). [1.0]: off.
        "tone_pooling": [1.0],
        # Rotation pooling: views of the image rotated about its centre by each of `angles`
        # (degrees; reflected borders), each resized by each of `scales`, join the upright
        # views of scale_pooling; every view group (the upright one, one per angle) gives a
        # unit descriptor, and they are averaged, then normalised. Small angles make the
        # upright descriptor tolerate the in-plane tilt that perspective gives a wide-baseline
        # pair. The matchability head scores the upright views. None: off.
        "rotation_pooling": None,           # or {"angles": [-10.0, 10.0], "scales": [0.7071]}
        # Keypoint selection by learned matchability (Hartmann et al., CVPR 2014; the weights'
        # matchability head, `hndesc_loc.train.matchability`): the detector proposes this many
        # keypoints and the detector.max_keypoints most matchable are kept (scores: their
        # matchability probability). None: the detector's strongest, as detected.
        "matchability_candidates": None,
        # Coarse-fine descriptor (CAPS concatenates its coarse and fine descriptors the same way):
        # the unit coarse encoder feature at the keypoint (stride 32 for effnet: context of tens
        # of pixels), pooled over scale_pooling like the fine part, is appended with this weight
        # w and the whole normalised, so two descriptors' similarity is (fine.fine' +
        # w^2 ctx.ctx') / (1 + w^2): look-alike corners in unlike surroundings (a step of
        # another flight, a branch against the sky) score lower. Output D + C dims (128 + 192
        # for effnet_std), or D + K when the weights carry a context basis of K axes
        # (`hndesc_loc.train.context_basis`). None: off, the D-dim fine descriptor alone.
        "context_weight": None,
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        if conf["weights"] is None:
            raise ValueError(f"model.weights is required for backbone '{conf['backbone']}' in this conf: pass the "
                             "release checkpoint, e.g. model.weights=/path/to/hndesc_caps_MP_st.pth.")
        self.net = load_network(conf["weights"], conf["backbone"]).fuse_for_inference()
        if conf["descriptor"] != "fine":
            if conf["backbone"] != "caps":
                raise ValueError(f"model.descriptor='{conf['descriptor']}' needs the caps backbone.")
            self.net.backbone.descriptor = conf["descriptor"]
        sa = conf["scale_adaptive"]
        if sa is not None:
            unknown = set(sa) - {"reference_size", "num_levels"}
            if unknown or not {"reference_size", "num_levels"} <= set(sa):
                raise ValueError(f"model.scale_adaptive needs exactly reference_size and num_levels, got {sorted(sa)}.")
        check_scale_pooling(conf["scale_pooling"])
        check_tone_pooling(conf["tone_pooling"])
        check_rotation_pooling(conf["rotation_pooling"])
        if sa is not None and (list(conf["tone_pooling"]) != [1.0] or conf["rotation_pooling"] is not None):
            raise ValueError("model.tone_pooling and model.rotation_pooling pool views that model.scale_adaptive does "
                             "not describe: set tone_pooling=[1.0] and rotation_pooling=null, or scale_adaptive=null.")
        if sa is not None and list(conf["scale_pooling"]) != [1.0]:
            raise ValueError("model.scale_pooling and model.scale_adaptive are exclusive: set one of them "
                             "(scale_pooling=[1.0] or scale_adaptive=null).")
        check_context_weight(conf["context_weight"])
        if sa is not None and conf["context_weight"] is not None:
            raise ValueError("model.context_weight and model.scale_adaptive are exclusive: set one of them "
                             "(context_weight=null or scale_adaptive=null).")
        det = dict(conf["detector"])
        detector_cls = registry.get("detector", det.pop("name"))
        self.keep = None  # keypoints kept by the matchability selection (None: off)
        candidates = conf["matchability_candidates"]
        if candidates is not None:
            if sa is not None:
                raise ValueError("model.matchability_candidates and model.scale_adaptive are exclusive: the head "
                                 "scores scale-pooled descriptors (set scale_adaptive=null).")
            self.keep = det.get("max_keypoints", detector_cls.default_conf.get("max_keypoints", -1))
            check_matchability(self.net, candidates, self.keep, conf["scale_pooling"])
            det["max_keypoints"] = candidates
        self.detector = detector_cls(det)

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        pred = self.detector({"image": image})
        kpts = pred["keypoints"].to(image.device)
        sa = self.conf["scale_adaptive"]
        if self.keep is not None:
            return self.keep_most_matchable(image, kpts)
        if sa is None:
            desc = self.describe(image, kpts)
        else:
            if "scales" not in pred:
                raise ValueError(f"model.scale_adaptive needs keypoint scales, which detector "
                                 f"'{self.conf['detector']['name']}' does not report: use sift or scale_adaptive=null.")
            desc = describe_scale_adaptive(self.net, image, kpts, pred["scales"].to(image.device),
                                           sa["reference_size"], sa["num_levels"])
        return {"keypoints": pred["keypoints"], "scores": pred["scores"], "descriptors": desc}

    def describe(self, image: torch.Tensor, kpts: torch.Tensor, feats: dict | None = None) -> torch.Tensor:
        """Descriptors [B,D',N] of keypoints kpts [B,N,2] (pixels of image [B,C,H,W]) as this conf
        describes them (`describe_keypoints`). feats: net(image) when the caller has it."""
        return describe_keypoints(self.net, image, kpts, self.conf, feats)[0]

    def keep_most_matchable(self, image: torch.Tensor, kpts: torch.Tensor) -> dict:
        """The `keep` most matchable of the candidate keypoints kpts [B,N,2] of image [B,C,H,W] ->
        {'keypoints' [B,K,2], 'scores' [B,K] (matchability probability), 'descriptors' [B,D',K]},
        K = min(keep, N) (the detector pads nothing: extraction runs one image per batch)."""
        feats = self.net(image)
        desc, fine = describe_keypoints(self.net, image, kpts, self.conf, feats)
        logits = self.net.matchability_logits(feats, fine, kpts)
        out = {"keypoints": [], "scores": [], "descriptors": []}
        for b in range(len(image)):
            idx = select_matchable(logits[b], self.keep)
            out["keypoints"].append(kpts[b, idx])
            out["scores"].append(torch.sigmoid(logits[b, idx]))
            out["descriptors"].append(desc[b][:, idx])
        return {k: torch.stack(v) for k, v in out.items()}


def check_matchability(net, candidates, keep: int, scale_pooling) -> None:
    """model.matchability_candidates must be an int >= the detector's max_keypoints (or -1: all),
    and the weights must carry a matchability head trained on descriptors pooled as `scale_pooling`."""
    if not isinstance(candidates, int) or isinstance(candidates, bool) or (candidates < 1 and candidates != -1):
        raise ValueError(f"model.matchability_candidates must be a positive number of keypoints, -1 (all) or null, "
                         f"got {candidates!r}.")
    if keep < 1:
        raise ValueError("model.matchability_candidates needs a finite detector.max_keypoints: the number of "
                         "keypoints kept.")
    if candidates != -1 and candidates < keep:
        raise ValueError(f"model.matchability_candidates={candidates} is below detector.max_keypoints={keep}: "
                         "propose at least as many keypoints as are kept.")
    if not bool(net.matchability.active):
        raise ValueError("model.matchability_candidates is set but these weights carry no matchability head: "
                         "learn one with `python -m hndesc_loc.train.matchability` or set it to null.")
    trained = net.matchability.scale_pooling
    if [round(float(f), 6) for f in scale_pooling] != trained:
        raise ValueError(f"the weights' matchability head was trained on descriptors pooled over {trained}, not "
                         f"model.scale_pooling={list(scale_pooling)}: set one of them to match, or "
                         "matchability_candidates=null.")


@torch.no_grad()
def describe_keypoints(net, image: torch.Tensor, kpts: torch.Tensor, conf: dict,
                       feats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Keypoints kpts [B,N,2] (pixels of image [B,C,H,W], values in [0, 1]) described as an
    extractor conf says (its `scale_pooling`, `tone_pooling`, `rotation_pooling` and
    `context_weight`) -> (descriptors [B,D',N], fine part [B,D,N] of the untouched upright image,
    the matchability head's input): D' = D + C with the coarse context appended, else D. One unit
    descriptor per tone and view group (upright over scale_pooling, then each rotation angle over
    its scales), averaged and normalised. feats: net(image) when the caller has it (not recomputed)."""
    gammas, rot = conf.get("tone_pooling", [1.0]), conf.get("rotation_pooling")
    views = [(0.0, conf["scale_pooling"])] + ([(a, rot["scales"]) for a in rot["angles"]] if rot else [])
    total, untouched = None, None
    for gamma in gammas:
        toned = tone_curve(image, gamma)
        for angle, scales in views:
            turned, points = rotate(toned, kpts, angle)
            desc, fine = describe_view(net, turned, points, conf, scales, feats if turned is image else None)
            total = desc if total is None else total + desc
            if turned is image:
                untouched = fine
    return (total if len(gammas) * len(views) == 1 else F.normalize(total, dim=1)), untouched


def describe_view(net, image: torch.Tensor, kpts: torch.Tensor, conf: dict, scales,
                  feats: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One view group of `describe_keypoints`: keypoints kpts [B,N,2] of image [B,C,H,W] pooled over
    the resize factors `scales`, the conf's context appended -> (unit descriptors [B,D',N], fine
    part [B,D,N]; the same tensor without context)."""
    w = conf.get("context_weight")
    if w is None:
        fine = describe_scale_pooled(net, image, kpts, scales, feats=feats)
        return fine, fine
    fine, context = describe_scale_pooled(net, image, kpts, scales, feats=feats, context=True)
    return append_context(fine, net.context_basis(context), w), fine


def tone_curve(image: torch.Tensor, gamma: float) -> torch.Tensor:
    """image [B,C,H,W] in [0, 1] -> image^gamma (the same tensor for gamma 1)."""
    return image if gamma == 1 else image.clamp(0, 1) ** gamma


def rotate(image: torch.Tensor, kpts: torch.Tensor, degrees: float) -> tuple[torch.Tensor, torch.Tensor]:
    """image [B,C,H,W] rotated about its centre by `degrees` (clockwise as displayed, y pointing
    down: +x turns towards +y; bilinear, reflected borders, same size) and keypoints [B,N,2]
    (pixels) moved with it. The same tensors for 0 degrees."""
    if degrees == 0:
        return image, kpts
    h, w = image.shape[-2:]
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    # affine_grid maps output to input in normalised coordinates, where a pixel step differs per axis.
    theta = image.new_tensor([[c, s * h / w, 0.0], [-s * w / h, c, 0.0]]).expand(len(image), 2, 3)
    grid = F.affine_grid(theta, list(image.shape), align_corners=False)
    turned = F.grid_sample(image, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    centre = kpts.new_tensor([(w - 1) / 2, (h - 1) / 2])
    rotation = kpts.new_tensor([[c, s], [-s, c]])     # row vectors: p' = p R (= R^T p as columns)
    return turned, (kpts - centre) @ rotation + centre


def check_rotation_pooling(rot) -> None:
    if rot is None:
        return
    angles = rot.get("angles") if isinstance(rot, dict) else None
    if (not isinstance(rot, dict) or set(rot) != {"angles", "scales"}
            or not is_number_list(angles, lambda a: 0 < abs(a) < 90) or len(set(map(float, angles))) != len(angles)):
        raise ValueError("model.rotation_pooling must be null or {angles: [...], scales: [...]} with distinct "
                         f"non-zero angles in degrees (|a| < 90), e.g. {{angles: [-10, 10], scales: [0.7071]}}; got {rot!r}.")
    check_scale_pooling(rot["scales"], "model.rotation_pooling.scales")


def check_tone_pooling(gammas) -> None:
    if not is_number_list(gammas) or 1.0 not in gammas or len(set(map(float, gammas))) != len(gammas):
        raise ValueError(f"model.tone_pooling must be a list of distinct positive gammas holding 1.0 "
                         f"(e.g. [1.0, 0.5]; [1.0]: off), got {gammas!r}.")


def check_context_weight(weight) -> None:
    if weight is not None and (not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0):
        raise ValueError(f"model.context_weight must be a positive number (e.g. 1.0) or null, got {weight!r}.")


def append_context(desc: torch.Tensor, context: torch.Tensor, weight: float) -> torch.Tensor:
    """Unit descriptors [B,D,N] and context features [B,C,N] (unit, or their coordinates on the
    weights' context basis) -> unit coarse-fine descriptors [B,D+C,N]: normalize([desc, weight * context])."""
    return F.normalize(torch.cat([desc, weight * context.to(desc.dtype)], 1), dim=1)


def is_number_list(values, valid=lambda v: v > 0) -> bool:
    """Whether values is a non-empty list of numbers (not booleans), each of which `valid` accepts."""
    return (isinstance(values, (list, tuple)) and bool(values)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and valid(v) for v in values))


def check_scale_pooling(factors, what: str = "model.scale_pooling") -> None:
    if not is_number_list(factors):
        raise ValueError(f"{what} must be a non-empty list of positive scale factors "
                         f"(e.g. [1.0, 0.5]), got {factors!r}.")


MIN_LEVEL_SIDE = 32  # px: coarser pyramid levels than this carry no usable features


def rescale(image: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """image [B,C,H,W] resized by `factor` (antialiased bilinear; the same tensor when the size
    does not change) and the per-axis ratio [2] (x, y) that moves pixel-centre keypoints onto it:
    (k + 0.5) * ratio - 0.5."""
    h, w = image.shape[-2:]
    size = (max(round(h * factor), 1), max(round(w * factor), 1))
    scaled = image if size == (h, w) else F.interpolate(image, size=size, mode="bilinear", align_corners=False,
                                                          antialias=True)
    return scaled, image.new_tensor([size[1] / w, size[0] / h])


def describe_scale_pooled(net, image: torch.Tensor, keypoints: torch.Tensor, factors,
                          feats: dict | None = None, context: bool = False):
    """Descriptors [B,D,N] of keypoints [B,N,2] (pixels of image [B,C,H,W]): the mean of the unit
    descriptors taken on the image resized by each of `factors` (antialiased bilinear; keypoints
    moved with the pixel-centre convention), normalised. factors [1.0]: `net.describe` at full
    resolution, unchanged. `feats`: net(image) when the caller already has it (not recomputed).
    context: also the unit coarse features at the keypoints [B,C,N] (`net.context`), pooled over
    the same factors; returns (descriptors, context)."""
    total, ctx = None, None
    for f in factors:
        scaled, ratio = rescale(image, f)
        level = feats if scaled is image and feats is not None else net(scaled)
        points = (keypoints + 0.5) * ratio - 0.5
        d = net.describe(level, points)
        total = d if total is None else total + d
        if context:
            c = net.context(level, points)
            ctx = c if ctx is None else ctx + c
    desc = total if len(factors) == 1 else F.normalize(total, dim=1)
    if not context:
        return desc
    return desc, (ctx if len(factors) == 1 else F.normalize(ctx, dim=1))


def describe_scale_adaptive(net, image: torch.Tensor, keypoints: torch.Tensor, sizes: torch.Tensor,
                            reference_size: float, num_levels: int) -> torch.Tensor:
    """Descriptors [B,D,N] of keypoints [B,N,2] (pixels) with detector sizes [B,N] (pixels),
    each taken on the level l of a sqrt(2)-step pyramid of image [B,C,H,W] that brings its size
    nearest to reference_size (l = round(2 log2(size / reference_size)), clipped to the levels)."""
    if keypoints.shape[1] == 0:
        return net.describe(net(image), keypoints)
    h, w = image.shape[-2:]
    usable = int(2 * math.log2(max(min(h, w) / MIN_LEVEL_SIDE, 1.0))) + 1
    levels = (2 * torch.log2(sizes.clamp(min=1e-3) / reference_size)).round()
    levels = levels.clamp(0, max(min(num_levels, usable) - 1, 0)).long()
    desc = None
    for level in levels.unique().tolist():
        scaled, ratio = rescale(image, 2 ** (-level / 2))
        feats = net(scaled)
        for b in range(len(image)):  # only this level's keypoints pay for the descriptor head
            idx = torch.nonzero(levels[b] == level)[:, 0]
            if not len(idx):
                continue
            d = net.describe({k: v[b:b + 1] if torch.is_tensor(v) else v for k, v in feats.items()},
                             (keypoints[b:b + 1, idx] + 0.5) * ratio - 0.5)[0]
            if desc is None:
                desc = d.new_zeros(len(image), d.shape[0], keypoints.shape[1])
            desc[b, :, idx] = d
    return desc


def head_keypoints(net, feats: dict, image_size: tuple[int, int], conf: dict) -> tuple[list, list]:
    """Keypoints of the detection head: maxima of repeatability x reliability, with the
    nms_radius / detection_threshold / max_keypoints / remove_borders / refine_temperature of
    `conf` (HNDescJoint's). Per image: keypoints [N,2] and scores [N]."""
    maps = net.detection_maps(feats, image_size)
    return detect_keypoints(maps["repeatability"] * maps["reliability"], conf["nms_radius"],
                            conf["detection_threshold"], conf["max_keypoints"], conf["remove_borders"],
                            conf["refine_temperature"])


class HNDescJoint(BaseModel):
    """Detect and describe in one forward pass: keypoints are the local maxima of
    repeatability x reliability from the detection head. Also usable as the detector
    'hndesc' of other models (it then returns its descriptors too, like DISK)."""

    default_conf = {
        "backbone": "lite",
        "weights": "default",          # 'default': shipped joint weights (descriptor + detection head)
        "max_keypoints": 4096,         # strongest N after NMS (-1: all)
        "nms_radius": 1,               # NMS window 2r+1, also the soft-argmax window (r=2: MMA@3 -6 pts)
        "detection_threshold": 0.01,   # on repeatability x reliability (both in [0,1])
        "remove_borders": 4,           # px; the maps are unreliable where convolutions see padding
        "refine_temperature": 0.2,     # soft-argmax temperature on scores (None: integer pixels, MMA@1 -6 pts)
        "scale_pooling": [1.0],        # as HNDesc's: descriptors averaged over these image scales (detection at 1.0)
        "context_weight": None,        # as HNDesc's: coarse context appended with this weight (None: off)
    }
    required_inputs = ["image"]
    detection_noise = 1.0

    def _init(self, conf):
        check_scale_pooling(conf["scale_pooling"])
        check_context_weight(conf["context_weight"])
        self.net = load_network(conf["weights"], conf["backbone"], detector=True).fuse_for_inference()

    def describe(self, image: torch.Tensor, kpts: torch.Tensor, feats: dict | None = None) -> torch.Tensor:
        """As `HNDesc.describe`."""
        return describe_keypoints(self.net, image, kpts, self.conf, feats)[0]

    @torch.no_grad()
    def _forward(self, data):
        image = data["image"]
        feats = self.net(image)
        kpts, scores = head_keypoints(self.net, feats, image.shape[-2:], self.conf)
        n = min(len(k) for k in kpts)  # batches are of one image in practice
        kpts = torch.stack([k[:n] for k in kpts])
        return {"keypoints": kpts, "scores": torch.stack([s[:n] for s in scores]),
                "descriptors": self.describe(image, kpts, feats)}


class HNDescGlobal(BaseModel):
    default_conf = {"backbone": "lite", "weights": "default"}
    required_inputs = ["image"]

    def _init(self, conf):
        self.net = load_network(conf["weights"], conf["backbone"]).fuse_for_inference()

    @torch.no_grad()
    def _forward(self, data):
        return {"global_descriptor": self.net.global_descriptor(self.net(data["image"]))}
