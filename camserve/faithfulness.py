"""How much a prediction depends on what its map shows: one extra batched no-grad forward per batch.

For each (sample, class) row, with its map ``M`` upsampled to the model input and scaled to [0, 1]:

- *masked*: the image multiplied by its map, ``x' = x ⊙ M``;
- *deleted*: the image with the map's top ``fraction`` of pixels (20 %) removed.

Both act on the *normalised* input ``x = (pixel - mean) / std``, so multiplying by 0 and "removing" both
mean replacing a pixel by the training data's per-channel mean colour (``x = 0``): a neutral grey for
the model rather than black, which carries meaning in many images (air in a radiograph). The masked
image therefore blends each pixel towards that mean by ``1 - M``.

Removed pixels are the ``floor(fraction * S * S)`` with the highest map values (ties broken by raster
order), among pixels where the map is positive: a map with less positive area removes less, and
``deletion_fraction`` reports the share actually removed (0 for an all-zero map, whose deletion image
is then the original).

The masked and deleted images of every row go through the model in one ``inference_mode`` forward;
``confidence`` comes from the explaining pass (``log_probs``) or, without it, from the original images
added to that same forward. Ratios are computed from log-probabilities, so they stay finite when a
probability underflows (Chattopadhay et al. 2018 define average drop and increase in confidence over a
data set; here they are per row, for the caller to average).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from camserve.cam import frozen, log_probabilities
from camserve.schema import Faithfulness

DELETION_FRACTION = 0.2


def deletion_keep(maps: torch.Tensor, fraction: float = DELETION_FRACTION) -> tuple[torch.Tensor, list[float]]:
    """Which pixels survive the deletion of each map's top ``fraction``, and the share removed per row.

    Args:
        maps: ``[N, S, S]`` maps.
        fraction: Share of the pixels to remove, among those with a positive map value.

    Returns:
        A ``[N, S, S]`` boolean tensor (``True``: kept) and, per row, the share of pixels removed.
    """
    flat = maps.reshape(maps.shape[0], -1)
    k = math.floor(fraction * flat.shape[1] + 1e-9)  # never more than the fraction
    removed = torch.zeros_like(flat, dtype=torch.bool)
    if k:
        top = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :k]
        removed.scatter_(1, top, True)
        removed &= flat > 0
    shares = (removed.sum(dim=1).double() / flat.shape[1]).tolist()
    return ~removed.reshape(maps.shape), shares


def score(model: nn.Module, x: torch.Tensor, extra: Sequence[torch.Tensor], maps: torch.Tensor,
          targets: Sequence[Sequence[int]], log_probs: torch.Tensor | None = None,
          fraction: float = DELETION_FRACTION) -> list[Faithfulness]:
    """Faithfulness of every (sample, class) row, from one batched no-grad forward.

    Args:
        model: The classifier; its forward takes ``(x, *extra)``.
        x: ``[B, 3, S, S]`` normalised images, as explained.
        extra: Further forward inputs (tabular features), batched like ``x``.
        maps: ``[N, S, S]`` maps in [0, 1] at the input size, one per row, sample-major (sample 0's
            classes, then sample 1's...): :func:`camserve.cam.input_maps` of the explaining pass.
        targets: Per sample, its explained classes (``N`` in all), as resolved by the explaining pass.
        log_probs: ``[B, C]`` log-probabilities of the original images (the explaining pass has them);
            ``None`` adds the originals to the forward instead.
        fraction: Share of pixels the deletion removes.

    Returns:
        One :class:`camserve.schema.Faithfulness` per row, in row order.
    """
    sample = [i for i, classes in enumerate(targets) for _ in classes]
    classes = [c for row in targets for c in row]
    if len(targets) != x.shape[0] or maps.shape != (len(sample), *x.shape[-2:]):
        raise ValueError(f"{maps.shape[0]} maps of {tuple(maps.shape[1:])} for {len(sample)} targets of "
                         f"{len(targets)} images of {tuple(x.shape[-2:])}")
    keep, removed = deletion_keep(maps, fraction)
    index = torch.as_tensor(sample, device=x.device)
    images = x.index_select(0, index)
    parts = [images * maps.to(x)[:, None], images * keep.to(x)[:, None]]
    extras = [[e.index_select(0, index)] * 2 for e in extra]
    if log_probs is None:
        parts.append(x)
        extras = [rows + [e] for rows, e in zip(extras, extra, strict=True)]
    with frozen(model), torch.inference_mode():
        out = log_probabilities(model(torch.cat(parts), *[torch.cat(rows) for rows in extras])).double().cpu()
    n = len(sample)
    original = out[2 * n:] if log_probs is None else log_probs.double().cpu()
    return [_row(float(original[i, c]), float(out[r, c]), float(out[n + r, c]), removed[r])
            for r, (i, c) in enumerate(zip(sample, classes, strict=True))]


def _row(log_p: float, log_masked: float, log_deleted: float, removed: float) -> Faithfulness:
    return Faithfulness(
        confidence=math.exp(log_p), masked_confidence=math.exp(log_masked),
        average_drop=max(0.0, -math.expm1(log_masked - log_p)), increase=log_masked > log_p,
        deletion_confidence=math.exp(log_deleted), deletion_drop=max(0.0, -math.expm1(log_deleted - log_p)),
        deletion_fraction=removed)
