"""`digits studies`: start a tuning study, follow its trials live, list, show, abort, delete.

A search space is given as `--space NAME=SPEC`, once per hyperparameter:
  learning_rate=log(1e-4,1)   a float sampled in log space
  momentum=float(0.8,0.99)    a float (uniform)
  epochs=int(5,20)            an integer
  batch_size=32,64,128        one of these values (also choice(32,64,128))
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from typing import Any

from cli.client import EXIT_FAILED, EXIT_USAGE, Api, _common, _fail, _hyper, _print_json, _table

RANGE = re.compile(r"^(log|float|uniform|int)\(\s*([^,]+?)\s*,\s*([^,]+?)\s*\)$")
CHOICE = re.compile(r"^choice\((.*)\)$")
POLL = 2.0


def _value(text: str) -> Any:
    """A choice as JSON would have it: a number, a boolean or a string."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def parse_space(items: list[str]) -> dict[str, dict[str, Any]]:
    """`NAME=SPEC` items as the API's search space; a usage error names the bad item."""
    space: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, spec = item.partition("=")
        name, spec = name.strip(), spec.strip()
        if not sep or not name or not spec:
            _fail(f"--space {item!r}: expected NAME=SPEC, e.g. learning_rate=log(1e-4,1)", 2)
        found = RANGE.match(spec)
        if found:
            kind, low, high = found.groups()
            try:
                if kind == "int":
                    space[name] = {"type": "int", "low": int(low), "high": int(high)}
                else:
                    space[name] = {
                        "type": "float",
                        "low": float(low),
                        "high": float(high),
                        "log": kind == "log",
                    }
            except ValueError:
                _fail(f"--space {item!r}: the bounds must be numbers", EXIT_USAGE)
            continue
        choice = CHOICE.match(spec)
        values = (choice.group(1) if choice else spec).split(",")
        space[name] = {"type": "categorical", "choices": [_value(v) for v in values if v.strip()]}
    return space


def studies_create(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "name": args.name or f"{args.network}-study",
        "dataset_id": args.dataset,
        "network": args.network,
        "hyperparameters": _hyper(args),
        "search_space": parse_space(args.space),
        "objective": {"metric": args.metric, "use": args.use},
        "sampler": {"type": args.sampler},
        "pruner": {"type": args.pruner},
        "max_trials": args.trials,
    }
    if args.direction:
        body["objective"]["direction"] = args.direction
    if args.seed_sampler is not None:
        body["sampler"]["seed"] = args.seed_sampler
    if args.min_epochs is not None:
        body["pruner"]["min_epochs"] = args.min_epochs
    if args.reduction_factor is not None:
        body["pruner"]["reduction_factor"] = args.reduction_factor
    for key in ("concurrent", "group", "max_epochs_total", "timeout"):
        value = getattr(args, key)
        if value is not None:
            field = {"concurrent": "max_concurrent", "timeout": "timeout_s"}.get(key, key)
            body[field] = value
    study = api.json("POST", "/studies", json=body)
    if args.json and not args.watch:
        _print_json(study)
        return 0
    if not args.json:
        print(
            f"study {study['id']} {study['name']!r}: {study['max_trials']} trials, "
            f"{study['max_concurrent']} at once"
        )
    return _watch(api, study["id"], args.json) if args.watch else 0


def _params(params: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


def _rows(study: dict[str, Any]) -> list[list[Any]]:
    best = study.get("best_trial")
    return [
        [
            f"{t['number']}{' *' if t['number'] == best else ''}",
            t["state"],
            "" if t["value"] is None else f"{t['value']:.4f}",
            f"{t['epochs']:.1f}",
            _params(t["params"]),
        ]
        for t in study["trials"]
    ]


def _render(study: dict[str, Any]) -> Any:
    from rich.table import Table

    counts = study["counts"]
    best = "-" if study["best_value"] is None else f"{study['best_value']:.4f}"
    title = (
        f"{study['name']}: {study['status']}, {study['trials_asked']}/{study['max_trials']} "
        f"trials ({counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed), best {study['objective']['metric']} "
        f"{best}"
    )
    table = Table(title=title)
    for col in ("trial", "state", "value", "epochs", "params"):
        table.add_column(col)
    for row in _rows(study):
        table.add_row(*map(str, row))
    return table


def _watch(api: Api, study_id: str, as_json: bool) -> int:
    """Follow a study to its end: a live table on a terminal, a line per trial otherwise."""
    seen: dict[int, str] = {}
    live = None
    if sys.stdout.isatty() and not as_json:
        from rich.live import Live

        live = Live(refresh_per_second=2)
        live.start()
    try:
        while True:
            study = api.json("GET", f"/studies/{study_id}")
            if live is not None:
                live.update(_render(study))
            elif not as_json:
                for trial in study["trials"]:
                    state = trial["state"]
                    if seen.get(trial["number"]) != state and state != "waiting":
                        seen[trial["number"]] = state
                        value = "" if trial["value"] is None else f" {trial['value']:.4f}"
                        where = (
                            f" at epoch {trial['pruned_epoch']:.2f}"
                            if trial["pruned_epoch"]
                            else ""
                        )
                        print(
                            f"trial {trial['number']} {state}{where}{value} "
                            f"{_params(trial['params'])}",
                            flush=True,
                        )
            if study["status"] != "running" and study.get("finished_at"):
                break
            time.sleep(POLL)
    finally:
        if live is not None:
            live.stop()
    if as_json:
        _print_json(study)
    else:
        best = study["best"]
        print(
            f"study {study['status']} ({study['reason']}): "
            + (
                f"best trial {best['number']} {study['objective']['metric']} "
                f"{best['value']:.4f} with {_params(best['params'])}"
                if best
                else "no trial completed"
            )
        )
    return 0 if study["status"] == "done" else EXIT_FAILED


def studies_list(api: Api, args: argparse.Namespace) -> int:
    page = api.json("GET", "/studies", params={"per_page": 200})
    if args.json:
        _print_json(page["items"])
        return 0
    _table(
        ["id", "name", "status", "trials", "best"],
        [
            [
                s["id"],
                s["name"],
                s["status"],
                f"{s['trials_asked']}/{s['max_trials']}",
                "" if s["best_value"] is None else f"{s['best_value']:.4f}",
            ]
            for s in page["items"]
        ],
        title=f"{page['total']} studies",
    )
    return 0


def studies_show(api: Api, args: argparse.Namespace) -> int:
    study = api.json("GET", f"/studies/{args.id}")
    if args.json:
        _print_json(study)
        return 0
    from rich.console import Console

    Console(width=120).print(_render(study))
    if study["importances"]:
        print("importances: " + ", ".join(f"{k} {v:.2f}" for k, v in study["importances"].items()))
    return 0


def studies_watch(api: Api, args: argparse.Namespace) -> int:
    return _watch(api, args.id, args.json)


def studies_abort(api: Api, args: argparse.Namespace) -> int:
    study = api.json("POST", f"/studies/{args.id}/abort")
    if args.json:
        _print_json(study)
    else:
        print(f"study {args.id}: {study['status']}")
    return 0


def studies_delete(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/studies/{args.id}")
    if not args.json:
        print(f"study {args.id} deleted")
    return 0


def add_study_commands(sub: Any, hyper_args: Any) -> None:
    """Register `digits studies ...` on the `digits` parser."""
    studies = sub.add_parser("studies", help="tune hyperparameters: Optuna studies of jobs")
    _common(studies)
    studies_sub = studies.add_subparsers(dest="action", required=True)
    sc = studies_sub.add_parser("create", help="start a study (TPE + ASHA by default)")
    _common(sc)
    sc.add_argument("--dataset", required=True, help="dataset id")
    sc.add_argument("--network", required=True, help="lenet, alexnet, resnet18, ...")
    sc.add_argument(
        "--space",
        action="append",
        required=True,
        help="NAME=log(a,b) | float(a,b) | int(a,b) | v1,v2,... (repeat for each)",
    )
    sc.add_argument("--name")
    sc.add_argument("--group")
    sc.add_argument("--trials", type=int, default=20, help="max_trials (default 20)")
    sc.add_argument("--concurrent", type=int, help="trials at once (default: training workers)")
    sc.add_argument(
        "--metric", default="val.accuracy", choices=["val.accuracy", "val.loss", "val.top5"]
    )
    sc.add_argument("--direction", choices=["maximize", "minimize"])
    sc.add_argument("--use", choices=["best", "last"], default="best")
    sc.add_argument("--sampler", choices=["tpe", "random", "grid"], default="tpe")
    sc.add_argument("--seed-sampler", type=int, help="the sampler's seed")
    sc.add_argument("--pruner", choices=["asha", "hyperband", "median", "none"], default="asha")
    sc.add_argument("--min-epochs", type=float, help="pruner: the first rung, in epochs")
    sc.add_argument("--reduction-factor", type=int, help="pruner: keep the top 1/eta")
    sc.add_argument("--max-epochs-total", type=float, help="epoch budget of all trials")
    sc.add_argument("--timeout", type=float, help="time budget (s)")
    hyper_args(sc)
    sc.add_argument("--watch", action="store_true", help="follow the trials to the end")
    sc.set_defaults(client=studies_create)
    sl = studies_sub.add_parser("list", help="list studies")
    _common(sl)
    sl.set_defaults(client=studies_list)
    for name, func in (
        ("show", studies_show),
        ("watch", studies_watch),
        ("abort", studies_abort),
        ("delete", studies_delete),
    ):
        p = studies_sub.add_parser(name, help=f"{name} a study")
        _common(p)
        p.add_argument("id")
        p.set_defaults(client=func)
