"""``secfed audit report`` and ``secfed audit verify`` over a run directory or one party's configuration.

In a deployment every party reports from its own directory: ``secfed audit report client.toml`` writes
the institution's signed report (from its ledgers, with its kit's key) to ``audit/`` beside the
configuration, and ``secfed audit report server.toml`` the coordinator's federation report (from its
state database, wherever ``state_db`` puts it). A run directory is what ``secfed simulate`` writes::

    RUN/server.toml                 [server] kit, state_db, federation_name, roster; [task] name
    RUN/state/state.sqlite          the coordinator's state and hash-chained ledger
    RUN/clients/<id>.toml           [client] kit, audit_ledger; [privacy] ledger
    RUN/clients/<id>.*.jsonl        each institution's own ledgers
    RUN/pki/ca/ca.pem               the consortium CA (verification anchor; or any kit's ca.pem)
    RUN/audit/                      reports are written here: <id>.json|html|pdf, federation.*,
                                    and empirical.json if ``secfed audit empirical --out`` put one here

Each institution's report is signed with its own client key and the federation report with the
server key: the keys of their startup kits. This module is the one place in ``secfed`` that reads
the server's state database, through a lazy import, as the CLI does.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from secfed.audit.report import (
    SELECTION_NOT_COVERED,
    ServerFacts,
    federation_guarantee,
    federation_report,
    federation_selection_covered,
    guarantee_section,
    institution_report,
    privacy_section,
    quote_institution,
    selection_dp_covered,
)
from secfed.audit.signing import SIGNATURE, AuditVerifyError, sign_document, verify_document
from secfed.chain import ChainError, HashChain
from secfed.crypto.identity import TrustAnchor
from secfed.home import default_privacy_ledger
from secfed.pki.kit import load_kit


class RunDirError(ValueError):
    """The run directory is missing something the report needs; says what and where."""


@dataclass(frozen=True)
class Institution:
    client_id: str
    kit: Path
    audit_ledger: Path | None
    privacy_ledger: Path | None


@dataclass(frozen=True)
class RunDir:
    root: Path
    server_kit: Path | None  # None: an institution's own directory (no federation report from there)
    state_db: Path | None
    federation: str
    task: str
    institutions: dict[str, Institution]

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: missing (is this a secfed run directory?)") from None
    except tomllib.TOMLDecodeError as exc:
        raise RunDirError(f"{path}: not valid TOML: {exc}") from None


def _privacy_ledger(base: Path, privacy: Mapping[str, Any], client_id: str) -> Path:
    """The ledger a client configuration's ``[privacy]`` names, else the institution's own default."""
    named = privacy.get("ledger")
    return base / str(named) if named else default_privacy_ledger(client_id)


def read_target(target: Path) -> RunDir:
    """A run directory, or the directory of one party's configuration file (client or server TOML)."""
    target = target.resolve()
    if not (target.is_file() and target.suffix == ".toml"):
        return read_run_dir(target)
    doc = _toml(target)
    base = target.parent
    if "client" in doc:
        client, privacy = doc.get("client", {}), doc.get("privacy", {})
        kit = base / str(client.get("kit", ""))
        cid = load_kit(kit).client_id
        institution = Institution(
            client_id=cid,
            kit=kit,
            audit_ledger=base / str(client.get("audit_ledger", "audit-ledger.jsonl")),
            privacy_ledger=_privacy_ledger(base, privacy, cid),
        )
        task = str(doc.get("task", {}).get("name", ""))
        return RunDir(base, None, None, "", task, {cid: institution})
    if "server" in doc:
        srv = doc["server"]
        return RunDir(
            root=base,
            server_kit=base / str(srv.get("kit", "")),
            state_db=base / str(srv.get("state_db", "state.sqlite")),  # the server config's default
            federation=str(srv.get("federation_name", "secfed")),
            task=str(doc.get("task", {}).get("name", "")),
            institutions={},
        )
    raise RunDirError(f"{target}: neither a client ([client]) nor a server ([server]) configuration")


def read_run_dir(root: Path) -> RunDir:
    server = _toml(root / "server.toml")
    srv = server.get("server", {})
    roster = srv.get("roster") or []
    if not isinstance(roster, list) or not roster:
        raise RunDirError(f"{root / 'server.toml'}: server.roster is missing")
    institutions: dict[str, Institution] = {}
    for cid in roster:
        path = root / "clients" / f"{cid}.toml"
        if not path.exists():
            continue  # an institution that keeps its own files elsewhere reports from there
        doc = _toml(path)
        client = doc.get("client", {})
        privacy = doc.get("privacy", {})
        institutions[str(cid)] = Institution(
            client_id=str(cid),
            kit=path.parent / str(client.get("kit", "")),
            audit_ledger=path.parent / str(client.get("audit_ledger", "audit-ledger.jsonl")),
            privacy_ledger=_privacy_ledger(path.parent, privacy, str(cid)),
        )
    return RunDir(
        root=root,
        server_kit=root / str(srv.get("kit", "pki/server")),
        state_db=root / str(srv.get("state_db", "state/state.sqlite")),
        federation=str(srv.get("federation_name", "secfed")),
        task=str(server.get("task", {}).get("name", "")),
        institutions=institutions,
    )


def server_facts(run: RunDir) -> ServerFacts | None:
    """The coordinator's records, or None when this directory has no state database."""
    if run.state_db is None or not run.state_db.exists():
        return None
    from server.state import StateStore

    try:
        state_path = str(run.state_db.resolve().relative_to(run.root.resolve()))
    except ValueError:
        state_path = str(run.state_db.resolve())
    store = StateStore(run.state_db)
    try:
        problems = store.integrity_check()
        rounds = [
            {
                "round": r.round,
                "contributors": list(r.contributors),
                "dropped": list(r.dropped),
                "model_hash": r.model_hash.hex(),
                "summary": r.summary,
            }
            for r in store.rounds()
        ]
        events = [{k: (v.hex() if isinstance(v, bytes) else v) for k, v in e.items()} for e in store.ledger()]
        return ServerFacts(
            store.run_id, run.federation, run.task, rounds, events, tuple(problems), state_path=state_path
        )
    finally:
        store.close()


def _empirical(run: RunDir) -> dict[str, Any] | None:
    path = run.audit_dir / "empirical.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None


def _write(doc: Mapping[str, Any], json_path: Path, fmt: str, out: Path | None) -> list[Path]:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    written = [json_path]
    if fmt == "json":
        if out is not None:
            out.write_text(json_path.read_text(encoding="utf-8"), encoding="utf-8")
            written.append(out)
        return written
    from secfed.audit.html import render_html

    html = render_html(doc)
    if fmt == "html":
        target = out or json_path.with_suffix(".html")
        target.write_text(html, encoding="utf-8")
    else:
        from secfed.audit.pdf import render_pdf

        target = out or json_path.with_suffix(".pdf")
        render_pdf(html, target)
    written.append(target)
    return written


def make_reports(target: Path, *, institution: str | None, fmt: str, out: Path | None) -> list[Path]:
    """Write the signed JSON report(s) under ``audit/`` of the run directory (or beside the configuration
    file) and render them; return the files written."""
    run = read_target(target)
    root = run.root
    facts = server_facts(run)
    empirical = _empirical(run)
    if institution is not None and institution not in run.institutions:
        raise RunDirError(f"{root}: no institution {institution!r} (known: {sorted(run.institutions)})")
    chosen = [institution] if institution is not None else sorted(run.institutions)
    written: list[Path] = []
    reports: dict[str, dict[str, Any]] = {}
    for cid in chosen:
        inst = run.institutions[cid]
        kit = load_kit(inst.kit)
        body = institution_report(
            cid,
            root=root,
            audit_ledger=inst.audit_ledger,
            privacy_ledger=inst.privacy_ledger,
            server=facts,
            empirical=empirical,
        )
        reports[cid] = sign_document(body, kit.identity, role="client", consortium=kit.trust.consortium_id)
        single = out if institution is not None else None
        written += _write(reports[cid], run.audit_dir / f"{cid}.json", fmt, single)
    if institution is None and run.server_kit is not None:
        if facts is None:
            raise RunDirError(f"{run.state_db}: no server state database: cannot write the federation report")
        kit = load_kit(run.server_kit)
        trust = kit.trust
        verified = {
            cid: doc for cid, doc in reports.items() if _verifies(doc, trust, run.audit_dir / f"{cid}.json")
        }
        body = federation_report(facts, institutions=verified, empirical=empirical)
        doc = sign_document(body, kit.identity, role="server", consortium=trust.consortium_id)
        written += _write(doc, run.audit_dir / "federation.json", fmt, out)
    return written


def _verifies(doc: Mapping[str, Any], trust: TrustAnchor, where: Path) -> bool:
    try:
        verify_document(doc, trust, where=str(where))
    except AuditVerifyError:
        return False
    return True


# ---------------------------------------------------------------------------------------- verify


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float | int) and isinstance(b, float | int):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


def _check_privacy(doc: Mapping[str, Any], ledger: Path, entries: int) -> list[str]:
    """Recompute the privacy section from the ledger's first ``entries`` entries and compare."""
    recomputed, mechanism = privacy_section(ledger, limit=entries)
    stated = doc.get("privacy") or {}
    problems = []
    for key in (
        "epsilon",
        "epsilon_rdp",
        "delta",
        "budget",
        "dp_used",
        "rounds_trained",
        "non_dp_releases",
        "no_dp_guarantee_since_round",
        "refusals",
        "retries",
        "datasets",
        # Present only when the ledger has DP selection releases (absent on both sides otherwise).
        "epsilon_training",
        "epsilon_selection",
        "selection_releases",
    ):
        if not _close(stated.get(key), recomputed.get(key)):
            problems.append(
                f"privacy.{key} is {stated.get(key)!r} but the ledger gives {recomputed.get(key)!r}"
            )
    for i, (a, b) in enumerate(
        zip(stated.get("over_rounds", []), recomputed.get("over_rounds", []), strict=False)
    ):
        if not all(_close(a.get(k), b.get(k)) for k in ("round", "epsilon", "epsilon_rdp")):
            problems.append(f"privacy.over_rounds[{i}] does not match the ledger ({a} vs {b})")
    if len(stated.get("over_rounds", [])) != len(recomputed.get("over_rounds", [])):
        problems.append("privacy.over_rounds has a different number of rounds than the ledger")
    if doc.get("mechanism") != mechanism:
        problems.append("mechanism does not match the ledger's dp-round entries")
    return problems


def _check_ledgers(doc: Mapping[str, Any], root: Path) -> list[str]:
    problems: list[str] = []
    for ref in doc.get("ledgers") or []:
        name, rel = str(ref.get("name")), str(ref.get("path"))
        count, head = int(ref.get("entries", 0)), ref.get("head")
        if name == "server-state":
            problems += _check_server_state(root / rel, count, head)
            continue
        path = root / rel
        if not path.exists():
            problems.append(f"ledger {name} ({path}) is missing")
            continue
        try:
            entries = HashChain(path).entries()
        except ChainError as exc:
            problems.append(f"ledger {name}: {exc}")
            continue
        if len(entries) < count:
            problems.append(
                f"ledger {name} ({path}) has {len(entries)} entries, the report covered {count}: truncated"
            )
            continue
        if count and entries[count - 1].hash != head:
            problems.append(
                f"ledger {name} ({path}): entry {count - 1} is not the one the report signed (rewritten)"
            )
            continue
        if name == "privacy":
            problems += _check_privacy(doc, path, count)
    return problems


def _check_server_state(path: Path, count: int, head: Any) -> list[str]:
    if not path.exists():
        return [f"server state database {path} is missing"]
    from server.state import StateStore

    store = StateStore(path)
    try:
        problems = [f"server state: {p}" for p in store.integrity_check()]
        events = store.ledger()
    finally:
        store.close()
    if len(events) < count:
        problems.append(f"server ledger has {len(events)} entries, the report covered {count}: truncated")
    elif count:
        got = events[count - 1]["hash"]
        got_hex = got.hex() if isinstance(got, bytes) else str(got)
        if got_hex != head:
            problems.append(f"server ledger entry {count - 1} is not the one the report signed (rewritten)")
    return problems


# Where the consortium CA certificate sits: a simulate run, then the kits of the deploy examples.
_CA_CANDIDATES = ("pki/ca/ca.pem", "pki/server/ca.pem", "pki/ca.pem", "kit/ca.pem", "kits/server/ca.pem")


def _find_root(report: Path, doc: Mapping[str, Any]) -> Path:
    """The directory the report's ledger paths are relative to: the nearest one above the report
    that holds all of them (a run directory, or a party's configuration directory)."""
    paths = [str(ref.get("path")) for ref in doc.get("ledgers") or [] if isinstance(ref, Mapping)]
    parents = report.resolve().parents
    for parent in parents:
        if paths and all((parent / p).exists() for p in paths):
            return parent
    for parent in parents:
        if (parent / "server.toml").exists():
            return parent
    raise RunDirError(
        f"{report}: cannot find the directory its ledgers are in (none above it holds {paths or 'server.toml'})"
    )


def _default_ca(root: Path) -> Path:
    for candidate in _CA_CANDIDATES:
        if (root / candidate).exists():
            return root / candidate
    return root / _CA_CANDIDATES[0]


def verify_reports(target: Path, *, ca: Path | None = None) -> list[tuple[Path, str, list[str]]]:
    """Verify one report, or every report of a run directory; ``(report, signer, problems)`` each."""
    target = target.resolve()
    if target.is_dir():
        root = target
        reports = sorted((target / "audit").glob("*.json"))
        reports = [r for r in reports if r.name != "empirical.json"]
        if not reports:
            raise RunDirError(
                f"{target / 'audit'}: no reports to verify (run `secfed audit report {target}`)"
            )
    else:
        try:
            single = json.loads(target.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise RunDirError(f"{target}: no such report") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise RunDirError(f"{target}: cannot read the report: {exc}") from None
        root = _find_root(target, single if isinstance(single, dict) else {})
        reports = [target]
    anchor_path = ca or _default_ca(root)
    try:
        trust = TrustAnchor.from_pem(anchor_path.read_bytes())
    except FileNotFoundError:
        raise RunDirError(f"{anchor_path}: no CA certificate to verify against (pass --ca)") from None
    results = []
    by_institution: dict[str, Mapping[str, Any]] = {}
    docs: dict[Path, Mapping[str, Any]] = {}
    for path in reports:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            results.append((path, "", [f"cannot read the report: {exc}"]))
            continue
        docs[path] = doc
        if doc.get("kind") == "institution":
            by_institution[str(doc.get("institution"))] = doc
    for path, doc in docs.items():
        problems: list[str] = []
        signer = ""
        try:
            signer = verify_document(doc, trust, where=str(path))
        except AuditVerifyError as exc:
            problems += exc.problems
        role = (doc.get(SIGNATURE) or {}).get("role") if isinstance(doc.get(SIGNATURE), Mapping) else None
        if doc.get("kind") == "institution":
            if signer and (signer != doc.get("institution") or role == "server"):
                problems.append(f"signed by {signer!r}, not by institution {doc.get('institution')!r}")
            problems += _check_institution_claims(doc)
        elif doc.get("kind") == "federation":
            if role != "server":
                problems.append(f"a federation report must be signed by the coordinator, not by {signer!r}")
            problems += _check_quotes(doc, by_institution)
        problems += _check_ledgers(doc, root)
        results.append((path, signer, problems))
    return results


def _check_institution_claims(doc: Mapping[str, Any]) -> list[str]:
    """What an institution report says of its privacy must come from a ledger it covers, and its plain
    words must be the ones that privacy section gives (a report cannot claim DP its ledger does not
    back, nor word its guarantee otherwise)."""
    problems = []
    privacy = doc.get("privacy") or {}
    covered = any(
        isinstance(ref, Mapping) and ref.get("name") == "privacy" for ref in doc.get("ledgers") or []
    )
    if not covered and privacy != {"dp_used": False}:
        problems.append(
            "the privacy section states releases or an epsilon, but the report covers no privacy ledger"
        )
    expected = guarantee_section(privacy, institution=str(doc.get("institution")))
    if doc.get("guarantee") != expected:
        problems.append("guarantee does not follow from the privacy section")
    problems += _check_selection_not_covered(doc, selection_dp_covered(privacy))
    return problems


def _check_selection_not_covered(doc: Mapping[str, Any], covered: bool) -> list[str]:
    """A report may leave out that coreset selection statistics carry no DP only when its (verified)
    figures show every selection release was DP. Only that item is checked: the rest of the list has
    grown over time, and reports signed before must still verify."""
    listed = doc.get("not_covered")
    if covered or (isinstance(listed, list) and SELECTION_NOT_COVERED in listed):
        return []
    return [
        "not_covered leaves out that coreset selection statistics carry no DP, which the figures do not back"
    ]


def _check_quotes(doc: Mapping[str, Any], by_institution: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Every institution report present is quoted, exactly as :func:`quote_institution` takes it, and
    the federation's plain words follow from the quotes."""
    problems = []
    quoted = doc.get("institutions") or {}
    for cid, own in sorted(by_institution.items()):
        if cid not in quoted:
            problems.append(
                f"institution {cid!r} has a report here but the federation report does not quote it"
            )
            continue
        expected = quote_institution(own)
        differing = sorted(
            k for k in set(expected) | set(quoted[cid]) if not _close(quoted[cid].get(k), expected.get(k))
        )
        for key in differing:
            problems.append(
                f"institutions.{cid}.{key} is {quoted[cid].get(key)!r} but that institution's report "
                f"gives {expected.get(key)!r}"
            )
    if doc.get("guarantee") != federation_guarantee(quoted):
        problems.append("guarantee does not follow from the quoted institutions")
    problems += _check_selection_not_covered(doc, federation_selection_covered(quoted))
    return problems
