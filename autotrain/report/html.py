"""The report's one page: a self-contained HTML file (images embedded as data: URIs, inline
CSS, no script, no network), so it opens anywhere and can be mailed as one file."""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from html import escape

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1540px; padding: 0 16px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; } h2 { font-size: 17px; margin-top: 28px;
     border-bottom: 1px solid #ddd; padding-bottom: 4px; }
.sub { color: #666; margin-top: 0; }
.facts { display: flex; flex-wrap: wrap; gap: 10px; margin: 14px 0; }
.fact { border: 1px solid #ddd; border-radius: 6px; padding: 8px 14px; background: #fafafa; }
.fact b { display: block; font-size: 20px; } .fact span { color: #666; font-size: 12px; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: 3px 9px; text-align: right; }
th { background: #f3f3f3; } tr.best td { background: #fff4d6; font-weight: 600; }
td.k { text-align: left; color: #555; }
pre { background: #f6f6f6; border: 1px solid #e4e4e4; padding: 10px; font-size: 12px; overflow-x: auto; }
.cols { display: flex; flex-wrap: wrap; gap: 28px; align-items: flex-start; }
footer { color: #888; font-size: 12px; margin-top: 30px; }
"""


@dataclass
class Picture:
    title: str
    file_name: str
    png: bytes
    caption: str = ""


def _img(p: Picture) -> str:
    data = base64.b64encode(p.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(p.title)}">'
            + (f"<figcaption>{escape(p.caption)}</figcaption>" if p.caption else "") + "</figure>")


def _num(v, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return escape(str(v))


def _history_table(history: list[dict], best: int | None) -> str:
    cols = [("epoch", "epoch", 0), ("train loss", "train_loss", 4), ("train acc", "train_acc", 4),
            ("val loss", "val_loss", 4), ("val acc", "val_acc", 4), ("lr", "lr", 6),
            ("img/s", "images_per_s", 1), ("seconds", "seconds", 2)]
    head = "".join(f"<th>{c}</th>" for c, _, _ in cols)
    body = []
    for row in history:
        cls = ' class="best"' if row["epoch"] == best else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_num(row.get(k), d)}</td>" for _, k, d in cols) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _key_values(pairs: list[tuple[str, str]]) -> str:
    return "<table>" + "".join(f'<tr><td class="k">{escape(k)}</td><td style="text-align:left">{escape(v)}</td></tr>'
                               for k, v in pairs) + "</table>"


def render_page(*, title: str, subtitle: str, facts: list[tuple[str, str]], pictures: list[Picture],
                history: list[dict], best: int | None, config_text: str, checkpoint: list[tuple[str, str]],
                machine: list[tuple[str, str]], footer: str) -> str:
    """The whole page as text. ``facts``: headline (value, label) boxes; ``checkpoint`` and
    ``machine``: (name, value) rows; everything given is escaped here."""
    fact_html = "".join(f'<div class="fact"><b>{escape(v)}</b><span>{escape(k)}</span></div>' for k, v in facts)
    sections = [f"<h2>{escape(p.title)}</h2>{_img(p)}" for p in pictures]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)}</title><style>{_CSS}</style></head>
<body>
<h1>{escape(title)}</h1>
<p class="sub">{escape(subtitle)}</p>
<div class="facts">{fact_html}</div>
{''.join(sections)}
<h2>Summary (metrics.csv)</h2>
{_history_table(history, best)}
<div class="cols">
<div><h2>Checkpoint</h2>{_key_values(checkpoint)}</div>
<div><h2>Machine and versions</h2>{_key_values(machine)}</div>
</div>
<h2>Effective config</h2>
<pre>{escape(config_text)}</pre>
<footer>{escape(footer)}</footer>
</body></html>
"""
