"""Where the report's figures come from: the run's identification, the ledgers, and the signature.

A compliance office archives the page and may have to tie it back to a run years later: the run id, code
version, library versions and model hashes identify what ran; every ledger's head hash pins the exact
content every figure was recomputed from. The page states who signed but does not check the signature
(it cannot, without a script): it says to run ``secfed audit verify`` on the JSON, the signed record.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from secfed.audit.fields import as_list, as_map, as_maps, as_text
from secfed.audit.fmt import esc, fmt_int, fmt_time, plural
from secfed.audit.sections.blocks import hash_code, html_table, kv_table

__all__ = ["render_identification", "render_ledgers"]


def render_identification(report: Mapping[str, Any]) -> str:
    """What ran: institution, run, task, code version, model hashes and the libraries' versions."""
    ident = as_map(report.get("identification"))
    rows: list[tuple[str, str]] = []
    if report.get("kind") == "institution" and as_text(report.get("institution")):
        rows.append(("Institution", esc(report.get("institution"))))
    for key, label in (
        ("run_id", "Run id"),
        ("federation", "Federation"),
        ("task", "Task"),
        ("code_version", "Code version"),
    ):
        if as_text(ident.get(key)):
            rows.append((label, esc(ident.get(key))))
    if "rounds_completed" in ident:
        rows.append(("Rounds completed", esc(fmt_int(ident.get("rounds_completed")))))
    if "base_model_hash" in ident:
        rows.append(("Base model hash", hash_code(ident.get("base_model_hash"))))
    if "final_adapter_hash" in ident:
        rows.append(("Final adapter hash", hash_code(ident.get("final_adapter_hash"))))
    if report.get("generated_at") is not None:
        rows.append(
            (
                "Generated at",
                f'{esc(fmt_time(report.get("generated_at")))} <span class="muted">({esc(report.get("generated_at"))})</span>',
            )
        )
    libraries = as_map(ident.get("libraries"))
    lib_rows = [[esc(name), f"<code>{esc(version)}</code>"] for name, version in sorted(libraries.items())]
    libs = (
        html_table(["Library", "Version"], lib_rows, caption="Software that produced the run", cls="compact")
        if lib_rows
        else ""
    )
    if not rows and not libs:
        return ""
    return kv_table(rows) + libs


def render_ledgers(report: Mapping[str, Any]) -> str:
    """The ledgers behind every figure, the server state's integrity, and who signed the report."""
    ledgers = as_maps(report.get("ledgers"))
    signature = as_map(report.get("signature"))
    integrity = as_map(report.get("integrity"))
    parts: list[str] = []
    if ledgers:
        parts.append(
            "<p>Every figure in this report is recomputed from these append-only, hash-chained ledgers. "
            "The head hash pins each ledger's exact content at the time of the report.</p>"
        )
        rows = [
            [
                esc(as_text(x.get("name")) or "—"),
                f"<code>{esc(as_text(x.get('path')) or '—')}</code>",
                esc(fmt_int(x.get("entries"))),
                hash_code(x.get("head"), short=True),
            ]
            for x in ledgers
        ]
        parts.append(
            html_table(["Ledger", "Path", "Entries", "Head hash"], rows, numeric=[2], caption="Ledgers")
        )
    if integrity:
        problems = [esc(p) for p in as_list(integrity.get("problems")) if as_text(p)]
        if integrity.get("state_database_ok") is True and not problems:
            parts.append(
                '<p><span class="badge pass inline">✓</span> The server\'s state database passed its integrity checks.</p>'
            )
        elif problems or integrity.get("state_database_ok") is False:
            parts.append(
                '<div class="callout bad-box" role="note"><strong>The server\'s state database failed integrity checks:</strong><ul>'
                + "".join(f"<li>{p}</li>" for p in problems)
                + "</ul></div>"
            )
    if signature:
        rows_kv: list[tuple[str, str]] = []
        for key, label in (("role", "Role"), ("signer", "Signer"), ("algorithm", "Algorithm")):
            if as_text(signature.get(key)):
                rows_kv.append((label, esc(signature.get(key))))
        chain = as_text(signature.get("certificate_chain"))
        if chain:
            count = chain.count("-----BEGIN CERTIFICATE-----")
            rows_kv.append(("Certificate chain", esc(plural(count, "certificate"))))
        if as_text(signature.get("value")):
            rows_kv.append(("Signature value", hash_code(signature.get("value"), short=True)))
        parts.append(kv_table(rows_kv, caption="Signature", compact=True))
        parts.append(
            '<p class="muted">This page does not check the signature. To verify it against the consortium '
            "CA, check every ledger's hash chain and recompute ε from the ledgers, run "
            "<code>secfed audit verify</code> on the report's JSON file.</p>"
        )
    return "".join(parts)
