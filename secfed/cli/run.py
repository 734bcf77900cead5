"""``secfed simulate``, ``server``, ``client``, ``status`` and ``generate``: running a federation and
looking at it. Each handler imports what it runs when it runs (the coordinator, the client runtime,
torch), so ``secfed --help`` and the other command groups stay fast."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from secfed import logs
from secfed.harness import simulate as simulate_harness

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    simulate = sub.add_parser(
        "simulate",
        help="run a complete local federation, one process per participant or Ray workers (the main job)",
    )
    simulate_harness.add_arguments(simulate)
    simulate.set_defaults(func=_simulate)

    server = sub.add_parser("server", help="run the federation coordinator (mTLS gRPC)")
    server.add_argument(
        "--config", type=Path, required=True, help="server TOML (see server/server.example.toml)"
    )
    server.add_argument("--listen", help="override [server].listen, e.g. 127.0.0.1:0 for any free port")
    server.add_argument("--port-file", type=Path, help="write the port actually bound to this file")
    server.set_defaults(func=_server)

    status = sub.add_parser(
        "status", help="where a run stands, from the coordinator's state database (safe while it runs)"
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, help="the server TOML (its state_db and planned rounds)")
    where.add_argument("--state", type=Path, help="the state database itself (state.sqlite)")
    where.add_argument(
        "--client", type=Path, help="an institution's client TOML: its own view (sessions, refusals, privacy)"
    )
    where.add_argument(
        "--operator",
        type=Path,
        metavar="KIT",
        help="an operator kit: ask the running coordinator over mTLS (adds the open phase, cohort, last seen)",
    )
    status.add_argument(
        "--server",
        metavar="HOST:PORT",
        help="with --operator: the coordinator (default: the kit's server_address)",
    )
    status.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    status.add_argument(
        "--watch", type=float, metavar="SECONDS", help="print again every SECONDS until Ctrl-C"
    )
    status.set_defaults(func=_status)

    client = sub.add_parser("client", help="run an institution's client (mTLS gRPC)")
    client.add_argument(
        "--config", type=Path, required=True, help="client TOML (see client/client.example.toml)"
    )
    client.add_argument("--server", help="override the server address (host:port) of the config and kit")
    client.add_argument("--fault", help="fault injection for tests: kill@ROUND:PHASE or hang@ROUND:PHASE")
    client.set_defaults(func=_client)

    generate = sub.add_parser("generate", help="answer prompts with a base model plus a trained adapter")
    generate.add_argument("prompts", nargs="+", help="one or more instructions")
    generate.add_argument("--adapter", type=Path, help="peft adapter directory (e.g. RUN/state/adapter)")
    generate.add_argument("--model", default=None, help="base model (default: SmolLM2-135M-Instruct)")
    generate.add_argument(
        "--style", choices=["chat", "alpaca"], default="chat", help="prompt format (default chat)"
    )
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.set_defaults(func=_generate)


def _simulate(args: argparse.Namespace) -> int:
    # The harness runs the server and clients as child processes; it never imports them.
    return simulate_harness.run_cli(args)


def _operator_query(kit_dir: Path, server: str | None) -> Callable[[], dict[str, Any]]:
    """Ask the coordinator named by ``server`` or by the operator kit, once per call."""
    from client.operator_status import RemoteStatusError, fetch_status
    from secfed.pki.kit import load_kit

    kit = load_kit(kit_dir)
    address = server or kit.server_address
    if address is None:
        raise ValueError(f"{kit_dir}: the kit records no server_address; pass --server HOST:PORT")

    def ask() -> dict[str, Any]:
        try:
            return fetch_status(kit, address)
        except RemoteStatusError as exc:
            raise ValueError(str(exc)) from exc

    return ask


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from client.config import load_client_config
    from client.status import format_client_status, read_client_status
    from server.config import load_server_config
    from server.state import StateError
    from server.status import format_remote_status, format_status, read_status

    if args.watch is not None and not args.watch > 0:
        raise ValueError(f"--watch needs a number of seconds > 0, got {args.watch}")
    if args.server is not None and args.operator is None:
        raise ValueError("--server only applies with --operator (the other views read local files)")
    ask = _operator_query(args.operator, args.server) if args.operator is not None else None
    planned = None
    state_db = args.state
    if args.config is not None:
        config = load_server_config(args.config)
        state_db, planned = config.state_db, config.plan.rounds
    client = load_client_config(args.client) if args.client is not None else None
    while True:
        if client is not None:
            mine = read_client_status(client)
            print(json.dumps(mine, sort_keys=True) if args.json else format_client_status(mine), flush=True)
        elif ask is not None:
            document = ask()
            print(json.dumps(document, sort_keys=True) if args.json else format_remote_status(document))
        else:
            try:
                snapshot = read_status(state_db, rounds_planned=planned)
            except StateError as exc:
                raise ValueError(str(exc)) from exc
            text = json.dumps(snapshot.to_json(), sort_keys=True) if args.json else format_status(snapshot)
            print(text, flush=True)
        if args.watch is None:
            return 0
        time.sleep(args.watch)
        if not args.json:
            print()


def _server(args: argparse.Namespace) -> int:
    # Lazy imports: ``secfed`` is the library; the CLI is the one place that composes it with the
    # server and client packages, which never import each other.
    import dataclasses
    import signal

    from server.config import load_server_config
    from server.runtime import FederationServer

    config = load_server_config(args.config)
    if args.listen:
        config = dataclasses.replace(config, listen=args.listen)
    server = FederationServer.start(config)
    if args.port_file is not None:
        args.port_file.write_text(f"{server.port}\n")
    signal.signal(signal.SIGTERM, lambda *_: server.stop_event.set())
    try:
        reason = server.wait()
    except KeyboardInterrupt:
        reason = "stopped by a signal"
    finally:
        server.stop()
    if reason == "stopped" or reason.startswith("stopped by"):
        reason = f"stopped by a signal; state kept in {config.state_db}: start it again to resume"
    print(f"secfed server: {reason}")
    return 0 if reason.startswith("completed") else 1


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops a client as Ctrl-C does: at once, with a last log line, without a traceback."""
    raise KeyboardInterrupt


def _client(args: argparse.Namespace) -> int:
    import signal

    from client.config import load_client_config
    from client.faults import Fault
    from client.runtime import ClientRuntime, ClientStopped
    from client.tls import ServerRefused
    from secfed.fl.registry import client_task
    from secfed.fl.releases import ReleaseLog
    from secfed.home import default_release_log
    from secfed.pki.kit import load_kit

    config = load_client_config(args.config)
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    kit = load_kit(config.kit)
    address = args.server or config.server or kit.server_address
    if not address:
        raise ValueError(f"{args.config}: no server address (set [client].server or use --server)")
    runtime = ClientRuntime(
        kit,
        client_task(
            config.task, kit.client_id, config.task_options, config.privacy, plugin=config.task_plugin
        ),
        address=address,
        retry=config.retry,
        fault=Fault.parse(args.fault) if args.fault else None,
        policy=config.policy,
        releases=ReleaseLog(config.release_log or default_release_log(kit.client_id)),
        audit_ledger=config.audit_ledger,
        model_dir=config.model_dir,
        checkpoint_every=config.checkpoint_every,
    )
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = runtime.run()
    except (ClientStopped, ServerRefused) as exc:
        print(f"secfed client {kit.client_id}: stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        logs.event(logging.getLogger("secfed.client"), "stopped", client=kit.client_id, by="signal")
        print(
            f"secfed client {kit.client_id}: stopped by a signal (any session in progress is abandoned; "
            "start it again to rejoin)",
            file=sys.stderr,
        )
        return 130
    saved = f"; global model saved to {report.model_saved}" if report.model_saved is not None else ""
    print(
        f"secfed client {kit.client_id}: {report.finished_reason}; "
        f"rounds completed {report.rounds_completed}{saved}"
    )
    return 0


def _generate(args: argparse.Namespace) -> int:
    from secfed.data.formats import Record
    from secfed.data.prompts import build_prompt
    from secfed.eval.generate import generate_answers
    from secfed.model.loading import DEFAULT_MODEL, load_base_model
    from secfed.model.lora import load_adapter

    base = load_base_model(args.model or DEFAULT_MODEL)
    model = base.model if args.adapter is None else load_adapter(base, args.adapter)
    records = [Record(instruction=p, context="", response="", category="") for p in args.prompts]
    prompts = [build_prompt(r, base.tokenizer, args.style) for r in records]
    answers = generate_answers(
        model, base.tokenizer, prompts, max_new_tokens=args.max_new_tokens, progress=False
    )
    for prompt, answer in zip(args.prompts, answers, strict=True):
        print(f"> {prompt}\n{answer}\n")
    return 0
