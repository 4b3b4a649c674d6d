"""Policy-optimization objectives: SAPO and its baselines (pure torch, no Lightning).

Every objective is a callable ``objective(log_probs, old_log_probs, advantages, mask)``:

- ``log_probs``      ``[N, T]`` float, log π_θ of the sampled tokens (carries the gradient);
- ``old_log_probs``  ``[N, T]`` float, log π_old of the same tokens (a constant);
- ``advantages``     ``[N]`` float, one advantage per response (a constant), or ``[N, T]``, one per token
  (a response's advantage times a non-negative token weight: a rollout correction's);
- ``mask``           ``[N, T]`` bool, True for real response tokens.

It returns an :class:`ObjectiveOutput`: the scalar ``loss`` to minimise and a dict of
detached scalar diagnostics. Keys ending in ``_min`` / ``_max`` are aggregated across
steps and ranks by min / max, every other key by mean. The math is written out in ``docs/math.md``.

The family: :class:`SAPO` (soft gate), :class:`GRPO` (PPO clip; DAPO clip-higher and
Dr.GRPO are GRPO configurations), :class:`GSPO` (sequence ratio, sequence clip) and
:class:`CISPO` (clipped, detached importance weight on log π). They share
:func:`log_ratio`, :func:`aggregate` and :func:`ratio_metrics`, so their common
diagnostics (``ratio_mean/min/max``, ``approx_kl``, all per token) compare like for like.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sapo_lightning.checks import check_choice, check_number, check_positive

#: Log-ratios are clamped to this range before ``exp``: an overflowed ratio whose gate
#: derivative is 0 would give inf * 0 = NaN in backward.
LOG_RATIO_CLAMP = 20.0

AGGREGATIONS = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
RATIO_LEVELS = ("token", "sequence")


@dataclass
class ObjectiveOutput:
    """What an objective returns: the loss and its detached diagnostics."""

    loss: Tensor  # scalar, carries the gradient
    metrics: dict[str, Tensor]  # name -> detached scalar


def aggregate(values: Tensor, mask: Tensor, mode: str) -> Tensor:
    """Reduce per-token values ``[N, T]`` to a scalar over the tokens where ``mask`` is True.

    - ``seq-mean-token-mean``: mean_i( Σ_t m·l / Σ_t m )  (each response weighs the same)
    - ``token-mean``: Σ_{i,t} m·l / Σ_{i,t} m  (each token weighs the same)
    - ``seq-mean-token-sum-norm``: Σ_{i,t} m·l / (N · T)  (Dr.GRPO: a constant divisor,
      T being the padded response length L_max)
    """
    masked = values * mask  # [N, T]
    if mode == "seq-mean-token-mean":
        lengths = mask.sum(-1).clamp(min=1)  # [N]
        return (masked.sum(-1) / lengths).mean()
    if mode == "token-mean":
        return masked.sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / mask.numel()
    check_aggregation(mode)  # raises for an unknown mode
    raise AssertionError(mode)


def micro_batch_share(mode: str, chunk_mask: Tensor, mask: Tensor) -> Tensor | float:
    """Weight w of a micro-batch's aggregate in the whole batch's: Σ_chunks w · aggregate(chunk) = aggregate(batch).

    ``chunk_mask`` ``[n, T]`` holds consecutive rows of the batch's ``mask`` ``[N, T]``. Each
    response weighs 1/N in the two sequence means, so a chunk of n rows weighs n/N (the
    Dr.GRPO divisor N·T keeps T, the batch's padded length); under ``token-mean`` each token
    weighs 1/Σm, so the chunk weighs its share of the batch's tokens.
    """
    if mode == "token-mean":
        return chunk_mask.sum() / mask.sum().clamp(min=1)
    return chunk_mask.shape[0] / mask.shape[0]


def k3_kl(log_probs: Tensor, ref_log_probs: Tensor) -> Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) ``[N, T]``: exp(d) − d − 1 with d = log π_ref − log π_θ (≥ 0)."""
    d = (ref_log_probs - log_probs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d) - d - 1


def check_aggregation(mode: str) -> str:
    return check_choice("aggregation", mode, AGGREGATIONS)


def check_eps(name: str, value: float, below_one: bool = False) -> float:
    """A clip width: finite and >= 0; ``below_one`` keeps the lower bound 1 − ε above 0."""
    return check_number(name, value, 0, 1 if below_one else None, high_open=True)


def token_advantages(advantages: Tensor) -> Tensor:
    """Advantages ``[N]`` as ``[N, 1]`` (broadcast over each response's tokens); per-token ``[N, T]`` as they are."""
    return advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages


def log_ratio(log_probs: Tensor, old_log_probs: Tensor) -> Tensor:
    """z = log π_θ − log π_old, clamped to [−20, 20]."""
    return (log_probs - old_log_probs).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)


def sequence_log_ratio(z: Tensor, mask: Tensor) -> Tensor:
    """GSPO-token log-ratio ``[N, T]`` from token log-ratios ``z`` ``[N, T]``.

    Every token of response i carries the value log s_i = Σ_t m·z / Σ_t m (GSPO's length-
    normalised sequence log-ratio) and the gradient of its own z_{i,t}:
    log s_{i,t} = sg[log s_i] + z_{i,t} − sg[z_{i,t}]. With one advantage per response this
    gives exactly the values and gradients of broadcasting s_i over the response's tokens,
    under every aggregation: d(|y_i| l(s_i))/dz_{i,t} = l'(s_i) s_i = d l(s_{i,t})/dz_{i,t}.
    """
    log_s = (z * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)  # [N, 1]
    return log_s.detach() + (z - z.detach())  # [N, T]; the bracket is exactly 0 in value


@torch.no_grad()
def ratio_metrics(z: Tensor, ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Diagnostics every objective reports: ratio mean/min/max and approx KL (k3)."""
    n_tokens = mask.sum().clamp(min=1)
    inf = torch.tensor(float("inf"), dtype=ratio.dtype, device=ratio.device)
    return {
        "ratio_mean": (ratio * mask).sum() / n_tokens,
        "ratio_min": torch.where(mask, ratio, inf).amin(),
        "ratio_max": torch.where(mask, ratio, -inf).amax(),
        "approx_kl": (((ratio - 1) - z) * mask).sum() / n_tokens,
    }


@torch.no_grad()
def sequence_ratio_metrics(seq_ratio: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Mean/min/max of the sequence ratio s_i ``[N, T]`` (constant along t) over non-empty responses."""
    s = seq_ratio[:, 0]  # [N]
    present = mask.any(-1)  # [N]
    inf = torch.tensor(float("inf"), dtype=s.dtype, device=s.device)
    return {
        "seq_ratio_mean": masked_mean(s, present),
        "seq_ratio_min": torch.where(present, s, inf).amin(),
        "seq_ratio_max": torch.where(present, s, -inf).amax(),
    }


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` where ``mask``; NaN when the mask is empty (skipped when logged)."""
    return (values * mask).sum() / mask.sum()


def clipped_surrogate(
    ratio: Tensor, adv: Tensor, mask: Tensor, eps_low: float, eps_high: float, dual_clip: float | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO's per-token loss −min(r·Â, clip(r, 1−ε_low, 1+ε_high)·Â) ``[N, T]`` and its clip fractions.

    With ``dual_clip`` = c, tokens with Â < 0 have their loss capped at −c·Â.

    The fractions count the tokens whose gradient the clip zeroes, as a share of the masked
    tokens: ``clip_frac_low`` r < 1−ε_low with Â < 0, ``clip_frac_high`` r > 1+ε_high with
    Â > 0 (there the min selects the constant clipped term; on the other side of 1 the min
    selects r·Â, which keeps its gradient, so a token merely outside the range is not
    counted), and with a dual clip ``clip_frac_dual`` Â < 0 with r > c.
    """
    clipped = ratio.clamp(1 - eps_low, 1 + eps_high)  # [N, T]
    loss = -torch.minimum(ratio * adv, clipped * adv)  # [N, T]
    with torch.no_grad():
        fracs = {
            "clip_frac_low": masked_mean(((ratio < 1 - eps_low) & (adv < 0)).to(ratio.dtype), mask),
            "clip_frac_high": masked_mean(((ratio > 1 + eps_high) & (adv > 0)).to(ratio.dtype), mask),
        }
    if dual_clip is not None:
        loss = torch.where(adv < 0, torch.minimum(loss, -dual_clip * adv), loss)  # [N, T]
        with torch.no_grad():
            fracs["clip_frac_dual"] = masked_mean(((ratio > dual_clip) & (adv < 0)).to(ratio.dtype), mask)
    return loss, fracs


class Objective:
    """Base class: subclasses implement ``__call__`` with the signature of the module docstring.

    ``aggregation`` names how the loss reduces its tokens (one of :data:`AGGREGATIONS`): the
    module weighs micro-batches and the reference KL by it.
    """

    aggregation: str = "seq-mean-token-mean"

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


class SAPO(Objective):
    r"""Soft Adaptive Policy Optimization (Qwen team, arXiv 2511.20347, Eq. 5-8).

    J(θ) = E[ (1/G) Σ_i (1/|y_i|) Σ_t f_{i,t}(r_{i,t}) Â_i ],  loss = −J

    f(r) = (4/τ) σ(τ (r − 1)),   τ = τ_pos if Â_i > 0 else τ_neg,   r = exp(clamp(z, −20, 20))

    The gradient weight is w = f'(r) = 4 σ(τ(r−1)) (1 − σ(τ(r−1))) = sech²(τ(r−1)/2): w = 1 at
    r = 1 for every τ, so on-policy SAPO is the plain policy gradient; off-policy tokens are
    softly down-weighted instead of hard-clipped. No clipping, no KL term.

    Args:
        tau_pos: Gate temperature for tokens of responses with positive advantage (paper: 1.0).
        tau_neg: Gate temperature for zero or negative advantage (paper: 1.05). τ_neg > τ_pos
            makes the gate of negative updates decay faster, which the paper finds more stable.
        aggregation: How per-token losses are reduced: ``seq-mean-token-mean`` (paper),
            ``token-mean`` or ``seq-mean-token-sum-norm``.
        ratio_level: ``token`` (paper) gates each token's ratio r_{i,t}. ``sequence`` is an
            extension that is NOT in the paper (TRL's ``importance_sampling_level``): it gates
            GSPO's sequence ratio s_i = exp(mean_t z_{i,t}) on every token of response i, in
            the GSPO-token form (see :func:`sequence_log_ratio`).

    Diagnostics: ratio mean/min/max, approx KL, ``gate_mean`` (mean w), ``gate_pos`` /
    ``gate_neg`` (mean w over tokens with Â > 0 / Â < 0) and ``soft_clip_frac`` (share of
    tokens with w < 0.5); with ``ratio_level="sequence"`` also ``seq_ratio_mean/min/max``.
    """

    def __init__(
        self,
        tau_pos: float = 1.0,
        tau_neg: float = 1.05,
        aggregation: str = "seq-mean-token-mean",
        ratio_level: str = "token",
    ) -> None:
        self.tau_pos = check_positive("tau_pos", tau_pos)
        self.tau_neg = check_positive("tau_neg", tau_neg)
        self.aggregation = check_aggregation(aggregation)
        self.ratio_level = check_choice("ratio_level", ratio_level, RATIO_LEVELS)

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        z = log_ratio(log_probs, old_log_probs)  # [N, T]
        gated_z = z if self.ratio_level == "token" else sequence_log_ratio(z, mask)  # [N, T]
        ratio = torch.exp(gated_z)  # [N, T]
        adv = token_advantages(advantages)  # [N, 1] or [N, T]
        positive = adv > 0
        tau = torch.full_like(adv, self.tau_neg, dtype=ratio.dtype).masked_fill_(positive, self.tau_pos)  # as adv
        sig = torch.sigmoid(tau * (ratio - 1))  # [N, T]
        f = (4 / tau) * sig  # [N, T]
        loss = aggregate(-f * adv, mask, self.aggregation)

        metrics = ratio_metrics(z, torch.exp(z) if self.ratio_level == "sequence" else ratio, mask)
        with torch.no_grad():
            gate = 4 * sig * (1 - sig)  # w = f'(r), [N, T]
            masked_gate = gate * mask  # [N, T]
            n_tokens = mask.sum()
            metrics["gate_mean"] = masked_gate.sum() / n_tokens
            for name, side in (("gate_pos", adv > 0), ("gate_neg", adv < 0)):  # [N, 1] or [N, T]
                # masked sums, not boolean indexing: no device-to-host sync on GPU
                metrics[name] = (masked_gate * side).sum() / (mask * side).sum()  # NaN for an empty side
            metrics["soft_clip_frac"] = ((gate < 0.5) & mask).sum().to(gate.dtype) / n_tokens
        if self.ratio_level == "sequence":
            metrics.update(sequence_ratio_metrics(ratio, mask))
        return ObjectiveOutput(loss, metrics)


class GRPO(Objective):
    r"""GRPO's PPO-clip surrogate per token (Shao et al., DeepSeekMath, arXiv 2402.03300, Eq. 3).

    loss_{i,t} = −min( r_{i,t} Â_i, clip(r_{i,t}, 1−ε_low, 1+ε_high) Â_i ),   r = exp(clamp(z, −20, 20))

    aggregated by ``aggregation``; no KL term. A token whose ratio left the trust region in
    the direction its advantage pushes (r > 1+ε_high with Â > 0, r < 1−ε_low with Â < 0)
    gets zero gradient; every other token gets the policy gradient r Â ∇log π_θ, so at r = 1
    GRPO is the plain policy gradient.

    With ``dual_clip`` = c (Ye et al., arXiv 1912.09729; c = 3 there) a token with Â < 0 has
    its loss capped: loss_{i,t} = min(loss_{i,t}, −c Â_i), which stops a huge ratio on a
    bad token from dominating the batch.

    Configurations of the same class:

    - GRPO / PPO (Schulman et al., arXiv 1707.06347): the defaults, ε_low = ε_high = 0.2,
      ``seq-mean-token-mean``.
    - DAPO clip-higher (Yu et al., arXiv 2503.14476): ``eps_high=0.28``, ``aggregation="token-mean"``:
      more room for raising unlikely tokens (less entropy collapse), every token weighs the same.
    - Dr.GRPO (Liu et al., arXiv 2503.20783): ``aggregation="seq-mean-token-sum-norm"`` with the
      module's ``advantage_scale="none"`` (Â = R − mean, no std division): no length or
      difficulty bias.

    Args:
        eps_low: Lower clip width: ratios below 1 − eps_low stop pushing negative-advantage
            tokens down (default 0.2; must be in [0, 1)).
        eps_high: Upper clip width: ratios above 1 + eps_high stop pushing positive-advantage
            tokens up (default 0.2; DAPO 0.28; must be >= 0).
        dual_clip: Cap c > 1 on the loss of negative-advantage tokens, −c·Â; None (default) is off.
        aggregation: ``seq-mean-token-mean`` (GRPO, default), ``token-mean`` (DAPO) or
            ``seq-mean-token-sum-norm`` (Dr.GRPO).

    Diagnostics: ratio mean/min/max, approx KL, ``clip_frac_low`` / ``clip_frac_high``: the
    share of masked tokens whose gradient the clip zeroes, i.e. the clip bound is crossed on
    that side AND the min selects the clipped term (low: r < 1−ε_low with Â < 0; high:
    r > 1+ε_high with Â > 0; a token with Â > 0 and r < 1−ε_low is outside the range but keeps
    its gradient, so it is not counted); with a dual clip also ``clip_frac_dual`` (Â < 0, r > c).
    """

    def __init__(
        self,
        eps_low: float = 0.2,
        eps_high: float = 0.2,
        dual_clip: float | None = None,
        aggregation: str = "seq-mean-token-mean",
    ) -> None:
        self.eps_low = check_eps("eps_low", eps_low, below_one=True)
        self.eps_high = check_eps("eps_high", eps_high)
        self.dual_clip = check_number("dual_clip", dual_clip, 1, low_open=True, allow_none=True)
        self.aggregation = check_aggregation(aggregation)

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        z = log_ratio(log_probs, old_log_probs)  # [N, T]
        ratio = torch.exp(z)  # [N, T]
        adv = token_advantages(advantages)  # [N, 1] or [N, T]
        per_token, fracs = clipped_surrogate(ratio, adv, mask, self.eps_low, self.eps_high, self.dual_clip)
        loss = aggregate(per_token, mask, self.aggregation)
        return ObjectiveOutput(loss, ratio_metrics(z, ratio, mask) | fracs)


class GSPO(Objective):
    r"""Group Sequence Policy Optimization (Zheng et al., Qwen, arXiv 2507.18071, Eq. 5-7).

    s_i = exp( (1/|y_i|) Σ_t z_{i,t} )   (length-normalised sequence ratio)

    loss = (1/G) Σ_i −min( s_i Â_i, clip(s_i, 1−ε_low, 1+ε_high) Â_i )   (seq-mean)

    Computed in the GSPO-token form (paper Eq. 13-14, :func:`sequence_log_ratio`) through the
    shared :func:`aggregate` with ``seq-mean-token-mean``, which with one advantage per
    response has exactly the values and gradients of the sequence form: every unclipped
    response gets the gradient s_i Â_i (1/|y_i|) Σ_t ∇log π_θ(y_{i,t}). A whole response is
    clipped (zero gradient) once s_i leaves [1−ε_low, 1+ε_high] in its advantage's direction,
    so at s = 1 GSPO is the seq-mean policy gradient.

    Args:
        eps_low: Lower clip width on s_i (paper §5.1: 3e-4; must be in [0, 1)).
        eps_high: Upper clip width on s_i (paper §5.1: 4e-4; must be >= 0). Sequence ratios
            stay much closer to 1 than token ratios, hence widths two orders of magnitude
            smaller than GRPO's; with several stale updates per rollout they clip most responses.

    Diagnostics: ratio mean/min/max and approx KL of the token ratios (comparable with the
    other objectives), ``seq_ratio_mean/min/max`` of s_i, and ``clip_frac_low`` /
    ``clip_frac_high``: share of masked tokens whose response is clipped with zero gradient
    (low: s_i < 1−ε_low with Â_i < 0; high: s_i > 1+ε_high with Â_i > 0), counted per token
    as in the paper's clipping-fraction comparison.
    """

    def __init__(self, eps_low: float = 3e-4, eps_high: float = 4e-4) -> None:
        self.eps_low = check_eps("eps_low", eps_low, below_one=True)
        self.eps_high = check_eps("eps_high", eps_high)

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        z = log_ratio(log_probs, old_log_probs)  # [N, T]
        seq_ratio = torch.exp(sequence_log_ratio(z, mask))  # [N, T], s_i on every token of i
        adv = token_advantages(advantages)  # [N, 1] or [N, T]
        per_token, fracs = clipped_surrogate(seq_ratio, adv, mask, self.eps_low, self.eps_high)
        loss = aggregate(per_token, mask, "seq-mean-token-mean")
        metrics = ratio_metrics(z, torch.exp(z), mask) | sequence_ratio_metrics(seq_ratio, mask) | fracs
        return ObjectiveOutput(loss, metrics)


class CISPO(Objective):
    r"""Clipped IS-weight Policy Optimization (MiniMax-M1, arXiv 2506.13585, Eq. 4-5).

    loss_{i,t} = −sg[ clip(r_{i,t}, 1−ε_low, 1+ε_high) ] · Â_i · log π_θ(y_{i,t}),   token-mean

    The clipped ratio is a detached weight on a REINFORCE term, so no token ever loses its
    gradient: clipping only bounds the weight (variance), where PPO's clip drops the token.
    The gradient is sg[clip(r)] Â ∇log π_θ; at r = 1 CISPO is the token-mean policy gradient.
    The loss value contains log π_θ and is not comparable with the other objectives' values.

    Args:
        eps_low: Lower clip width of the weight (default 0.2; >= 0, and values >= 1 remove
            the lower bound, as MiniMax-M1 does by setting it large).
        eps_high: Upper clip width of the weight (default 5.0: large, so only extreme ratios
            are truncated; MiniMax-M1 tunes only this one).
        aggregation: ``token-mean`` (MiniMax-M1, default), ``seq-mean-token-mean`` or
            ``seq-mean-token-sum-norm``.

    Diagnostics: ratio mean/min/max, approx KL, ``clip_frac_low`` / ``clip_frac_high``: share
    of masked tokens whose weight is truncated (r < 1−ε_low / r > 1+ε_high, whatever the
    advantage's sign). Unlike GRPO's, these tokens keep a gradient, scaled by the bound.
    """

    def __init__(self, eps_low: float = 0.2, eps_high: float = 5.0, aggregation: str = "token-mean") -> None:
        self.eps_low = check_eps("eps_low", eps_low)
        self.eps_high = check_eps("eps_high", eps_high)
        self.aggregation = check_aggregation(aggregation)

    def __call__(
        self, log_probs: Tensor, old_log_probs: Tensor, advantages: Tensor, mask: Tensor
    ) -> ObjectiveOutput:
        z = log_ratio(log_probs, old_log_probs)  # [N, T]
        ratio = torch.exp(z)  # [N, T]
        weight = ratio.clamp(1 - self.eps_low, 1 + self.eps_high).detach()  # [N, T]
        loss = aggregate(-weight * token_advantages(advantages) * log_probs, mask, self.aggregation)
        metrics = ratio_metrics(z, ratio, mask)
        with torch.no_grad():
            metrics["clip_frac_low"] = masked_mean((ratio < 1 - self.eps_low).to(ratio.dtype), mask)
            metrics["clip_frac_high"] = masked_mean((ratio > 1 + self.eps_high).to(ratio.dtype), mask)
        return ObjectiveOutput(loss, metrics)
