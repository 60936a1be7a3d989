"""The `digits` command: run the service (`up`, `api`, `worker`) and manage its database."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from collections.abc import Sequence

from shared.logging import configure_logging
from shared.settings import Settings, get_settings

log = logging.getLogger("digits.cli")


def _cmd_db(args: argparse.Namespace) -> int:
    from shared import migrate

    settings = get_settings()
    if args.action == "upgrade":
        migrate.upgrade(settings, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(settings, args.revision or "-1")
    print(f"database at {args.revision or ('head' if args.action == 'upgrade' else '-1')}")
    return 0


def _cmd_api(args: argparse.Namespace) -> int:
    from api.server import serve

    settings = get_settings()
    serve(settings, args.host or settings.host, args.port or settings.port)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    from shared.gpus import detect_gpus
    from shared.queue import create_celery, train_queue, worker_queue
    from worker import context

    device: str | None = None
    devices = 1
    host = socket.gethostname()
    pinned = args.gpus or args.gpu
    if pinned is not None:
        wanted = [g.strip() for g in str(pinned).split(",") if g.strip()]
        known = {str(g.index) for g in detect_gpus()} | {g.uuid for g in detect_gpus()}
        missing = [g for g in wanted if g not in known]
        if missing:
            print(
                f"error: no GPU {', '.join(missing)} on this host "
                f"(found: {', '.join(sorted(known)) or 'none'}); run `nvidia-smi -L`, "
                "or start a CPU worker with --cpu",
                file=sys.stderr,
            )
            return 2
        # pinned before anything imports torch: the training children inherit it
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(wanted)
        devices = len(wanted)
        default_name, device = f"gpu{'-'.join(wanted)}@{host}", "cuda"
    elif args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        devices = max(1, args.processes)
        default_name, device = f"cpu-train@{host}", "cpu"
    else:
        default_name = f"cpu-{os.getpid()}@{host}"
    default_queues = ",".join(train_queue(n) for n in range(1, devices + 1)) if device else "cpu"
    name = args.name or default_name
    queues = [q for q in (args.queues or default_queues).split(",") if q]
    if device and args.queues:  # a training worker also takes multi-device work it can run
        queues += [train_queue(n) for n in range(2, devices + 1)]
    queues.append(worker_queue(name))
    ctx = context.init(settings, name, device)
    ctx.devices = devices
    app = create_celery(settings, include=["worker.tasks"])
    from celery import signals

    from shared.services import dispatch

    # what this worker's sessions enqueue (requeues, re-sends) leaves after each commit
    dispatch.install(ctx.sessions, dispatch.CelerySender(app, settings))

    from worker.heartbeat import Heartbeat

    kind = "gpu" if device == "cuda" else ("cpu-train" if device == "cpu" else "cpu")
    ctx.heartbeat = Heartbeat(kind, queues, settings.heartbeat_interval)

    @signals.worker_ready.connect(weak=False)
    def _ready(**_kwargs: object) -> None:
        if device is not None:
            from worker.runner import prepare

            prepare()
        ctx.heartbeat.start()
        ctx.heartbeat.adopt()

    @signals.worker_shutting_down.connect(weak=False)
    def _shutting_down(**_kwargs: object) -> None:
        if device is not None:
            from worker.runner import request_shutdown

            request_shutdown()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_kwargs: object) -> None:
        ctx.heartbeat.stop()

    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        "--hostname",
        name,
        "--pool",
        "solo",
        "--concurrency",
        "1",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        settings.log_level,
    ]
    log.info("worker %s consuming %s", name, ",".join(queues))
    app.worker_main(argv)
    return 0


def _cmd_model_server(args: argparse.Namespace) -> int:
    settings = get_settings()
    configure_logging(settings.log_level)
    from urllib.parse import urlparse

    from worker.model_server import serve

    url = urlparse(settings.resolved_model_server_url)
    serve(settings, args.host or url.hostname or "127.0.0.1", args.port or url.port or 8001)
    return 0


def _cmd_openapi(_args: argparse.Namespace) -> int:
    import json

    from api.main import create_app

    print(json.dumps(create_app(Settings()).openapi(), indent=2, sort_keys=True))
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    """Migrate, then run and supervise the API, model service and workers until Ctrl-C."""
    from cli.supervisor import run_up

    settings = get_settings()
    configure_logging(settings.log_level)
    return run_up(
        settings, args.host or settings.host, args.port or settings.port, _first_start_token
    )


def _cmd_user(args: argparse.Namespace) -> int:
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.services import users

    settings = get_settings()
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as session:
        if args.action == "create":
            user = users.create_user(session, args.name, is_admin=args.admin)
            _, token = users.create_token(session, user, "first token")
            print(f"user {user.name} created{' (admin)' if user.is_admin else ''}")
            print(f"token: {token}")
        else:
            from sqlalchemy import select

            from shared.models import User

            for user in session.scalars(select(User).order_by(User.name)):
                print(f"{user.name}\t{'admin' if user.is_admin else 'user'}\t{user.id}")
    engine.dispose()
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    import uuid as _uuid

    from shared.db import make_engine, make_session_factory, session_scope
    from shared.services import users

    settings = get_settings()
    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as session:
        if args.action == "create":
            user = users.get_user_by_name(session, args.user)
            row, token = users.create_token(session, user, args.name)
            print(token)
            print(f"token {row.id} for {user.name}; it is shown only now", file=sys.stderr)
        else:
            from shared.models import ApiToken, User

            found = session.get(ApiToken, _uuid.UUID(args.token_id))
            if found is None:
                print(f"error: no token {args.token_id}", file=sys.stderr)
                return 1
            owner = session.get(User, found.user_id)
            assert owner is not None
            users.revoke_token(session, owner, found.id)
            print(f"token {found.id} revoked")
    engine.dispose()
    return 0


def _first_start_token(settings: Settings) -> None:
    """On a fresh install, create the admin and print its token (as Jupyter does)."""
    from shared.db import make_engine, make_session_factory, session_scope
    from shared.services import users

    engine = make_engine(settings)
    with session_scope(make_session_factory(engine)) as session:
        token = users.ensure_admin(session)
    engine.dispose()
    if token:
        path = settings.resolved_data_dir / "admin-token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        # a fragment never reaches the server or its logs; the page posts it and strips it
        host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
        print(
            f"\n    First start: user 'admin' created. Its API token (also in {path}):\n"
            f"\n        {token}\n\n    Send it as `Authorization: Bearer <token>`, or "
            f"export DIGITS_TOKEN={token} for the CLI.\n"
            f"\n    Web UI, signed in with one click:\n"
            f"\n        http://{host}:{settings.port}/#token={token}\n",
            flush=True,
        )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `digits` command."""
    parser = argparse.ArgumentParser(prog="digits", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run the API and workers on this machine (the embedded default)")
    up.add_argument("--host", help="listen address (default DIGITS_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, help="listen port (default DIGITS_PORT or 8000)")
    up.set_defaults(func=_cmd_up)

    api = sub.add_parser("api", help="run the API server only")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=_cmd_api)

    model_server = sub.add_parser(
        "model-server", help="run the model service (interactive classify, export)"
    )
    model_server.add_argument("--host", help="default: from DIGITS_MODEL_SERVER_URL")
    model_server.add_argument("--port", type=int, help="default: from DIGITS_MODEL_SERVER_URL")
    model_server.set_defaults(func=_cmd_model_server)

    worker = sub.add_parser("worker", help="run a Celery worker")
    pin = worker.add_mutually_exclusive_group()
    pin.add_argument("--gpu", help="train on this GPU (pins CUDA_VISIBLE_DEVICES); queue: train")
    pin.add_argument(
        "--gpus",
        help="train on these GPUs, e.g. 0,1: jobs asking for several "
        "run with DistributedDataParallel",
    )
    pin.add_argument("--cpu", action="store_true", help="train on the CPU; queue: train")
    worker.add_argument(
        "--processes",
        type=int,
        default=1,
        help="with --cpu: processes a multi-device job may use (gloo backend)",
    )
    worker.add_argument(
        "--queues",
        help="comma-separated queues (default: cpu, or train with "
        "--gpu/--cpu); the worker also consumes its own queue",
    )
    worker.add_argument("--name", help="worker name, unique in the fleet (default cpu-PID@host)")
    worker.set_defaults(func=_cmd_worker)

    openapi = sub.add_parser(
        "openapi", help="print the OpenAPI schema (the committed openapi.json)"
    )
    openapi.set_defaults(func=_cmd_openapi)

    db = sub.add_parser("db", help="manage the database schema")
    db.add_argument("action", choices=["upgrade", "downgrade"])
    db.add_argument("revision", nargs="?", help="target revision (default head / -1)")
    db.set_defaults(func=_cmd_db)

    from cli.client import add_client_commands

    add_client_commands(sub)

    user = sub.add_parser("user", help="manage users (on the server, against its database)")
    user_sub = user.add_subparsers(dest="action", required=True)
    user_create = user_sub.add_parser("create", help="create a user and print a first token")
    user_create.add_argument("name")
    user_create.add_argument("--admin", action="store_true", help="sees and manages everything")
    user_sub.add_parser("list", help="list users")
    user.set_defaults(func=_cmd_user)

    token = sub.add_parser("token", help="manage API tokens (on the server)")
    token_sub = token.add_subparsers(dest="action", required=True)
    token_create = token_sub.add_parser("create", help="create a token and print it")
    token_create.add_argument("user")
    token_create.add_argument("--name", default="cli", help="a label for the token")
    token_revoke = token_sub.add_parser("revoke", help="revoke a token by id")
    token_revoke.add_argument("token_id")
    token.set_defaults(func=_cmd_token)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `digits` console script."""
    args = build_parser().parse_args(argv)
    if getattr(args, "client", None) is not None:
        from cli.client import run_client

        return run_client(args)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
