"""Listwise AP loss with in-pair / in-batch / random negative mining, the expected reward of
mutual matches (DISK's reward, in closed form), a teacher's ranking or similarities of the
candidates (distillation), and the global head's contrastive loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F

MINING_MODES = ("in_pair", "in_batch", "random")


def quantized_ap(scores: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, nq: int = 20) -> torch.Tensor:
    """Differentiable AP (R2D2's quantised formulation) per row.

    scores [N,M] similarities in [-1,1]; labels [N,M] (1 positive); mask [N,M] (entries used).
    Returns AP [N]. Bins go from +1 down to -1: triangular soft assignment to nq centres."""
    centres = torch.linspace(1, -1, nq, device=scores.device, dtype=scores.dtype)
    a = (nq - 1) / 2.0
    q = (1 - a * (scores[:, None, :] - centres[None, :, None]).abs()).clamp(min=0)
    q = torch.where(mask[:, None, :] > 0, q, q.new_zeros(()))  # where, not *: a masked NaN must not spread
    nbs = q.sum(-1)                                    # [N,nq] items per bin
    rec = (q * labels[:, None, :]).sum(-1)             # [N,nq] positives per bin
    prec = rec.cumsum(-1) / (nbs.cumsum(-1) + 1e-16)
    rec = rec / (rec.sum(-1, keepdim=True) + 1e-16)
    return (prec * rec).sum(-1)


def exact_ap_single_positive(pos: torch.Tensor, negs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact AP with one positive: 1 / (1 + #negatives scored above it). pos [N], negs/mask [N,M]."""
    above = ((negs >= pos[:, None]) & mask).sum(-1)
    ap = 1.0 / (1.0 + above.float())
    # Non-finite descriptors rank nothing: AP 0 (comparisons with NaN are False and would read as 1).
    return torch.where(torch.isfinite(pos) & (torch.isfinite(negs) | ~mask).all(-1), ap, ap.new_zeros(()))


def jittered_grid(batch: int, size: int, side: int, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """side x side points per crop of `size` px, one uniformly placed in each cell -> [batch, side², 2] (x, y)."""
    cell = size / side
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="xy"), -1).reshape(-1, 2)
    offset = torch.rand((batch, side * side, 2), generator=generator)
    return ((ij[None] + offset) * cell).clamp(0, size - 1).to(device)


def candidate_lists(d0: torch.Tensor, d1: torch.Tensor, kp1: torch.Tensor, valid: torch.Tensor,
                    image_ids: torch.Tensor, mining: str, num_hard: int, neg_radius: float,
                    generator: torch.Generator | None = None,
                    dense1: torch.Tensor | None = None, dense_kp1: torch.Tensor | None = None):
    """Anchors from view 0, positives and negatives from view 1.

    d0, d1 [B,D,K]; kp1 [B,K,2]; valid [B,K]; image_ids [B] (crops of the same image are never
    negatives of each other, so repeated images cannot create false negatives).
    dense1 [B,D,G] at dense_kp1 [B,G,2]: more points of view 1 (a grid over the whole crop), extra
    negatives of their own pair's anchors beyond neg_radius of the positive: the sparse keypoints
    alone never show an anchor the clutter between them, which mutual matching must reject.
    Returns (pos [N], negs [N,M], neg_mask [N,M]) over the N valid anchors."""
    if mining not in MINING_MODES:
        raise KeyError(f"Unknown mining mode '{mining}'; choose one of {MINING_MODES}.")
    B, D, K = d0.shape
    a = d0.transpose(1, 2).reshape(B * K, D)
    p = d1.transpose(1, 2).reshape(B * K, D)
    sim = a @ p.t()                                                      # [BK,BK]
    pair = torch.arange(B, device=d0.device).repeat_interleave(K)
    vflat = valid.reshape(-1)
    pos = sim.diagonal()
    same_pair = pair[:, None] == pair[None, :]
    far = torch.cdist(kp1.reshape(B * K, 2), kp1.reshape(B * K, 2)) > neg_radius
    in_pair = same_pair & far & vflat[None, :]                            # excludes self (distance 0)
    # In-pair negatives: the K entries of the anchor's own pair, gathered as a [BK,K] block.
    idx_pair = (pair[:, None] * K + torch.arange(K, device=d0.device)[None, :])
    negs = [sim.gather(1, idx_pair)]
    masks = [in_pair.gather(1, idx_pair)]
    if mining != "in_pair":
        other = (image_ids[pair][:, None] != image_ids[pair][None, :]) & vflat[None, :]
        if mining == "in_batch":
            ranked = sim.detach().masked_fill(~other, -4)
        else:
            ranked = torch.rand(sim.shape, generator=generator, device=sim.device).masked_fill(~other, -4)
        top = ranked.topk(min(num_hard, B * K), dim=1).indices
        negs.append(sim.gather(1, top))
        masks.append(other.gather(1, top))
    if dense1 is not None:
        sim_dense = torch.einsum("bdk,bdg->bkg", d0, dense1).reshape(B * K, -1)   # [BK,G]
        far_dense = torch.cdist(kp1, dense_kp1) > neg_radius                     # [B,K,G]
        negs.append(sim_dense)
        masks.append(far_dense.reshape(B * K, -1))
    keep = vflat
    return pos[keep], torch.cat(negs, 1)[keep], torch.cat(masks, 1)[keep]


def descriptor_loss(d0, d1, kp0, kp1, valid, image_ids, conf: dict, dense: tuple | None = None) -> dict:
    """Symmetric AP loss (anchors in each view). dense: (desc0 [B,D,G], kp0 [B,G,2], desc1, kp1),
    grid points of each view used as extra negatives (`candidate_lists`).
    Returns {'loss', 'ap'} (ap: exact, detached, over all negatives used)."""
    losses, aps = [], []
    dense = dense or (None, None, None, None)
    for da, db, kpb, dd, dkp in ((d0, d1, kp1, dense[2], dense[3]), (d1, d0, kp0, dense[0], dense[1])):
        pos, negs, mask = candidate_lists(da, db, kpb, valid, image_ids, conf["mining"],
                                          conf["num_hard_negatives"], conf["neg_radius"],
                                          dense1=dd, dense_kp1=dkp)
        scores = torch.cat([pos[:, None], negs], 1)
        labels = torch.zeros_like(scores)
        labels[:, 0] = 1
        m = torch.cat([torch.ones_like(pos[:, None], dtype=torch.bool), mask], 1).float()
        losses.append((1 - quantized_ap(scores, labels, m, conf["nq"])).mean())
        aps.append(exact_ap_single_positive(pos.detach(), negs.detach(), mask).mean())
    out = {"loss": sum(losses) / 2, "ap": sum(aps) / 2}
    if conf["unmatched_weight"]:
        out["loss"] = out["loss"] + conf["unmatched_weight"] * unmatched_uniformity(
            d0, d1, valid, conf["unmatched_temperature"])
    return out


def unmatched_uniformity(d0: torch.Tensor, d1: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """For view-0 keypoints with no partner in view 1 (valid False: warped outside it): how far the
    softmax of their similarities to view 1's keypoints is from uniform (log n - entropy, >= 0).
    The AP loss never sees these points; leaving them free lets them take a sharp nearest
    neighbour that mutual matching cannot reject. Pushing them towards equal similarity to every
    point of the other view makes them nobody's clear partner.
    d0, d1 [B,D,K]; valid [B,K] -> scalar (0 when no pair has such a point)."""
    sim = torch.einsum("bdk,bdl->bkl", d0, d1) / temperature              # [B,K(anchors),K(view 1)]
    cols = valid[:, None, :]
    logp = torch.log_softmax(sim.masked_fill(~cols, float("-inf")), -1)
    entropy = -(logp.exp() * logp.masked_fill(~cols, 0)).sum(-1)         # [B,K]
    n = valid.sum(-1, keepdim=True).float()                              # [B,1] partners in view 1
    rows = ~valid & (n > 1)
    if not rows.any():
        return sim.new_zeros(())
    return (n.log() - entropy)[rows].mean()


def teacher_ranking_loss(d0: torch.Tensor, d1: torch.Tensor, t0: torch.Tensor, valid: torch.Tensor,
                         temperature: float) -> torch.Tensor:
    """Listwise distillation of a teacher's similarities (relational knowledge distillation).

    Row i of the student's cross-view similarities (view-0 point i against view 1's points) and
    column i (view-1 point i against view 0's) are softmaxes at `temperature`; their target is
    the softmax of the teacher's similarities between the same points on view 0 alone. The
    teacher's diagonal is 1, so the target ranks the true partner first, as the AP loss does, and
    spreads the rest of its mass over the points the teacher finds alike: across the appearance
    change of view 1, the student learns to hold apart what the teacher holds apart.
    d0, d1 [B,D,K] unit student descriptors of view 0 and of the partners in view 1; t0 [B,E,K]
    unit teacher descriptors of view 0; valid [B,K] (the partner lies in view 1).
    Returns the mean over valid points and both directions of KL(target || student) (scalar;
    0 when no pair has two valid points)."""
    rows = valid & (valid.sum(-1, keepdim=True) > 1)
    if not rows.any():
        return d0.new_zeros(())
    pair, student, target = _student_and_teacher_similarities(d0, d1, t0, valid)
    student, target = student / temperature, target / temperature
    losses = []
    for s, t in ((student, target), (student.transpose(1, 2), target.transpose(1, 2))):
        logq = torch.log_softmax(s.masked_fill(~pair, float("-inf")), -1)
        logp = torch.log_softmax(t.masked_fill(~pair, float("-inf")), -1)
        kl = (logp.exp() * (logp - logq)).masked_fill(~pair, 0.0).sum(-1)   # [B,K]
        losses.append(kl[rows].mean())
    return sum(losses) / 2


def teacher_similarity_loss(d0: torch.Tensor, d1: torch.Tensor, t0: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Distillation of a teacher's similarities themselves: the mean squared difference between
    the student's cross-view similarities d0_i.d1_j and the teacher's t0_i.t0_j on view 0, over
    pairs of points with partners in view 1. Where `teacher_ranking_loss` weighs the few most
    similar points of each list, this weighs every entry: the Gram matrix of unit vectors fixes
    them up to a rotation, so the student learns the teacher's embedding of the points (without
    a projection to learn), and learns it across view 1's appearance change (the diagonal: 1).
    d0, d1 [B,D,K]; t0 [B,E,K]; valid [B,K] -> scalar (0 when no point has a partner)."""
    pair, student, target = _student_and_teacher_similarities(d0, d1, t0, valid)
    if not pair.any():
        return d0.new_zeros(())
    return (student - target).square()[pair].mean()


def _student_and_teacher_similarities(d0: torch.Tensor, d1: torch.Tensor, t0: torch.Tensor, valid: torch.Tensor
                                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The teacher losses' common part: (pairs of points with partners [B,K,K], the student's
    cross-view similarities d0_i.d1_j [B,K,K], the teacher's view-0 similarities t0_i.t0_j [B,K,K])."""
    student = torch.einsum("bdk,bdl->bkl", d0, d1)
    return (valid[:, :, None] & valid[:, None, :], student,
            torch.einsum("bek,bel->bkl", t0, t0).to(student.dtype))


def expected_match_reward(d0: torch.Tensor, d1: torch.Tensor, kp0_in1: torch.Tensor, inside0: torch.Tensor,
                          kp1: torch.Tensor, usable1: torch.Tensor, temperature: float, radius: float,
                          wrong_radius: float, penalty: float) -> torch.Tensor:
    """Expected reward of mutual nearest-neighbour matching, DISK's reward without its sampling.

    Matching as DISK's policy: i in view 0 picks j in view 1 with P(j|i) = softmax_j(s_ij / T),
    j picks i with P(i|j) = softmax_i(s_ij / T); the pair is kept when both pick each other,
    probability P(j|i) P(i|j). A kept pair earns +1 when i, taken into view 1, lies within `radius`
    of j, and -`penalty` when it lies beyond `wrong_radius` or outside view 1 (0 in between:
    neighbouring detections). The AP loss ranks each anchor's partner first; this term also
    prices the mutual matches of points that have no partner, which mutual matching keeps unless
    the descriptor leaves them ambiguous.
    d0 [B,D,N] view-0 descriptors, kp0_in1 [B,N,2] their positions in view 1, inside0 [B,N];
    d1 [B,D,M] view-1 descriptors at kp1 [B,M,2], usable1 [B,M] (False: not a point of view 1).
    Returns the expected reward per view-0 point, averaged over pairs (scalar, higher is better)."""
    logits = torch.einsum("bdn,bdm->bnm", d0, d1) / temperature
    cols = usable1[:, None, :]
    masked = logits.masked_fill(~cols, float("-inf"))
    p_row = torch.softmax(masked, -1)                                  # P(j|i), over view 1
    p_col = torch.softmax(masked, 1).nan_to_num(0.0)                   # P(i|j), over view 0 (empty columns: 0)
    dist = torch.cdist(kp0_in1, kp1)                                   # [B,N,M] px in view 1
    right = (dist <= radius) & inside0[..., None]
    wrong = (dist > wrong_radius) | ~inside0[..., None]
    reward = right.float() - penalty * wrong.float()
    mutual = (p_row * p_col).masked_fill(~cols, 0.0)
    return ((mutual * reward).sum((1, 2)) / d0.shape[-1]).mean()


def global_contrastive_loss(g0: torch.Tensor, g1: torch.Tensor, image_ids: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE between the two views of each crop against the batch's other images. g0,g1 [B,D]."""
    logits = g0 @ g1.t() / temperature
    same = image_ids[:, None] == image_ids[None, :]
    eye = torch.eye(len(g0), dtype=torch.bool, device=g0.device)
    logits = logits.masked_fill(same & ~eye, float("-inf"))
    target = torch.arange(len(g0), device=g0.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2
