"""The sections of the audit page, one module per concern, each returning already-escaped HTML.

Every function here takes the report as parsed JSON and returns an HTML fragment for
:mod:`secfed.audit.html` to place in the page, or ``""`` when the report has nothing for it: a run without
DP, without an empirical audit or without coreset selection simply has fewer sections. Reports quote data
written by other parties (institution ids, refusal reasons, library names); every such string goes
through :func:`secfed.audit.fmt.esc` before it meets markup, and every field is read with
:mod:`secfed.audit.fields`, so a wrongly typed value is skipped rather than crashing the page.
"""
