"""Stored results → ``acttail.plots`` figures → cached image responses (API and dashboard share these).

Callers load the rows with the team's visibility already applied; these functions only turn rows
into plot input, and render through ``api.image_cache`` (ETag over that input, LRU, 304).

What the store keeps decides what can be drawn: ESD runs hold the fit statistics per projection
(alpha, x_min, KS distance, norms) but not the eigenvalues, so the ESD histogram cannot be drawn
from the database and its endpoint says so (404).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from fastapi import Response
from sqlalchemy.orm import Session

from acttail.errors import ActTailError
from acttail.store import results
from acttail.store.errors import NotFoundError
from acttail.store.orm import AllocationRow, Benchmark, EsdRun
from api.image_cache import ImageCache, image_response

ImageFormat = Literal["svg", "png"]
MAX_SWEEP_ROWS = 5000  # benchmark rows read for one sweep plot (a sweep has tens)
_SETTINGS_IGNORED = frozenset({"tokens_scored"})  # a consequence of the settings, not one of them


class UndrawableError(ActTailError):
    """Stored data that ``acttail.plots`` refuses to draw (e.g. non-standard projection names): 422."""


def _render(build: Any, fmt: str) -> bytes:
    from acttail import plots  # matplotlib: imported on the first picture, not at API start

    try:
        return plots.render_bytes(build(plots), fmt)
    except plots.PlotError as exc:
        raise UndrawableError(f"cannot draw the stored data: {exc}") from None


# --------------------------------------------------------------------------------------------
# alpha per layer


def alpha_rows(run: EsdRun) -> list[dict[str, Any]]:
    """(layer, kind, alpha) of every projection with a fitted alpha (a failed fit stores NULL)."""
    return [{"layer": p.layer, "kind": p.kind, "alpha": p.alpha} for p in run.projections if p.alpha is not None]


def alphas_image(run: EsdRun, fmt: ImageFormat, *, cache: ImageCache, if_none_match: str | None) -> Response:
    rows = alpha_rows(run)
    if not rows:
        raise NotFoundError(f"ESD run {run.id} of {run.model.model_id!r} has no fitted alpha to plot")
    title = f"{run.model.model_id} · α per layer · estimator {run.estimator}"
    return image_response(
        cache, figure="alphas", fmt=fmt, payload={"rows": rows, "title": title}, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_alphas(rows, title=title), fmt),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# ESD of one projection


def esd_image(run: EsdRun, projection: str) -> Response:
    """Always a NotFoundError: the store has no eigenvalues (the message says what it has instead)."""
    names = [p.name for p in run.projections]
    if projection not in names:
        shown = ", ".join(names[:3]) + (", …" if len(names) > 3 else "")
        raise NotFoundError(f"no projection {projection!r} in ESD run {run.id} (projections: {shown})")
    raise NotFoundError(
        f"eigenvalues are not stored: ESD run {run.id} keeps only the fit statistics of {projection} "
        f"(alpha, x_min, KS distance, norms; see /v1/models/{run.model.fingerprint}/alphas), and the ESD "
        "histogram needs the eigenvalues; draw it locally with acttail.plots.plot_esd"
    )


# --------------------------------------------------------------------------------------------
# allocation heatmap


def allocation_image(
    row: AllocationRow, fmt: ImageFormat, *, cache: ImageCache, if_none_match: str | None
) -> Response:
    doc = row.document
    drawn = {key: doc.get(key) for key in ("sparsities", "target", "method", "model_id")}
    return image_response(
        cache, figure="allocation", fmt=fmt, payload=drawn, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_allocation(drawn), fmt),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# perplexity (and mean zero-shot accuracy) against sparsity


def _settings_key(row: Benchmark) -> str:
    kept = {k: v for k, v in (row.settings or {}).items() if k not in _SETTINGS_IGNORED}
    return json.dumps(kept, sort_keys=True, default=str)


def _preferred(rows: Iterable[Benchmark], team_id: int) -> Benchmark:
    """The team's own measurement over a shared one, then the newest."""
    return max(rows, key=lambda r: (r.team_id == team_id, r.created_at, r.id))


def _one_per_variant(rows: Sequence[Benchmark], team_id: int) -> dict[int | None, Benchmark]:
    """allocation_id (None = dense) → one row, from the settings group with the most sparse variants."""
    groups: dict[str, list[Benchmark]] = {}
    for row in rows:
        groups.setdefault(_settings_key(row), []).append(row)

    def rank(group: list[Benchmark]) -> tuple[int, int, Any, int]:
        variants = {r.allocation_id for r in group}
        newest = max(group, key=lambda r: (r.created_at, r.id))
        return len(variants - {None}), len(variants), newest.created_at, newest.id

    best = max(groups.values(), key=rank)
    by_variant: dict[int | None, list[Benchmark]] = {}
    for row in best:
        by_variant.setdefault(row.allocation_id, []).append(row)
    return {variant: _preferred(group, team_id) for variant, group in by_variant.items()}


def _labels(allocations: Iterable[AllocationRow]) -> dict[int, str]:
    """Series label per allocation: its method, plus the settings that tell apart configs of one method."""
    allocations = list(allocations)
    configs: dict[str, dict[str, dict[str, Any]]] = {}
    for a in allocations:
        config = {"estimator": a.estimator, **(a.params or {})}
        configs.setdefault(a.method, {})[json.dumps(config, sort_keys=True, default=str)] = config
    labels: dict[int, str] = {}
    for a in allocations:
        variants = list(configs[a.method].values())
        if len(variants) == 1:
            labels[a.id] = a.method
            continue
        mine = {"estimator": a.estimator, **(a.params or {})}
        differing = sorted(k for k in mine if any(v.get(k) != mine[k] for v in variants))
        labels[a.id] = f"{a.method} ({', '.join(f'{k}={mine[k]}' for k in differing)})"
    return labels


def sweep_rows(
    ppl: Sequence[Benchmark], accuracy: Sequence[Benchmark], team_id: int
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows for ``acttail.plots.plot_sweep`` from stored perplexity and mean-accuracy benchmarks,
    and the perplexity settings they were measured with.

    One perplexity setting is drawn (the one covering the most variants, then the newest):
    numbers measured with different windows or token budgets are not comparable. Each variant
    (dense or one allocation) gets one point, preferring the team's own measurement; mean
    zero-shot accuracy is added from the zero-shot setting that covers the most variants.
    """
    chosen = _one_per_variant(ppl, team_id)
    acc = _one_per_variant(accuracy, team_id) if accuracy else {}
    labels = _labels(row.allocation for row in chosen.values() if row.allocation is not None)
    points: dict[tuple[str, float | None], tuple[Benchmark, dict[str, Any]]] = {}
    for variant, row in chosen.items():
        accuracy_row = acc.get(variant)
        point: dict[str, Any] = {
            "perplexity": row.value,
            "mean_accuracy": accuracy_row.value if accuracy_row is not None else None,
        }
        if row.allocation is None:
            point.update(method="dense", dense=True)
            key: tuple[str, float | None] = ("dense", None)
        else:
            point.update(method=labels[row.allocation.id], target=row.allocation.target)
            key = (point["method"], row.allocation.target)
        # Equal configurations from two teams (own and a shared copy): keep the preferred one.
        if key not in points or _preferred([points[key][0], row], team_id) is row:
            points[key] = (row, point)
    settings = dict(next(iter(chosen.values())).settings or {})
    return [point for _, point in sorted(points.values(), key=lambda item: item[0].id)], settings


def _sweep_title(model_id: str, settings: dict[str, Any]) -> str:
    parts = [f"{model_id} · perplexity"]
    if settings.get("dataset"):
        parts.append(str(settings["dataset"]))
    if settings.get("seqlen"):
        parts.append(f"seqlen {settings['seqlen']}")
    if settings.get("max_tokens"):
        parts.append(f"{settings['max_tokens']} tokens")
    return " · ".join(parts)


def sweep_input(model: str, *, team_id: int, db_session: Session) -> tuple[list[dict[str, Any]], str]:
    """Sweep rows and title for a model (ID or fingerprint) from the benchmarks the team can see.

    A model ID naming several fingerprints (revisions) draws the newest one that has a sparse
    perplexity measurement.
    """
    ppl, _ = results.list_benchmarks(
        team_id=team_id, model=model, kind="perplexity", metric="ppl", limit=MAX_SWEEP_ROWS, db_session=db_session
    )
    sparse = sorted((row for row in ppl if row.allocation_id is not None), key=lambda r: r.id, reverse=True)
    if not sparse:
        raise NotFoundError(f"no perplexity benchmark of a sparse allocation of model {model!r} to plot")
    fingerprint = sparse[0].model.fingerprint
    ppl = [row for row in ppl if row.model.fingerprint == fingerprint]
    accuracy, _ = results.list_benchmarks(
        team_id=team_id, model=fingerprint, kind="zeroshot", metric="mean_accuracy", limit=MAX_SWEEP_ROWS,
        db_session=db_session,
    )  # fmt: skip
    rows, settings = sweep_rows(ppl, accuracy, team_id)
    return rows, _sweep_title(sparse[0].model.model_id, settings)


def sweep_image(
    model: str, fmt: ImageFormat, *, team_id: int, db_session: Session, cache: ImageCache, if_none_match: str | None
) -> Response:
    rows, title = sweep_input(model, team_id=team_id, db_session=db_session)
    return image_response(
        cache, figure="sweep", fmt=fmt, payload={"rows": rows, "title": title}, if_none_match=if_none_match,
        render=lambda: _render(lambda plots: plots.plot_sweep(rows, title=title), fmt),
    )  # fmt: skip
