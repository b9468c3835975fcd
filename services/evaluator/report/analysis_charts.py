"""SVG charts of the decision analytics, in the style of charts.py (drawn at build time, native
<title> tooltips, no script): curves over a continuous x with an optional spread band and a
dashed extrapolation, and a scatter that marks Pareto-optimal models."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from html import escape
from typing import Sequence

from services.evaluator.report.charts import (
    Point,
    _Frame,
    _fmt_tick,
    _legend,
    _percent_range,
    _scale,
    _short,
    empty_chart,
    log_ticks,
    nice_ticks,
)


@dataclass(frozen=True)
class Curve:
    name: str
    points: Sequence[tuple[float, float]]
    color: str
    dash: str = ""
    band: Sequence[tuple[float, float, float]] = field(default_factory=tuple)  # (x, low, high)
    extrapolation: Sequence[tuple[float, float]] = field(default_factory=tuple)  # dashed, marked as such


def _axis(values: Sequence[float], log: bool) -> tuple[float, float, callable, list[float]]:
    if log:
        lo, hi = min(values), max(values)
        lo, hi = (lo / 1.5, hi * 1.5) if lo > 0 else (1.0, max(hi, 10.0))
        return lo, hi, math.log10, log_ticks(lo, hi)
    lo, hi = min(values), max(values)
    ticks = nice_ticks(lo, hi if hi > lo else lo + 1)
    return min(lo, ticks[0]), max(hi, ticks[-1]), (lambda v: v), ticks


def curve_chart(
    curves: Sequence[Curve],
    *,
    title: str,
    x_label: str,
    y_label: str,
    log_x: bool = False,
    x_unit: str = "",
    y_unit: str = "%",
    percent_x: bool = False,
) -> str:
    """Lines over a continuous x (ROC, accuracy-rejection, scaling); `log_x` drops x <= 0 points
    (e.g. the 0-distractor point: shown in the table instead)."""
    keep = (lambda x: x > 0) if log_x else (lambda x: True)  # noqa: E731
    drawn = [c for c in curves if any(keep(x) for x, _ in c.points)]
    if not drawn:
        return empty_chart(f"{title}: no data")
    xs = [x for c in drawn for x, _ in c.points if keep(x)] + [x for c in drawn for x, _ in c.extrapolation]
    ys = [y for c in drawn for x, y in c.points if keep(x)] + [y for c in drawn for _, y in c.extrapolation]
    ys += [v for c in drawn for x, lo, hi in c.band if keep(x) for v in (lo, hi)]
    frame = _Frame(760, 380, left=58, right=220, top=16, bottom=46)
    if percent_x:
        x_lo, x_hi, tx, x_tick_values = 0.0, 100.0, (lambda v: v), nice_ticks(0, 100)
    else:
        x_lo, x_hi, tx, x_tick_values = _axis(xs, log_x)
    y_lo, y_hi = _percent_range(ys)
    sx = lambda x: _scale(tx(x), tx(x_lo), tx(x_hi), frame.x0 + 8, frame.x1 - 8)  # noqa: E731
    sy = lambda y: _scale(y, y_lo, y_hi, frame.y0, frame.y1)  # noqa: E731
    x_ticks = [(sx(t), _fmt_tick(t)) for t in x_tick_values if x_lo <= t <= x_hi]
    y_ticks = [(sy(t), _fmt_tick(t)) for t in nice_ticks(y_lo, y_hi)]
    out = frame.open(title, f"{title}: {len(drawn)} curve(s)")
    out += frame.axes(x_ticks, y_ticks, x_label, y_label)
    for c in drawn:
        pts = [(x, y) for x, y in c.points if keep(x)]
        band = [(x, lo, hi) for x, lo, hi in c.band if keep(x)]
        out.append('<g class="series">')
        if len(band) > 1:
            upper = " ".join(f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in band)
            lower = " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(band))
            out.append(f'<polygon class="band" points="{upper} {lower}" fill="{c.color}" opacity="0.18">'
                       f"<title>{escape(c.name)}: min–max over the random subsets</title></polygon>")
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(pts))
        dash = f' stroke-dasharray="{c.dash}"' if c.dash else ""
        out.append(f'<path d="{path}" fill="none" stroke="{c.color}" stroke-width="2"{dash}/>')
        if len(pts) <= 40:
            for x, y in pts:
                out.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{c.color}">'
                           f"<title>{escape(c.name)}: {x:g}{x_unit} → {y:.1f}{y_unit}</title></circle>")
        if c.extrapolation and pts:
            ext = [pts[-1], *c.extrapolation]
            path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(ext))
            out.append(f'<path class="extrapolation" d="{path}" fill="none" stroke="{c.color}" stroke-width="1.5" '
                       f'stroke-dasharray="2 4"/>')
            x, y = c.extrapolation[-1]
            out.append(f'<circle class="extrapolated" cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="4" fill="white" '
                       f'stroke="{c.color}" stroke-width="2"><title>{escape(c.name)}: extrapolated (not measured) '
                       f"to {x:,.0f}{x_unit} → {y:.1f}{y_unit}</title></circle>")
        out.append("</g>")
    out += _legend(frame, [(c.name, c.color, c.dash) for c in drawn])
    out.append("</svg>")
    return "\n".join(out)


def pareto_chart(
    points: Sequence[Point], optimal: set[str], *, title: str, x_label: str, y_label: str, log_x: bool = False,
) -> str:
    """Labelled model points; Pareto-optimal ones drawn as filled stars-in-rings and joined by
    the front line, the others as hollow circles."""
    usable = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y) and (p.x > 0 or not log_x)]
    if not usable:
        return empty_chart(f"{title}: no data")
    frame = _Frame(560, 340, left=58, right=24, top=16, bottom=46)
    xs, ys = [p.x for p in usable], [p.y for p in usable]
    if log_x:
        lo, hi, tx, ticks = min(xs) / 1.5, max(xs) * 1.5, math.log10, log_ticks(min(xs) / 1.5, max(xs) * 1.5)
    else:
        span = (max(xs) - min(xs)) or max(abs(max(xs)), 1e-9)
        lo, hi, tx = max(0.0, min(xs) - 0.15 * span), max(xs) + 0.15 * span, (lambda v: v)
        ticks = nice_ticks(lo, hi)
        lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    y_lo, y_hi = _percent_range([min(ys) - 5, max(ys) + 5])
    sx = lambda v: _scale(tx(v), tx(lo), tx(hi), frame.x0 + 10, frame.x1 - 10)  # noqa: E731
    sy = lambda v: _scale(v, y_lo, y_hi, frame.y0, frame.y1)  # noqa: E731
    out = frame.open(title, f"{title}: {len(usable)} models, {len([p for p in usable if p.label in optimal])} Pareto-optimal")
    out += frame.axes([(sx(t), _fmt_tick(t)) for t in ticks if lo <= t <= hi],
                      [(sy(t), _fmt_tick(t)) for t in nice_ticks(y_lo, y_hi)], x_label, y_label)
    front = sorted((p for p in usable if p.label in optimal), key=lambda p: p.x)
    if len(front) > 1:
        path = " ".join(f"{'M' if i == 0 else 'L'}{sx(p.x):.1f},{sy(p.y):.1f}" for i, p in enumerate(front))
        out.append(f'<path class="front" d="{path}" fill="none" stroke="#59616b" stroke-width="1" stroke-dasharray="4 3"/>')
    for p in usable:
        cx, cy = sx(p.x), sy(p.y)
        anchor, dx = ("end", -9) if cx > (frame.x0 + frame.x1) / 2 else ("start", 9)
        is_opt = p.label in optimal
        mark = (f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="8" fill="none" stroke="{p.color}" stroke-width="2"/>'
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="4.5" fill="{p.color}"/>') if is_opt else (
                f'<circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="white" stroke="{p.color}" stroke-width="2"/>')
        label = _short(p.label, 24) + (" ★" if is_opt else "")
        out.append(f'<g class="point{" optimal" if is_opt else ""}">{mark}'
                   f'<text class="point-label" x="{cx + dx:.1f}" y="{cy - 9:.1f}" text-anchor="{anchor}">'
                   f"{escape(label)}</text><title>{escape(p.tooltip or p.label)}"
                   f"{' (Pareto-optimal)' if is_opt else ''}</title></g>")
    out.append("</svg>")
    return "\n".join(out)
