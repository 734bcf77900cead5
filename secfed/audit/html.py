"""Render a privacy-budget audit report as one self-contained HTML page for a compliance office.

Why it is built this way:

* **One file, nothing external.** Reports are archived, e-mailed and opened years later, possibly on
  machines without network access; they must look the same everywhere. So the page has inline CSS
  only (``templates/report.css``, included by the template), no fonts, no scripts, no images: plots are
  inline SVG (:mod:`secfed.audit.charts`), and a Content-Security-Policy ``<meta>`` forbids the browser
  from loading anything (or running any script) even if a string slipped through.
* **The layout is a template, the content is Python.** The page skeleton (head, contents, numbered
  sections, footer) is ``templates/report.html.j2``; what each section says is decided in
  :mod:`secfed.audit.sections`, one module per concern, which is where the report is read.
* **Every string from the report is escaped.** Reports quote data written by other parties
  (institution ids, refusal reasons, library names); none of it may become markup. The template is
  rendered with autoescaping on, so a report string it places itself (the title, the footer) is
  escaped; the header, summary and section bodies are HTML the section builders made, escaping every
  report string they used, and are marked safe explicitly here and nowhere else.
* **Missing parts are normal.** A section with nothing to show is left out, numbering and contents
  included; the JSON, not this page, is the signed artefact.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from secfed.audit.fields import as_map, as_text
from secfed.audit.sections.facts import derive_facts
from secfed.audit.sections.guarantee import render_empirical_audit, render_guarantee, render_not_covered
from secfed.audit.sections.privacy import (
    render_federation_privacy,
    render_institution_privacy,
    render_mechanism,
)
from secfed.audit.sections.provenance import render_identification, render_ledgers
from secfed.audit.sections.rounds import render_coreset, render_learned, render_secure_aggregation
from secfed.audit.sections.summary import render_header, render_summary

__all__ = ["render_html"]

_ENV = Environment(
    loader=PackageLoader("secfed.audit", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    # The page is written without whitespace between tags; these let the template have lines.
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)


def _built(html: str) -> Markup:
    """Mark HTML from :mod:`secfed.audit.sections` safe: the one place the template is told not to escape.

    Only output of the section builders comes here; they escape every report string they use.
    """
    return Markup(html)  # noqa: S704 - the section builders escaped every report string


@dataclass(frozen=True)
class _Section:
    """A numbered section of the page; ``body`` is HTML built by :mod:`secfed.audit.sections`."""

    anchor: str
    heading: str
    body: Markup


def render_html(report: Mapping[str, Any]) -> str:
    """The report as one self-contained HTML5 document (inline CSS and SVG, nothing loaded, no script)."""
    facts = derive_facts(report)
    privacy = (
        render_federation_privacy(report)
        if facts.kind == "federation"
        else render_institution_privacy(report, facts)
    )
    candidates = [
        ("identification", "Identification", render_identification(report)),
        ("guarantee", "The guarantee", render_guarantee(report)),
        ("mechanism", "Mechanism: differentially private training", render_mechanism(report)),
        ("privacy-loss", "Privacy loss", privacy),
        ("secure-aggregation", "Secure aggregation per round", render_secure_aggregation(report)),
        ("coreset", "Data selected per round", render_coreset(report)),
        ("learned", "What the server learned, per round", render_learned(report, facts)),
        ("not-covered", "What is NOT covered", render_not_covered(report)),
        ("empirical-audit", "Empirical audit", render_empirical_audit(report)),
        ("ledgers", "Ledgers and signature", render_ledgers(report)),
    ]
    ident = as_map(report.get("identification"))
    return _ENV.get_template("report.html.j2").render(
        title=facts.title,
        header=_built(render_header(report, facts)),
        summary=_built(render_summary(report, facts)),
        sections=[_Section(anchor, heading, _built(body)) for anchor, heading, body in candidates if body],
        format_name=as_text(report.get("format")) or "secfed-audit-report",
        version=as_text(report.get("version")) or "?",
        code_version=as_text(ident.get("code_version")),
    )
