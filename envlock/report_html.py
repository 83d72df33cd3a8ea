"""A report as one self-contained HTML page (`--format html -o FILE`): the causes, every finding, the locks side by
side and a filter by severity. No external assets: the page opens from a file, offline. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from envlock.findings import Report
from envlock.report import render_text

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em; color: #1f2328; }
h1 { font-size: 1.3em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.verdict.ok { color: #1a7f37; } .verdict.bad { color: #cf222e; } .verdict.warn { color: #9a6700; }
table { border-collapse: collapse; width: 100%; margin: .5em 0; }
th, td { text-align: left; padding: .3em .6em; border-bottom: 1px solid #d0d7de; vertical-align: top; }
td.value { font-family: ui-monospace, monospace; overflow-wrap: anywhere; }
td.path { white-space: nowrap; }
tr.cause td { background: #f6f8fa; font-weight: 600; }
tr.follows td.path { padding-left: 2em; }
.error { color: #cf222e; } .warn { color: #9a6700; }
.fix { color: #57606a; font-weight: normal; }
.side { display: flex; gap: 2em; } .side pre { flex: 1; background: #f6f8fa; padding: 1em; overflow: auto; }
"""

SCRIPT = """
(function () {
  var boxes = document.querySelectorAll('input[data-severity]');
  function apply() {
    var shown = {};
    boxes.forEach(function (b) { shown[b.dataset.severity] = b.checked; });
    document.querySelectorAll('tbody[data-severity]').forEach(function (group) {
      group.hidden = !shown[group.dataset.severity];
    });
  }
  boxes.forEach(function (b) { b.addEventListener('change', apply); });
  apply();
  document.body.dataset.ready = 'yes';
})();
"""


def render_html(report: Report, *, title: str = "verify", sides: Sequence[tuple[str, Sequence[str]]] = ()) -> str:
    """The page. `sides`: (name, summary lines) of each lock, shown side by side (a diff's two locks)."""
    verdict = render_text(report, title=title)[0]
    kind = "ok" if report.ok and not report.warnings else "warn" if report.ok else "bad"
    a, b = ("A", "B") if report.other else ("lock", "now")
    rows = []
    for cause in report.causes:
        level = "error" if cause.severity == "error" else "warn"
        fix = f'<div class="fix">{escape(cause.fix)}</div>' if cause.fix else ""
        body = [f'<tr class="cause"><td colspan="4"><span class="{level}">{escape(level)}</span> '
                f"{escape(cause.headline)}{fix}</td></tr>"]
        for i, f in enumerate(cause.findings):
            css = "follows" if i >= cause.roots else "root"
            body.append(f'<tr class="{css}"><td class="path value">{escape(f.path)}</td>'
                        f'<td class="{escape(f.severity)}">{escape(f.severity)}</td>'
                        f'<td class="value">{escape(f.expected)}</td><td class="value">{escape(f.actual)}</td></tr>')
        rows.append(f'<tbody data-severity="{level}">' + "".join(body) + "</tbody>")
    notes = "".join(f"<li>{escape(n)}</li>" for n in (*report.notes, *(
        [f"not checked ({report.skipped_because}): {', '.join(report.skipped)}"] if report.skipped else []),
        *([f"policy: {', then '.join(report.sources)}"] if len(report.sources) > 1 else [])))
    table = (f'<table><thead><tr><th>path</th><th>severity</th><th>{a}</th><th>{b}</th></tr></thead>'
             + "".join(rows) + "</table>") if rows else "<p>No findings.</p>"
    filters = ('<p>Show: <label><input type="checkbox" data-severity="error" checked> errors</label> '
               '<label><input type="checkbox" data-severity="warn" checked> warnings</label></p>') if rows else ""
    side = ""
    if sides:
        side = "<h2>The locks</h2><div class=\"side\">" + "".join(
            f"<pre><b>{escape(name)}</b>\n{escape(chr(10).join(lines))}</pre>" for name, lines in sides) + "</div>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(verdict)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>{STYLE}</style></head>
<body><h1 class="verdict {kind}">{escape(verdict)}</h1>
{f"<ul>{notes}</ul>" if notes else ""}{filters}{table}{side}
<script>{SCRIPT}</script></body></html>
"""
