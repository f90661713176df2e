"""The sandbox's HTML page: what a person sees at ``/``."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

#: Longer values are cut, whole in a tooltip: a 3,000-character subject wrapped in full
#: would fill screens of the page with one cell.
SHOWN_CHARS = 300


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S")


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _text(value: object, limit: int = SHOWN_CHARS) -> str:
    text = str(value)
    if len(text) <= limit:
        return html.escape(text)
    return f'<span title="{html.escape(text)}">{html.escape(text[:limit])}…</span>'


def _incident_rows(incidents: list[dict[str, Any]]) -> str:
    if not incidents:
        return '<tr><td colspan="6" class="empty">No incidents yet.</td></tr>'
    rows = []
    for inc in reversed(incidents):
        timeline = "".join(
            f"<li>{_when(t['at'])} {_text(t['action'])}</li>" for t in inc["timeline"]
        )
        rows.append(
            "<tr>"
            f"<td>{html.escape(inc['id'])}</td>"
            f'<td class="status {html.escape(inc["status"])}">{html.escape(inc["status"])}</td>'
            f"<td>{_text(inc['summary'])}<br><small>{_text(inc['severity'])} · "
            f"{_text(inc['source'])} · key {html.escape(inc['routing_key'])}</small></td>"
            # Shown whole (PagerDuty caps it at 255): it is what people copy to ack or resolve.
            f"<td><code>{html.escape(inc['dedup_key'])}</code></td>"
            f"<td>{_count(inc['event_count'], 'event')}<br>"
            f"<small>{_count(inc['alert_count'], 'alert')}</small></td>"
            f"<td><ul>{timeline}</ul></td>"
            "</tr>"
        )
    return "".join(rows)


def render_index(
    incidents: list[dict[str, Any]],
    event_count: int,
    settings: dict[str, Any],
    extra_sections: str = "",
) -> str:
    """The whole page; refreshes itself every five seconds."""
    limit = (
        f"{_count(settings['rate_limit'], 'event')} per {settings['rate_window']:g}s per key"
        if settings["rate_limit"]
        else "off"
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>GDS Notification sandbox</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; color: #222; }}
table {{ border-collapse: collapse; width: 100%; table-layout: fixed; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .4rem; text-align: left; vertical-align: top; }}
/* One unbroken value (a key, an address, a subject) must not widen the page sideways. */
td, p {{ overflow-wrap: anywhere; }}
pre {{ white-space: pre-wrap; overflow-wrap: anywhere; margin: 0; }}
.status.triggered {{ color: #b00020; font-weight: bold; }}
.status.acknowledged {{ color: #b26a00; font-weight: bold; }}
.status.resolved {{ color: #1b7f3b; }}
.empty {{ color: #888; }}
ul {{ margin: 0; padding-left: 1rem; }}
</style></head>
<body>
<h1>GDS Notification sandbox</h1>
<p>PagerDuty Events API v2 emulator at <code>/v2/enqueue</code> ·
{_count(event_count, "request")} received · rate limit {html.escape(limit)} ·
Retry-After {"on" if settings["retry_after"] else "off"} ·
JSON: <a href="/sandbox/incidents">incidents</a>, <a href="/sandbox/events">events</a>,
<a href="/sandbox/faults">faults</a></p>
<h2>Incidents</h2>
<table id="incidents">
<colgroup><col style="width: 9rem"><col style="width: 7.5rem"><col><col style="width: 22%">
<col style="width: 6rem"><col style="width: 11rem"></colgroup>
<thead><tr><th>Incident</th><th>Status</th><th>Summary</th><th>Dedup key</th>
<th>Events</th><th>Timeline</th></tr></thead>
<tbody>{_incident_rows(incidents)}</tbody></table>
{extra_sections}
</body></html>"""


def render_messages(messages: list[dict[str, Any]]) -> str:
    """The mail section: what the SMTP sink kept, newest first."""
    if not messages:
        rows = '<tr><td colspan="5" class="empty">No mail yet.</td></tr>'
    else:
        rows = "".join(
            "<tr>"
            f"<td>{_when(m['at'])}</td>"
            f"<td>{_text(', '.join(m['rcpt_tos']))}</td>"
            f"<td>{_text(m['subject'])}<br><small>{_text(m['message_id'])}</small></td>"
            f"<td><pre>{html.escape((m['text'] or '')[:500])}</pre></td>"
            f"<td>{'HTML' if m['html'] else ''}{' · TLS' if m['tls'] else ''}</td>"
            "</tr>"
            for m in reversed(messages[-200:])
        )
    return f"""<h2>Mail</h2>
<p>{_count(len(messages), "message")} · JSON: <a href="/sandbox/messages">messages</a>,
<a href="/sandbox/smtp">SMTP counters</a></p>
<table id="messages">
<colgroup><col style="width: 6rem"><col style="width: 18%"><col style="width: 30%"><col>
<col style="width: 6rem"></colgroup>
<thead><tr><th>At</th><th>To</th><th>Subject</th><th>Text</th><th></th></tr></thead>
<tbody>{rows}</tbody></table>"""
