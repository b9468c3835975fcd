"""Charts as inline SVG drawn at build time.

Why SVG at build time rather than a vendored JS chart library: the site must open from the file
system with no network, and static SVG needs no script at all (charts show with JavaScript off,
print, and are searchable text), ships no third-party code to license or update, and keeps the
package small. Interactivity is limited to native <title> tooltips on every mark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from typing import Sequence

# Okabe-Ito (colour-blind safe) then a few darker tones; dashes separate series once colours repeat.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#D55E00",
    "#CC79A7",
    "#56B4E9",
    "#8C6D31",
    "#000000",
    "#7F3C8D",
    "#11A579",
    "#3969AC",
    "#E73F74",
)
DASHES = ("", "6 3", "2 3", "8 3 2 3")


def series_style(index: int) -> tuple[str, str]:
    """(colour, dash pattern) for the index-th series; stable per model across all charts."""
    return PALETTE[index % len(PALETTE)], DASHES[(index // len(PALETTE)) % len(DASHES)]


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[tuple[float, float]]
    color: str
    dash: str = ""


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float
    color: str
    tooltip: str = ""


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        if value >= low - step * 1e-9:
            ticks.append(round(value, 10))
        value += step
    return ticks


def log_ticks(low: float, high: float) -> list[float]:
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10.0**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks or [low, high]


def _fmt_tick(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.3g}"


class _Frame:
    """Plot area geometry and the axes."""

    def __init__(self, width: int, height: int, left: int, right: int, top: int, bottom: int):
        self.width, self.height = width, height
        self.x0, self.x1 = left, width - right
        self.y0, self.y1 = height - bottom, top  # y grows downwards in SVG

    def open(self, title: str, label: str) -> list[str]:
        return [
            f'<svg class="chart" viewBox="0 0 {self.width} {self.height}" role="img" '
            f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">',
            f"<title>{escape(title)}</title>",
        ]

    def axes(
        self,
        x_ticks: Sequence[tuple[float, str]],
        y_ticks: Sequence[tuple[float, str]],
        x_label: str,
        y_label: str,
    ) -> list[str]:
        out = []
        for y, text in y_ticks:
            out.append(f'<line class="grid" x1="{self.x0}" x2="{self.x1}" y1="{y:.1f}" y2="{y:.1f}"/>')
            out.append(
                f'<text class="tick" x="{self.x0 - 6}" y="{y + 4:.1f}" text-anchor="end">'
                f"{escape(text)}</text>"
            )
        for x, text in x_ticks:
            out.append(
                f'<line class="tickmark" x1="{x:.1f}" x2="{x:.1f}" y1="{self.y0}" y2="{self.y0 + 4}"/>'
            )
            out.append(
                f'<text class="tick" x="{x:.1f}" y="{self.y0 + 17}" text-anchor="middle">'
                f"{escape(text)}</text>"
            )
        out.append(f'<line class="axis" x1="{self.x0}" x2="{self.x1}" y1="{self.y0}" y2="{self.y0}"/>')
        out.append(f'<line class="axis" x1="{self.x0}" x2="{self.x0}" y1="{self.y0}" y2="{self.y1}"/>')
        mid_x = (self.x0 + self.x1) / 2
        out.append(
            f'<text class="label" x="{mid_x:.1f}" y="{self.height - 6}" text-anchor="middle">'
            f"{escape(x_label)}</text>"
        )
        mid_y = (self.y0 + self.y1) / 2
        out.append(
            f'<text class="label" transform="translate(14 {mid_y:.1f}) rotate(-90)" text-anchor="middle">'
            f"{escape(y_label)}</text>"
        )
        return out


def _scale(value: float, lo: float, hi: float, out_lo: float, out_hi: float) -> float:
    if hi == lo:
        return (out_lo + out_hi) / 2
    return out_lo + (value - lo) / (hi - lo) * (out_hi - out_lo)


def _short(name: str, limit: int = 30) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _percent_range(values: Sequence[float]) -> tuple[float, float]:
    """A 0..100 axis range rounded to tens around the values, at least 10 wide."""
    lo = max(0.0, math.floor(min(values) / 10) * 10) if values else 0.0
    hi = min(100.0, math.ceil(max(values) / 10) * 10) if values else 100.0
    if hi - lo < 10:
        if lo + 10 <= 100:
            hi = lo + 10
        else:
            lo = hi - 10
    return lo, hi


def empty_chart(message: str, width: int = 720, height: int = 120) -> str:
    return (
        f'<svg class="chart empty" viewBox="0 0 {width} {height}" role="img" aria-label="{escape(message)}" '
        f'xmlns="http://www.w3.org/2000/svg"><text class="label" x="{width / 2}" y="{height / 2}" '
        f'text-anchor="middle">{escape(message)}</text></svg>'
    )


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, unit: str = "%") -> str:
    """Lines over integer x (e.g. Recall@K for K = 1..20), a legend on the right."""
    drawn = [s for s in series if s.points]
    if not drawn:
        return empty_chart(f"{title}: no data")
    xs = [x for s in drawn for x, _ in s.points]
    ys = [y for s in drawn for _, y in s.points]
    frame = _Frame(760, 380, left=58, right=220, top=16, bottom=46)
    x_lo, x_hi = min(xs), max(xs)
    y_lo, y_hi = _percent_range(ys)
    sx = lambda x: _scale(x, x_lo, x_hi, frame.x0 + 8, frame.x1 - 8)  # noqa: E731
    sy = lambda y: _scale(y, y_lo, y_hi, frame.y0, frame.y1)  # noqa: E731
    x_ticks = [(sx(x), f"{x:g}") for x in sorted(set(xs)) if x in (1, x_hi) or x % 5 == 0 or x_hi <= 10]
    y_ticks = [(sy(y), _fmt_tick(y)) for y in nice_ticks(y_lo, y_hi)]
    out = frame.open(title, f"{title}: line chart with {len(drawn)} series")
    out += frame.axes(x_ticks, y_ticks, x_label, y_label)
    for s in drawn:
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(s.points)
        )
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        out.append(
            f'<g class="series"><path d="{path}" fill="none" stroke="{s.color}" stroke-width="2"{dash}/>'
        )
        for x, y in s.points:
            out.append(
                f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.color}">'
                f"<title>{escape(s.name)}: {x:g} → {y:.1f}{unit}</title></circle>"
            )
        out.append("</g>")
    out += _legend(frame, [(s.name, s.color, s.dash) for s in drawn])
    out.append("</svg>")
    return "\n".join(out)


def _legend(frame: _Frame, entries: Sequence[tuple[str, str, str]]) -> list[str]:
    out = []
    x = frame.x1 + 16
    for i, (name, color, dash) in enumerate(entries):
        y = frame.y1 + 8 + i * 20
        dash_attr = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(
            f'<line x1="{x}" x2="{x + 22}" y1="{y}" y2="{y}" stroke="{color}" stroke-width="3"{dash_attr}/>'
        )
        out.append(
            f'<text class="legend" x="{x + 28}" y="{y + 4}"><title>{escape(name)}</title>'
            f"{escape(_short(name))}</text>"
        )
    return out


def scatter_chart(
    points: Sequence[Point], *, title: str, x_label: str, y_label: str, log_x: bool = False
) -> str:
    """Labelled points, e.g. R@1 against cost per 1k images or against images/s."""
    usable = [p for p in points if math.isfinite(p.x) and math.isfinite(p.y) and (p.x > 0 or not log_x)]
    if not usable:
        return empty_chart(f"{title}: no data")
    frame = _Frame(560, 340, left=58, right=24, top=16, bottom=46)
    xs, ys = [p.x for p in usable], [p.y for p in usable]
    if log_x:
        lo, hi = min(xs) / 1.5, max(xs) * 1.5
        tx = lambda v: math.log10(v)  # noqa: E731
        ticks = log_ticks(lo, hi)
    else:
        span = (max(xs) - min(xs)) or max(abs(max(xs)), 1e-9)
        lo, hi = max(0.0, min(xs) - 0.15 * span), max(xs) + 0.15 * span
        tx = lambda v: v  # noqa: E731
        ticks = nice_ticks(lo, hi)
        lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])
    y_lo, y_hi = _percent_range([min(ys) - 5, max(ys) + 5])  # room around the points for labels
    sx = lambda v: _scale(tx(v), tx(lo), tx(hi), frame.x0 + 10, frame.x1 - 10)  # noqa: E731
    sy = lambda v: _scale(v, y_lo, y_hi, frame.y0, frame.y1)  # noqa: E731
    x_ticks = [(sx(t), _fmt_tick(t)) for t in ticks if lo <= t <= hi]
    y_ticks = [(sy(t), _fmt_tick(t)) for t in nice_ticks(y_lo, y_hi)]
    out = frame.open(title, f"{title}: scatter plot of {len(usable)} models")
    out += frame.axes(x_ticks, y_ticks, x_label, y_label)
    for p in usable:
        cx, cy = sx(p.x), sy(p.y)
        anchor, dx = ("end", -8) if cx > (frame.x0 + frame.x1) / 2 else ("start", 8)
        tooltip = p.tooltip or f"{p.label}: x={p.x:g}, y={p.y:.1f}"
        out.append(
            f'<g class="point"><circle cx="{cx:.1f}" cy="{cy:.1f}" r="5" fill="{p.color}"/>'
            f'<text class="point-label" x="{cx + dx:.1f}" y="{cy - 7:.1f}" text-anchor="{anchor}">'
            f"{escape(_short(p.label, 26))}</text><title>{escape(tooltip)}</title></g>"
        )
    out.append("</svg>")
    return "\n".join(out)


def histogram_chart(
    groups: Sequence[tuple[str, Sequence[float], str]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    bins: int = 24,
) -> str:
    """Side-by-side bars of several value sets on shared bins (e.g. top-1 score of hits vs misses)."""
    drawn = [(n, [v for v in vals if math.isfinite(v)], c) for n, vals, c in groups]
    drawn = [g for g in drawn if g[1]]
    if not drawn:
        return empty_chart(f"{title}: no data")
    every = [v for _, vals, _ in drawn for v in vals]
    lo, hi = min(every), max(every)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    width = (hi - lo) / bins
    counts = []
    for _, vals, _ in drawn:
        row = [0] * bins
        for v in vals:
            row[min(bins - 1, int((v - lo) / width))] += 1
        counts.append(row)
    top = max(max(row) for row in counts)
    frame = _Frame(560, 300, left=58, right=150, top=16, bottom=46)
    sx = lambda v: _scale(v, lo, hi, frame.x0, frame.x1)  # noqa: E731
    sy = lambda v: _scale(v, 0, top, frame.y0, frame.y1)  # noqa: E731
    x_ticks = [(sx(t), _fmt_tick(t)) for t in nice_ticks(lo, hi) if lo <= t <= hi]
    y_ticks = [(sy(t), _fmt_tick(t)) for t in nice_ticks(0, top) if t == int(t)]
    out = frame.open(title, f"{title}: histogram")
    out += frame.axes(x_ticks, y_ticks, x_label, y_label)
    slot = (sx(lo + width) - sx(lo)) / len(drawn)
    for g, ((name, _, color), row) in enumerate(zip(drawn, counts)):
        for b, count in enumerate(row):
            if not count:
                continue
            x = sx(lo + b * width) + g * slot
            out.append(
                f'<rect x="{x:.1f}" y="{sy(count):.1f}" width="{max(slot - 0.5, 0.5):.1f}" '
                f'height="{frame.y0 - sy(count):.1f}" fill="{color}" opacity="0.85">'
                f"<title>{escape(name)}: {count} in [{lo + b * width:.3f}, "
                f"{lo + (b + 1) * width:.3f})</title></rect>"
            )
    out += _legend(frame, [(f"{name} ({len(vals)})", color, "") for name, vals, color in drawn])
    out.append("</svg>")
    return "\n".join(out)
