"""A small server-rendered SVG bar chart of allowed/denied decisions per hour.

Plain SVG (no script, no inline style attribute values beyond presentation attributes), served
as ``image/svg+xml`` from the app's own origin, so it satisfies ``img-src 'self'``. Every label is
escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 720, 180
LEFT, RIGHT, TOP, BOTTOM = 44, 10, 24, 28
ALLOW_COLOUR = "#3c8d5a"
DENY_COLOUR = "#c0392b"
TEXT = "#444"


def _nice_max(value: int) -> int:
    """The smallest 1, 2 or 5 × 10^n at or above ``value`` (the top of the axis)."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if step * magnitude >= value:
                return step * magnitude
        magnitude *= 10


def hourly_svg(buckets: Sequence[tuple[float, int, int]], title: str) -> str:
    """``buckets`` = (hour start epoch, allowed, denied), oldest first → an SVG document."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    peak = _nice_max(max((a + d for _t, a, d in buckets), default=0) or 1)
    slot = plot_w / max(len(buckets), 1)
    bar = max(slot * 0.8, 1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title, {chr(34): "&quot;"})}">',
        f"<title>{escape(title)}</title>",
        f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#fff"/>',
        f'<text x="{LEFT}" y="14" font-family="sans-serif" font-size="12" fill="{TEXT}">{escape(title)}</text>',
        f'<rect x="{WIDTH - 170}" y="5" width="10" height="10" fill="{ALLOW_COLOUR}"/>'
        f'<text x="{WIDTH - 155}" y="14" font-family="sans-serif" font-size="11" fill="{TEXT}">allowed</text>'
        f'<rect x="{WIDTH - 95}" y="5" width="10" height="10" fill="{DENY_COLOUR}"/>'
        f'<text x="{WIDTH - 80}" y="14" font-family="sans-serif" font-size="11" fill="{TEXT}">denied</text>',
    ]
    for fraction in (0.0, 0.5, 1.0):
        y = TOP + plot_h - fraction * plot_h
        label = int(peak * fraction)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-family="sans-serif" '
                     f'font-size="10" fill="{TEXT}">{label}</text>')  # fmt: skip
    label_every = max(1, len(buckets) // 8)
    for index, (start, allowed, denied) in enumerate(buckets):
        x = LEFT + index * slot + (slot - bar) / 2
        hour = datetime.fromtimestamp(start, UTC).strftime("%d %H:00")
        allowed_h, denied_h = allowed / peak * plot_h, denied / peak * plot_h
        base = TOP + plot_h
        tip = escape(f"{hour} UTC: {allowed} allowed, {denied} denied")
        parts.append(f"<g><title>{tip}</title>")
        if allowed:
            parts.append(f'<rect x="{x:.1f}" y="{base - allowed_h:.1f}" width="{bar:.1f}" '
                         f'height="{allowed_h:.1f}" fill="{ALLOW_COLOUR}"/>')  # fmt: skip
        if denied:
            parts.append(f'<rect x="{x:.1f}" y="{base - allowed_h - denied_h:.1f}" width="{bar:.1f}" '
                         f'height="{denied_h:.1f}" fill="{DENY_COLOUR}"/>')  # fmt: skip
        parts.append("</g>")
        if index % label_every == 0:
            parts.append(f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - 10}" text-anchor="middle" '
                         f'font-family="sans-serif" font-size="10" fill="{TEXT}">{escape(hour)}</text>')  # fmt: skip
    parts.append("</svg>")
    return "\n".join(parts)
