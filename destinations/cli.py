"""The `destinations` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import __version__
from .conformance import run_cases
from .errors import ConfigurationError, Filtered, InvalidMessage
from .registry import destination_types, get_destination


class UsageError(Exception):
    """Bad usage or settings: exit status 2."""


def _load_settings(arg: str) -> dict[str, Any]:
    text = arg if arg.lstrip().startswith("{") else None
    if text is None:
        try:
            text = Path(arg).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--settings: not JSON and not a readable file: {exc.strerror}") from None
    try:
        settings = json.loads(text)
    except ValueError as exc:
        # The position only: the text may hold a secret.
        raise UsageError(f"--settings: not valid JSON (line {exc.lineno}, column {exc.colno})") from None
    if not isinstance(settings, dict):
        raise UsageError("--settings: must be a JSON object")
    return settings


def read_messages(stream: TextIO) -> Iterator[tuple[Any, str | None]]:
    """(message, None) per message of a JSON value, a JSON array or JSON Lines; (None, error) when unreadable."""
    text = stream.read()
    try:
        whole = json.loads(text)
    except (ValueError, RecursionError):
        whole = None
    else:
        yield from ((m, None) for m in (whole if isinstance(whole, list) else [whole]))
        return
    # Lines end at "\n" only: U+2028 and U+0085 may stand raw inside a JSON string.
    for number, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line), None
        except ValueError as exc:
            yield None, f"line {number}: not valid JSON ({exc.msg})"
        except RecursionError:
            yield None, f"line {number}: nested too deeply to be read"


def print_line(value: Any) -> None:
    """One JSON line, UTF-8; a lone surrogate in a text (valid in JSON input) is written as its JSON
    escape, so that the line stays valid JSON and printing never fails."""
    text = json.dumps(value, ensure_ascii=False) + "\n"
    sys.stdout.buffer.write(text.encode("utf-8", "backslashreplace"))


def _open(name: str) -> TextIO:
    """An input file, or a UsageError (exit 2) naming it: never a traceback."""
    try:
        return open(name, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {name}: {exc.strerror}") from None


def cmd_transform(args: argparse.Namespace) -> int:
    destination = get_destination(args.name, _load_settings(args.settings))
    with _open(args.file) if args.file else sys.stdin as stream:
        invalid = 0
        for message, problem in read_messages(stream):
            message_id = message.get("messageId") if isinstance(message, dict) else None
            out: dict[str, Any] = {"messageId": message_id}
            if problem:
                out["error"] = problem
                invalid += 1
            else:
                try:
                    requests_, warnings = destination.handle_with_warnings(message)
                    out["requests"] = [r.to_dict() for r in requests_]
                    if warnings:
                        out["warnings"] = [str(w) for w in warnings]
                except InvalidMessage as exc:
                    out["error"] = str(exc)
                    invalid += 1
                except Filtered as exc:
                    out["filtered"] = exc.reason
            print_line(out)
    return 1 if invalid else 0


def cmd_list(args: argparse.Namespace) -> int:
    types = destination_types()
    if args.name and args.name not in types:
        raise UsageError(f"no destination type {args.name!r}; there are {', '.join(sorted(types))}")
    for name, cls in sorted(types.items()):
        if args.name and name != args.name:
            continue
        print(f"{name}  (integrations key: {cls.display_name})")
        settings = cls.describe_settings()
        width = max((len(s["name"]) for s in settings), default=0)  # one column, however long a name
        for s in settings:
            flags = ["required" if s["required"] else "optional"] + (["secret"] if s["secret"] else [])
            print(f"    {s['name']:<{width}} {', '.join(flags)}")
        if args.name:
            print("  fields: stable name (kind: text, number, bool, flag 0/1, date, url, texts, raw as sent), then the")
            print("  Segment sources in the order read (options.x is integrations.<key>.x; product.x is the product's")
            print("  own key) and what is used when none is present:")
            for f in cls.describe_fields():
                flag = ", required" if f["required"] else ""
                print(f"    {f['field']}  ({f['kind']}{flag})")
                default = f" || else {f['default']}" if f["default"] is not None else ""
                print(f"        {' || '.join(f['sources'])}{default}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    dirs = args.dirs or ["fixtures"]
    missing = [d for d in dirs if not Path(d).exists()]
    if missing:
        raise UsageError(f"no such folder or file: {', '.join(missing)}")
    results = run_cases(dirs)
    failed = [r for r in results if not r.ok]
    for r in failed:
        print(f"FAIL {r.path}\n{r.detail}\n")
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed or not results else 0


def _messages(files: list[str], problems: list[str]) -> Iterator[Any]:
    """Messages from files (or standard input); unreadable lines are reported, counted in `problems` and skipped."""
    for name in files or ["-"]:
        with sys.stdin if name == "-" else _open(name) as stream:
            for message, problem in read_messages(stream):
                if problem:
                    print(f"{name}: {problem}", file=sys.stderr)
                    problems.append(problem)
                else:
                    yield message


def cmd_send(args: argparse.Namespace) -> int:
    from .config import load_config
    from .delivery.commands import cmd_send as send

    config = load_config(args.config, server_needed=False)
    if not config.destinations:
        raise UsageError(f"{args.config}: no [destinations.NAME] table; nothing to send to")
    for name in args.inputs:
        if name != "-":
            _open(name).close()  # a missing file is a usage error before anything is sent
    problems: list[str] = []
    status = send(config, _messages(args.inputs, problems), wait=not args.no_wait, quiet=args.quiet)
    return status or (1 if problems else 0)


def cmd_outbox(args: argparse.Namespace) -> int:
    from .config import load_config
    from .delivery.commands import cmd_outbox as outbox

    # Only `drain` sends: the other actions read and change rows, and need no vendor key set here.
    config = load_config(args.config, server_needed=False, instances_needed=args.action == "drain")
    for reason in config.unconfigured.values():
        print(f"destinations outbox: note: {reason}; its rows are read from the outbox alone", file=sys.stderr)
    return outbox(
        config,
        args.action,
        destination=getattr(args, "destination", None),
        limit=getattr(args, "limit", 50),
        ids=getattr(args, "id", None) or [],
        events=getattr(args, "event", None) or [],
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo, run_offline_demo

    if args.users < 1:
        raise UsageError("--users must be 1 or more")
    out_dir = Path(args.out) if args.out else None
    if out_dir is not None:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {out_dir}: {exc.strerror}") from None
    if args.offline:
        if args.keep_open:
            raise UsageError("--keep-open keeps the demo's server running; --offline has none")
        return run_offline_demo(users=args.users, out_dir=out_dir)
    return _needs_server(lambda: run_demo)(users=args.users, out_dir=out_dir, keep_open=args.keep_open)


def _needs_server(load: Any) -> Any:
    """`load()`, or a UsageError saying how to install the server extra when it is not installed."""
    try:
        return load()
    except ModuleNotFoundError as exc:
        if exc.name in ("fastapi", "uvicorn", "starlette", "prometheus_client", "httpx", "orjson", "analytics"):
            raise UsageError(
                f"this command needs the server extra ({exc.name} is missing): pip install 'destinations[server]'"
            ) from None
        raise


def cmd_serve(args: argparse.Namespace) -> int:
    serve = _needs_server(lambda: __import__("destinations.server.app", fromlist=["serve"]).serve)
    return int(
        serve(
            args.config,
            host=args.host,
            port=args.port,
            workers=args.workers,
            deliver=not args.no_deliver,
            log_level=args.log_level,
            access_log=args.access_log,
        )
    )


def cmd_worker(args: argparse.Namespace) -> int:
    run_worker = _needs_server(lambda: __import__("destinations.server.app", fromlist=["run_worker"]).run_worker)
    return int(run_worker(args.config, log_level=args.log_level))


def _row_id(text: str) -> int:
    """A row id as `outbox dead` prints it: a whole number SQLite can hold (1 to 2**63 - 1)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a row id (a whole number)") from None
    if not 1 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"{text} is not a row id (1 to {2**63 - 1})")
    return value


def _replay_choice(parser: argparse.ArgumentParser) -> None:
    """`outbox replay --id …` (dead requests) or `--event …` (dead inbox events), as `outbox dead` names them."""
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--id", type=_row_id, nargs="+", help="only these dead requests (their `id`)")
    which.add_argument("--event", type=_row_id, nargs="+", help="only these dead inbox events (`inboxEvent`)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="destinations", description=__doc__)
    parser.add_argument("--version", action="version", version=f"destinations {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="the destinations and their settings; with NAME, its declared fields too")
    p.add_argument("name", nargs="?", help="one destination type, e.g. wigzo: also print its declared fields")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("transform", help="map Segment messages to vendor requests, one JSON line each")
    p.add_argument("name", help="destination type, e.g. segmentify")
    p.add_argument("--settings", required=True, help="settings as JSON text or a JSON file's path")
    p.add_argument("file", nargs="?", help="JSON, JSON array or JSON Lines (standard input when absent)")
    p.set_defaults(func=cmd_transform)

    p = sub.add_parser("demo", help="a shop session through a live local server to a local stand-in for the vendors")
    p.add_argument("--offline", action="store_true", help="only map the session: no server, no sockets")
    p.add_argument("--users", type=int, default=3, help="visitors in the session (default 3)")
    p.add_argument("--out", help="folder for requests.jsonl (default: a new temporary folder)")
    p.add_argument("--keep-open", action="store_true", help="then keep serving, the live debugger too, until Ctrl-C")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("send", help="route messages to every configured destination and deliver them")
    p.add_argument("--config", required=True, help="destinations.toml")
    p.add_argument("inputs", nargs="*", help="JSON, JSON array or JSON Lines files (standard input when none)")
    p.add_argument("--no-wait", action="store_true", help="commit to the outbox and return without delivering")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.set_defaults(func=cmd_send)

    p = sub.add_parser("outbox", help="inspect and operate the outbox")
    osub = p.add_subparsers(dest="action", required=True)
    for action, text in (
        ("stats", "requests per destination and state"),
        ("dead", "dead requests with their last answer"),
        ("replay", "put dead requests back in the outbox"),
        ("drain", "deliver until nothing is pending"),
    ):
        q = osub.add_parser(action, help=text)
        q.add_argument("--config", required=True, help="destinations.toml")
        if action in ("dead", "replay"):
            q.add_argument("--destination", help="only this destination instance")
        if action == "dead":
            q.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
        if action == "replay":
            _replay_choice(q)
        q.set_defaults(func=cmd_outbox)

    p = sub.add_parser("serve", help="the intake server: Segment tracking API, webhook, RudderStack transformer")
    p.add_argument("--config", required=True, help="destinations.toml")
    p.add_argument("--host", help="address to listen on (default: [server] host)")
    p.add_argument("--port", type=int, help="port to listen on (default: [server] port)")
    p.add_argument("--workers", type=int, default=1, help="server processes (default 1)")
    p.add_argument("--no-deliver", action="store_true", help="intake only: commit to the outbox, deliver elsewhere")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--access-log", action="store_true", help="one log line per HTTP request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="deliver from the outbox (beside `serve --no-deliver`)")
    p.add_argument("--config", required=True, help="destinations.toml")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("check", help="run fixture cases (default: fixtures/)")
    p.add_argument("dirs", nargs="*", help="folders or case files")
    p.set_defaults(func=cmd_check)
    return parser


def _one_line(text: str) -> str:
    """A problem on one line: a line break inside it (a quoted key of the file) shown as its escape."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse fills an optional positional greedily: `transform NAME --settings S FILE` leaves FILE over.
    if getattr(args, "inputs", None) is not None and extra:
        args.inputs, extra = [*args.inputs, *extra], []
    if getattr(args, "file", "") is None and len(extra) == 1 and not extra[0].startswith("-"):
        args.file, extra = extra[0], []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.func(args))
    except ConfigurationError as exc:
        # A configuration's problems (each a whole line, naming its file, table and key), a line each, so that every
        # one can be read and fixed in one go; a line break inside one (a quoted key) shown as its escape.
        if len(exc.problems) > 1 and str(exc) == "; ".join(exc.problems):
            print(f"destinations {args.command}: {len(exc.problems)} problems:", file=sys.stderr)
            print("\n".join(f"  {_one_line(problem)}" for problem in exc.problems), file=sys.stderr)
        else:
            print(f"destinations {args.command}: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except UsageError as exc:
        print(f"destinations {args.command}: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head`
        return 0
