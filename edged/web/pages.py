"""The web page's HTML: server-rendered, escaped, a few lines of script.

Without JavaScript every page still shows each camera's state, reason and
numbers, and a picture as of the page load (the page reloads itself every
``RELOAD`` seconds). With it, each picture is replaced a few times a second
(``[web] max_fps``) while the page is visible, and a camera page draws the
processor's boxes over the picture; nothing is fetched while the tab is
hidden. Zones and masks are drawn by the server as an SVG over the picture
in relative coordinates (``viewBox="0 0 1 1"``), the same numbers the config
holds: a user places a zone by looking.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any
from urllib.parse import quote

from edged import __version__
from edged.regions import Region

RELOAD = 10  # seconds between reloads of the whole page (its text)

_STYLE = """
body{font-family:system-ui,sans-serif;margin:0;background:#111;color:#eee}
header{padding:.6em 1em;background:#222;display:flex;gap:1em;align-items:baseline;flex-wrap:wrap}
header h1{font-size:1.2em;margin:0}a{color:#8cf}main{padding:1em}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1em}
.card{background:#1c1c1c;border-radius:8px;overflow:hidden}
.card h2{font-size:1.05em;margin:.5em .7em}.card dl{display:grid;grid-template-columns:auto 1fr;
gap:.15em .8em;margin:.5em .7em .8em;font-size:.9em}dt{color:#999}dd{margin:0}
.pic{position:relative;background:#000;aspect-ratio:16/9;display:flex;align-items:center;
justify-content:center}.pic img{width:100%;height:100%;object-fit:contain;display:block}
.pic svg{position:absolute;inset:0;width:100%;height:100%}
.down{color:#fb4;padding:1em;text-align:center}.state-streaming{color:#6d6}
.state-failed,.state-stalled,.state-reconnecting,.state-restarting{color:#fb4}
table{border-collapse:collapse;width:100%;font-size:.85em}td,th{padding:.3em .5em;
border-bottom:1px solid #333;text-align:left;vertical-align:top}td code{word-break:break-all}
.thumb{width:120px}footer{padding:1em;color:#777;font-size:.8em}
"""

_SCRIPT = """
(function(){
  const period = %(period)d;
  function refresh(img){
    if (img.dataset.busy) return;
    img.dataset.busy = 1;
    const next = new Image();
    next.onload = function(){ img.src = next.src; delete img.dataset.busy;
      img.dataset.frames = (parseInt(img.dataset.frames || "0") + 1); };
    next.onerror = function(){ delete img.dataset.busy; };
    next.src = img.dataset.live + (img.dataset.live.includes("?") ? "&" : "?") + "t=" + Date.now();
  }
  function overlay(svg){
    if (svg.dataset.busy) return;
    svg.dataset.busy = 1;
    fetch(svg.dataset.overlay, {cache: "no-store"}).then(function(r){ return r.json(); })
      .then(function(o){
        const g = svg.querySelector("g.boxes"); const ns = "http://www.w3.org/2000/svg";
        g.replaceChildren();
        (o.boxes || []).forEach(function(b){
          const r = document.createElementNS(ns, "rect");
          r.setAttribute("x", b.box[0]); r.setAttribute("y", b.box[1]);
          r.setAttribute("width", Math.max(0, b.box[2] - b.box[0]));
          r.setAttribute("height", Math.max(0, b.box[3] - b.box[1]));
          r.setAttribute("class", "box"); g.appendChild(r);
          const t = document.createElementNS(ns, "text");
          t.setAttribute("x", b.box[0]); t.setAttribute("y", Math.max(0.03, b.box[1] - 0.01));
          t.textContent = (b.label || "") + (b.score != null ? " " + b.score.toFixed(2) : "");
          g.appendChild(t);
        });
        svg.dataset.boxes = (o.boxes || []).length;
      }).catch(function(){}).finally(function(){ delete svg.dataset.busy; });
  }
  function tick(){
    if (document.visibilityState !== "visible") return;
    document.querySelectorAll("img[data-live]").forEach(refresh);
    document.querySelectorAll("svg[data-overlay]").forEach(overlay);
  }
  setInterval(tick, period);
})();
"""


@dataclasses.dataclass(frozen=True)
class Card:
    """One camera as a card shows it (every value already measured)."""

    name: str
    state: str
    reason: str
    processor: str
    fps: float
    frame_age: float  # seconds, inf when none yet
    skipped: float  # fraction of decoded frames the processor never saw
    events_hour: int
    width: int
    height: int
    shown: bool  # its pictures may be shown ([cameras.NAME] web)


def _page(title: str, body: str, period_ms: int) -> bytes:
    head = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f'<meta http-equiv=refresh content="{RELOAD}">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>"
    )
    script = f"<script>{_SCRIPT % {'period': period_ms}}</script>"
    foot = (
        f'<footer>edged {escape(__version__)} · <a href="/metrics">/metrics</a> · '
        '<a href="/readyz">/readyz</a> · <a href="/healthz">/healthz</a></footer>'
    )
    return (head + body + foot + script + "</body></html>").encode()


def _age(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "no frame yet"
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.0f} s"


def _picture(card: Card, width: int, overlay: str = "") -> str:
    name = quote(card.name)
    if not card.shown:
        return '<div class="pic"><div class="down">not shown here (web = false)</div></div>'
    if card.state != "streaming":
        why = f"{card.state}: {card.reason}" if card.reason else card.state
        return f'<div class="pic"><div class="down">{escape(why)}</div></div>'
    src = f"/cameras/{name}/frame.jpg" + (f"?width={width}" if width else "")
    alt = f"{card.name}, newest frame"
    img = f'<img src="{src}" data-live="{src}" alt="{escape(alt)}">'
    return f'<div class="pic">{img}{overlay}</div>'


def _facts(card: Card) -> str:
    rows = [
        ("state", f'<span class="state-{escape(card.state)}">{escape(card.state)}</span>'),
        *([("why", escape(card.reason))] if card.reason else []),
        ("processor", escape(card.processor)),
        ("fps", f"{card.fps:.1f}" + (f" at {card.width}x{card.height}" if card.width else "")),
        ("frame age", _age(card.frame_age)),
        ("skipped", f"{card.skipped * 100:.0f} %"),
        ("events, last hour", str(card.events_hour)),
    ]
    return "<dl>" + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def index(cards: Sequence[Card], node: str, period_ms: int) -> bytes:
    """The cards of every camera."""
    items = [
        f'<section class="card" id="camera-{escape(c.name)}"><a href="/cameras/{quote(c.name)}">'
        f"<h2>{escape(c.name)}</h2></a>{_picture(c, 480)}{_facts(c)}</section>"
        for c in cards
    ]
    body = (
        f"<header><h1>edged</h1><span>{escape(node)}</span>"
        f"<span>{len(cards)} camera(s)</span></header>"
        f'<main><div class="grid">{"".join(items)}</div></main>'
    )
    return _page(f"edged {node}", body, period_ms)


def _polygons(regions: Iterable[Region], kind: str) -> str:
    out = []
    for region in regions:
        points = " ".join(f"{x:.4f},{y:.4f}" for x, y in region.points)
        x, y = region.points[0]
        out.append(
            f'<polygon class="{kind}" points="{points}"><title>{kind} {escape(region.name)}'
            f'</title></polygon><text class="{kind}" x="{x + 0.01:.4f}" y="{max(y, 0.05):.4f}">'
            f"{escape(region.name)}</text>"
        )
    return "".join(out)


def overlay_svg(name: str, zones: Sequence[Region], masks: Sequence[Region]) -> str:
    """The SVG over a camera's picture: zones, masks, and a group for live boxes."""
    style = (
        "<style>.zone{fill:rgba(60,140,255,.18);stroke:#3c8cff;stroke-width:.004}"
        ".mask{fill:rgba(0,0,0,.55);stroke:#888;stroke-width:.003}"
        ".box{fill:none;stroke:#2f2;stroke-width:.005}"
        "text{font-size:.035px;fill:#fff;paint-order:stroke;stroke:#000;stroke-width:.006}"
        "</style>"
    )
    return (
        f'<svg viewBox="0 0 1 1" preserveAspectRatio="none" '
        f'data-overlay="/cameras/{quote(name)}/overlay.json">{style}'
        f'{_polygons(masks, "mask")}{_polygons(zones, "zone")}<g class="boxes"></g></svg>'
    )


def _when(record: dict[str, Any]) -> str:
    text = str(record.get("time", ""))
    try:
        return dt.datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return text


def camera(
    card: Card,
    zones: Sequence[Region],
    masks: Sequence[Region],
    events: Sequence[dict[str, Any]],
    period_ms: int,
) -> bytes:
    """One camera: its picture with zones, masks and boxes, its numbers, its recent events."""
    overlay = overlay_svg(card.name, zones, masks) if card.shown else ""
    rows = []
    for record in reversed(events):
        data = json.dumps(record.get("data", {}), ensure_ascii=False)
        if len(data) > 400:
            data = data[:400] + "…"
        shot = record.get("snapshot")
        thumb = ""
        if card.shown and isinstance(shot, str) and "/" in shot:
            src = f"/cameras/{quote(card.name)}/snapshots/{quote(shot.rsplit('/', 1)[1])}"
            thumb = f'<a href="{src}"><img class="thumb" src="{src}" alt="snapshot"></a>'
        rows.append(
            f"<tr><td>{escape(_when(record))}</td><td>{escape(str(record.get('type', '')))}</td>"
            f"<td><code>{escape(data)}</code></td><td>{thumb}</td></tr>"
        )
    table = (
        "<table><tr><th>time (UTC)</th><th>type</th><th>data</th><th>snapshot</th></tr>"
        + "".join(rows)
        + "</table>"
        if rows
        else "<p>No events since edged started.</p>"
    )
    body = (
        f'<header><h1><a href="/">edged</a> / {escape(card.name)}</h1></header><main>'
        f'<section class="card">{_picture(card, 0, overlay)}{_facts(card)}</section>'
        f"<h2>Recent events</h2>{table}</main>"
    )
    return _page(f"edged {card.name}", body, period_ms)
