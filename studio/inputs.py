"""What a person or an API client sends, checked before anything runs: ids, JSON arguments, clicks, boxes,
rankings, ratings and the limits on each (one place, so the UI and the named API refuse the same things).

Every refusal is a `StudioError` whose text is shown as it is: it names the bad value and the limit, never a
file name, an identifier or anything about another person's cases.
"""
from __future__ import annotations

import json
from typing import Any

MAX_CANDIDATES = 8
MAX_QUESTION_CHARS = 500
MAX_CLICKS = 64                 # per /refine call (and per correction): more holds the refine slot for everyone
MAX_REASONING_CHARS = 4_000     # edited reasoning (the model writes a few hundred characters)
MAX_REASON_CHARS = 2_000        # a reviewer's reason
MAX_COMMENT_CHARS = 2_000
MAX_JSON_CHARS = 64_000         # any JSON argument (rankings, ratings, clicks) before it is parsed


class StudioError(ValueError):
    """Something the person can fix, with a message for them (str(e) is shown; no file names, no identifiers)."""


def as_int(value: Any, what: str) -> int:
    """A whole number (an id, a count) or a StudioError naming what it should have been."""
    try:
        if isinstance(value, bool):
            raise ValueError
        if isinstance(value, float) and not value.is_integer():
            raise ValueError
        return int(value)
    except (TypeError, ValueError, OverflowError):
        raise StudioError(f"the {what} must be a whole number, got {str(value)[:40]!r}") from None


def json_arg(value: Any, what: str, default: Any) -> Any:
    """JSON strings (what API clients send) or already-parsed values; '' or None gives the default."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    if isinstance(value, str):
        if len(value) > MAX_JSON_CHARS:
            raise StudioError(f"{what} is {len(value):,} characters long; the limit is {MAX_JSON_CHARS:,}")
        try:
            return json.loads(value)
        except (json.JSONDecodeError, RecursionError) as exc:
            raise StudioError(f"{what} is not valid JSON ({getattr(exc, 'msg', 'too deeply nested')})") from None
    return value


def text_arg(value: Any, what: str, limit: int) -> str | None:
    """Stripped text within `limit` characters, or None when empty."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise StudioError(f"{what} must be text")
    value = value.strip()
    if len(value) > limit:
        raise StudioError(f"{what} is {len(value):,} characters long; the limit is {limit:,}.")
    return value or None


def candidate_count(n: Any, default: int) -> int:
    """How many candidates to ask for: 1 … MAX_CANDIDATES; nothing sent means the default, 0 is an error."""
    if n is None or (isinstance(n, str) and not n.strip()):
        return default
    n = as_int(n, "number of candidates")
    if not 1 <= n <= MAX_CANDIDATES:
        raise StudioError(f"Ask for 1 to {MAX_CANDIDATES} candidates (got {n}).")
    return n


def parse_clicks(clicks: Any, height: int, width: int) -> list[tuple[int, int, int]]:
    """[[x, y, 1|0], …] (JSON or list) → validated clicks inside the scan, at most MAX_CLICKS."""
    clicks = json_arg(clicks, "clicks", [])
    if not isinstance(clicks, list):
        raise StudioError("clicks must be a list of [x, y, label] (label 1 = positive, 0 = negative)")
    if len(clicks) > MAX_CLICKS:
        raise StudioError(f"{len(clicks):,} clicks sent; at most {MAX_CLICKS} per refinement.")
    out = []
    for i, click in enumerate(clicks):
        if isinstance(click, dict):
            click = [click.get("x"), click.get("y"), click.get("label", 1)]
        if not isinstance(click, (list, tuple)) or len(click) not in (2, 3):
            raise StudioError(f"click {i} must be [x, y, label]")
        x, y = click[0], click[1]
        label = click[2] if len(click) == 3 else 1
        try:
            x, y = float(x), float(y)
        except (TypeError, ValueError):
            raise StudioError(f"click {i} has non-numeric coordinates") from None
        if label not in (0, 1, True, False):
            raise StudioError(f"click {i}: the label must be 1 (positive) or 0 (negative)")
        if not (0 <= x < width and 0 <= y < height):
            raise StudioError(f"click {i} at ({x:g}, {y:g}) is outside the {width}×{height} scan")
        out.append((int(x), int(y), int(label)))
    return out


def parse_box(box: Any, height: int, width: int) -> tuple[int, int, int, int] | None:
    """[x1, y1, x2, y2] (exclusive ends, scan pixels) or None."""
    box = json_arg(box, "box", None)
    if box is None or box == []:
        return None
    if not isinstance(box, (list, tuple)) or len(box) != 4:
        raise StudioError("box must be [x1, y1, x2, y2]")
    try:
        x1, y1, x2, y2 = (int(round(float(v))) for v in box)
    except (TypeError, ValueError, OverflowError):
        raise StudioError("box coordinates must be finite numbers") from None
    x1, x2 = sorted((x1, x2))
    y1, y2 = sorted((y1, y2))
    x1, y1, x2, y2 = max(0, x1), max(0, y1), min(width, x2), min(height, y2)
    if x2 - x1 < 1 or y2 - y1 < 1:
        raise StudioError(f"the box is empty or outside the {width}×{height} scan")
    return x1, y1, x2, y2


def parse_ranking(value: Any) -> dict[int, int]:
    """{candidate id: rank} from a dict, a JSON string, or Argilla's [{"candidate": id, "rank": r}, …]."""
    value = json_arg(value, "ranking", {})
    if isinstance(value, list):
        try:
            value = {item["candidate"]: item["rank"] for item in value}
        except (TypeError, KeyError):
            raise StudioError('ranking must be {"candidate id": rank} or [{"candidate": id, "rank": r}]') from None
    if not isinstance(value, dict):
        raise StudioError('ranking must be {"candidate id": rank}')
    out = {}
    for key, rank in value.items():
        if rank in (None, "", "–"):
            continue
        out[as_int(key, "ranked candidate id")] = as_int(rank, "rank")
    return out


def parse_ratings(value: Any) -> dict[int, dict[str, int]]:
    """{candidate id: {scale: value}} from a dict or JSON string; unset (None/'') values are left out."""
    value = json_arg(value, "ratings", {})
    if not isinstance(value, dict):
        raise StudioError('ratings must be {"candidate id": {"scale": value}}')
    out: dict[int, dict[str, int]] = {}
    for key, scales in value.items():
        if not isinstance(scales, dict):
            raise StudioError(f"ratings of candidate {str(key)[:20]} must be {{scale: value}}")
        kept = {str(s)[:40]: as_int(v, f"{str(s)[:40]} rating") for s, v in scales.items() if v not in (None, "")}
        if kept:
            out[as_int(key, "rated candidate id")] = kept
    return out


def window_spec(window: str | None, level: float | None, width: float | None):
    """A preset name, (level, width) for 'custom', or None for the scan's own default."""
    if window in (None, "", "default"):
        return None
    if window == "custom":
        if level is None or width is None:
            raise StudioError("Give a window level and width for the custom window.")
        try:
            level, width = float(level), float(width)
        except (TypeError, ValueError):
            raise StudioError("The window level and width must be numbers.") from None
        if not width > 0 or width != width or abs(level) == float("inf") or width == float("inf"):
            raise StudioError("The window width must be a positive finite number.")
        return (level, width)
    if not isinstance(window, str):
        raise StudioError("window must be a preset name or 'custom'")
    return window
