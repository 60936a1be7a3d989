"""The `digits` commands that speak HTTP to a server: datasets, jobs, classify, download, fleet.

Exit codes: 0 success; 1 the job failed or was aborted; 2 bad usage; 3 the server cannot be
reached; 4 the token was refused; 5 not found; 6 the server rejected the input.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import httpx

EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH, EXIT_NOT_FOUND, EXIT_REJECTED = (
    1,
    2,
    3,
    4,
    5,
    6,
)


class CliError(Exception):
    """A failure with a message for a person and an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


class Api:
    """A thin HTTP client that turns failures into advice."""

    def __init__(self, url: str, token: str | None, timeout: float = 120) -> None:
        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url + "/api/v1", headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            resp = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            _fail(
                f"cannot reach the digits server at {self.url}: is it running? Start one with "
                "`make run`, or point --url / DIGITS_URL at yours.",
                EXIT_UNREACHABLE,
            )
        except httpx.TimeoutException:
            _fail(f"the server at {self.url} did not answer in time; try again", EXIT_UNREACHABLE)
        if resp.status_code >= 400:
            self._raise(resp)
        return resp

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    @staticmethod
    def _raise(resp: httpx.Response) -> NoReturn:
        try:
            problem = resp.json()
            detail = problem.get("detail") or problem.get("title") or resp.text
        except ValueError:
            detail = resp.text[:300] or resp.reason_phrase
        if resp.status_code == 401:
            _fail(
                f"the server refused the token ({detail}). Set DIGITS_TOKEN or --token; an "
                "admin creates one with `digits token create USER`.",
                EXIT_AUTH,
            )
        if resp.status_code == 403:
            _fail(f"not allowed: {detail}", EXIT_AUTH)
        if resp.status_code == 404:
            _fail(f"not found: {detail}", EXIT_NOT_FOUND)
        if resp.status_code >= 500:
            _fail(
                f"the server failed ({resp.status_code}): {detail}; try again shortly",
                EXIT_UNREACHABLE,
            )
        _fail(f"rejected ({resp.status_code}): {detail}", EXIT_REJECTED)


# -- output -----------------------------------------------------------------------------------


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    Console(width=max(100, _term_width())).print(table)


def _term_width() -> int:
    try:
        return os.get_terminal_size().columns
    except OSError:
        return 120


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.1f}%"


def _metric(job: dict[str, Any], name: str) -> float | None:
    entry = (job.get("last") or {}).get(name)
    return None if entry is None else entry["value"]


def _short(uuid_text: str) -> str:
    return uuid_text


# -- datasets ---------------------------------------------------------------------------------


def _zip_folder(folder: Path) -> Path:
    """Pack a folder of class folders into a temporary zip (streamed to disk, not memory)."""
    fd, name = tempfile.mkstemp(suffix=".zip", prefix="digits-upload-")
    os.close(fd)
    count = 0
    with zipfile.ZipFile(name, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, str(path.relative_to(folder)))
                count += 1
    if count == 0:
        Path(name).unlink()
        _fail(f"{folder} holds no files; it should hold one folder of images per class", EXIT_USAGE)
    return Path(name)


def datasets_create(api: Api, args: argparse.Namespace) -> int:
    source = Path(args.path)
    if not source.exists():
        _fail(f"{source} does not exist", EXIT_USAGE)
    options = {
        "name": args.name or source.name.split(".")[0],
        "image_width": args.width,
        "image_height": args.height,
        "channels": args.channels,
        "resize_mode": args.resize_mode,
        "val_pct": args.val_pct,
        "test_pct": args.test_pct,
        "min_per_class": args.min_per_class,
        "encoding": args.encoding,
    }
    if args.max_per_class:
        options["max_per_class"] = args.max_per_class
    if args.group:
        options["group"] = args.group
    data = {k: str(v) for k, v in options.items() if v is not None}
    packed = _zip_folder(source) if source.is_dir() else None
    archive = packed or source
    try:
        with open(archive, "rb") as fh:
            dataset = api.json(
                "POST",
                "/datasets",
                data=data,
                files={"archive": (archive.name, fh, "application/octet-stream")},
            )
    finally:
        if packed:
            packed.unlink(missing_ok=True)
    if args.wait:
        dataset = _wait(api, f"/datasets/{dataset['id']}", args.json)
    if args.json:
        _print_json(dataset)
    else:
        print(f"dataset {dataset['id']} {dataset['name']!r}: {dataset['status']}")
        if dataset["status"] == "error":
            print(f"error: {dataset['error']}", file=sys.stderr)
    return EXIT_FAILED if dataset["status"] == "error" else 0


def _wait(api: Api, path: str, quiet: bool) -> dict[str, Any]:
    last = None
    while True:
        item: dict[str, Any] = api.json("GET", path)
        if not quiet and item["status"] != last:
            print(f"  {item['status']}", file=sys.stderr)
            last = item["status"]
        if item["status"] in ("done", "error", "aborted"):
            return item
        time.sleep(0.5)


def datasets_list(api: Api, args: argparse.Namespace) -> int:
    params = {"per_page": 200, **({"status": args.status} if args.status else {})}
    page = api.json("GET", "/datasets", params=params)
    if args.json:
        _print_json(page["items"])
        return 0
    _table(
        ["id", "name", "status", "classes", "images", "size", "created"],
        [
            [
                d["id"],
                d["name"],
                d["status"],
                len(d["classes"] or []),
                d["num_images"],
                f"{d['image_width']}x{d['image_height']}x{d['image_channels']}",
                d["created_at"][:19],
            ]
            for d in page["items"]
        ],
        title=f"{page['total']} dataset(s)",
    )
    return 0


def datasets_show(api: Api, args: argparse.Namespace) -> int:
    d = api.json("GET", f"/datasets/{args.id}")
    if args.json:
        _print_json(d)
        return 0
    print(f"{d['name']} ({d['id']}): {d['status']}")
    if d["error"]:
        print(f"error: {d['error']}")
    print(
        f"images {d['image_width']}x{d['image_height']}x{d['image_channels']} "
        f"{d['resize_mode']}, {d['num_images']} imported, {d['skipped']} skipped"
    )
    if d["splits"]:
        rows = [
            [
                c,
                *[
                    d["splits"].get(s, {}).get("per_class", {}).get(c, 0)
                    for s in ("train", "val", "test")
                ],
            ]
            for c in d["classes"] or []
        ]
        _table(["class", "train", "val", "test"], rows)
    return 0


def datasets_delete(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/datasets/{args.id}")
    if not args.json:
        print(f"dataset {args.id} deleted")
    return 0


# -- jobs -------------------------------------------------------------------------------------


def _hyper(args: argparse.Namespace) -> dict[str, Any]:
    hyper: dict[str, Any] = {}
    for key in (
        "epochs",
        "solver",
        "lr_policy",
        "seed",
        "momentum",
        "weight_decay",
        "batch_accumulation",
        "crop_size",
        "use_mean",
        "snapshot_interval",
        "val_interval",
    ):
        value = getattr(args, key, None)
        if value is not None:
            hyper[key] = value
    if getattr(args, "learning_rate", None):
        lrs = args.learning_rate
        hyper["learning_rate"] = lrs[0] if len(lrs) == 1 else lrs
    if getattr(args, "batch_size", None):
        bss = args.batch_size
        hyper["batch_size"] = bss[0] if len(bss) == 1 else bss
    return hyper


def jobs_create(api: Api, args: argparse.Namespace) -> int:
    network: Any = args.network
    if args.network.endswith(".json") and Path(args.network).is_file():
        network = json.loads(Path(args.network).read_text())
    body: dict[str, Any] = {
        "dataset_id": args.dataset,
        "name": args.name or f"{args.network}",
        "network": network,
        "hyperparameters": _hyper(args),
    }
    for key in ("group", "notes", "gpu", "recipe"):
        if getattr(args, key, None):
            body[key] = getattr(args, key)
    created = api.json("POST", "/jobs", json=body)
    if args.json and not args.watch:
        _print_json(created)
        return 0
    for job in created["jobs"]:
        print(f"job {job['id']} {job['name']!r}: {job['status']}")
    if args.watch and len(created["jobs"]) == 1:
        return _watch(api, created["jobs"][0]["id"], args.json)
    return 0


def jobs_list(api: Api, args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"per_page": 200}
    if args.status:
        params["status"] = args.status
    if args.group:
        params["group"] = args.group
    page = api.json("GET", "/jobs", params=params)
    if args.json:
        _print_json(page["items"])
        return 0
    _table(
        ["id", "name", "kind", "status", "progress", "val acc", "worker", "created"],
        [
            [
                j["id"],
                j["name"],
                j["kind"],
                j["status"],
                _pct(j["progress"]),
                _pct(_metric(j, "val.accuracy")),
                j["worker"],
                j["created_at"][:19],
            ]
            for j in page["items"]
        ],
        title=f"{page['total']} job(s)",
    )
    return 0


def jobs_show(api: Api, args: argparse.Namespace) -> int:
    j = api.json("GET", f"/jobs/{args.id}")
    if args.json:
        _print_json(j)
        return 0
    print(
        f"{j['name']} ({j['id']}): {j['status']}  {_pct(j['progress'])}  "
        f"epoch {j['epoch']:.2f}  worker {j['worker'] or '-'}  attempts {j['attempts']}"
    )
    if j.get("waiting_reason"):
        print(f"waiting: #{j['queue_position']} in the queue, {j['waiting_reason']}")
    if j["error"]:
        print(f"error: {j['error']}")
    rows = [
        [
            name,
            f"{v['value']:.5g}",
            v["epoch"],
            f"{j['best'][name]['value']:.5g}" if name in j["best"] else "",
        ]
        for name, v in sorted(j["last"].items())
    ]
    if rows:
        _table(["series", "last", "epoch", "best"], rows)
    return 0


def jobs_abort(api: Api, args: argparse.Namespace) -> int:
    j = api.json("POST", f"/jobs/{args.id}/abort")
    print(json.dumps(j) if args.json else f"job {j['id']}: abort requested ({j['status']})")
    return 0


def jobs_clone(api: Api, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.name:
        body["name"] = args.name
    hyper = _hyper(args)
    if hyper:
        body["hyperparameters"] = hyper
    created = api.json("POST", f"/jobs/{args.id}/clone", json=body)
    if args.json:
        _print_json(created)
    else:
        for job in created["jobs"]:
            print(f"job {job['id']} {job['name']!r}: {job['status']}")
    return 0


def jobs_delete(api: Api, args: argparse.Namespace) -> int:
    api.request("DELETE", f"/jobs/{args.id}")
    if not args.json:
        print(f"job {args.id} deleted")
    return 0


def jobs_watch(api: Api, args: argparse.Namespace) -> int:
    return _watch(api, args.id, args.json)


def _watch(api: Api, job_id: str, as_json: bool) -> int:
    """Follow a job's SSE stream with a progress bar; end with a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    job = api.json("GET", f"/jobs/{job_id}")
    console = Console(stderr=True)
    state: dict[str, Any] = {"loss": None, "acc": None, "ips": None, "epoch": 0.0}
    final = job["status"] in ("done", "error", "aborted")
    if not final:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>5.1f}%"),
            TextColumn("{task.fields[info]}"),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            disable=as_json,
        ) as bar:
            task = bar.add_task(job["name"], total=1.0, completed=job["progress"], info="")
            last_id: str | None = None  # an opaque cursor
            while True:
                headers: dict[str, str] = {"Last-Event-ID": last_id} if last_id else {}
                try:
                    with api.http.stream(
                        "GET",
                        f"/jobs/{job_id}/events",
                        headers=headers,
                        timeout=httpx.Timeout(30, read=None),
                    ) as resp:
                        if resp.status_code >= 400:
                            resp.read()
                            api._raise(resp)
                        event: dict[str, str] = {}
                        for line in resp.iter_lines():
                            if line:
                                if not line.startswith(":"):
                                    key, _, value = line.partition(": ")
                                    event[key] = value
                                continue
                            if "id" in event:
                                last_id = event["id"]
                                _on_event(
                                    event["event"], json.loads(event["data"]), state, bar, task
                                )
                                if as_json:
                                    print(
                                        json.dumps(
                                            {
                                                "event": event["event"],
                                                "data": json.loads(event["data"]),
                                            }
                                        )
                                    )
                            event = {}
                    break
                except (httpx.RemoteProtocolError, httpx.ReadError):
                    time.sleep(1)  # reconnect with Last-Event-ID: nothing is missed
        job = api.json("GET", f"/jobs/{job_id}")
    if not as_json:
        acc = _metric(job, "val.accuracy")
        loss = _metric(job, "val.loss")
        print(
            f"{job['name']}: {job['status']} after {job['epoch']:.2f} epochs"
            + (f", val accuracy {_pct(acc)}" if acc is not None else "")
            + (f", val loss {loss:.4f}" if loss is not None else "")
        )
        if job["error"]:
            print(f"error: {job['error']}", file=sys.stderr)
    return 0 if job["status"] == "done" else EXIT_FAILED


def _on_event(kind: str, data: dict[str, Any], state: dict[str, Any], bar: Any, task: Any) -> None:
    if kind == "progress":
        state["epoch"] = data["epoch"]
        bar.update(task, completed=data["progress"])
    elif kind == "metrics":
        for point in data["points"]:
            values = point["values"]
            state["epoch"] = point["epoch"]
            state["loss"] = values.get("train.loss", state["loss"])
            state["acc"] = values.get("val.accuracy", state["acc"])
            state["ips"] = values.get("train.images_per_second", state["ips"])
    elif kind == "status":
        bar.update(task, description=f"{data['status']}")
    info = [f"epoch {state['epoch']:.2f}"]
    if state["loss"] is not None:
        info.append(f"loss {state['loss']:.4f}")
    if state["acc"] is not None:
        info.append(f"acc {100 * state['acc']:.1f}%")
    if state["ips"] is not None:
        info.append(f"{state['ips']:.0f} img/s")
    bar.update(task, info="  ".join(info))


# -- models and fleet ---------------------------------------------------------------------------


def _image_files(names: list[str]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """The images of a command line as multipart files (a missing one: exit 2)."""
    files = []
    for name in names:
        path = Path(name)
        if not path.is_file():
            _fail(f"{path} is not a file", EXIT_USAGE)
        files.append(("images", (path.name, path.read_bytes(), "application/octet-stream")))
    return files


def predict(api: Api, args: argparse.Namespace) -> int:
    files = _image_files(args.images)
    if args.archive:
        archive = Path(args.archive)
        if not archive.is_file():
            _fail(f"{archive} is not a file", EXIT_USAGE)
        files.append(("archive", (archive.name, archive.read_bytes(), "application/octet-stream")))
    if not files:
        _fail("give images or --archive", EXIT_USAGE)
    resp = api.request(
        "POST",
        f"/jobs/{args.job}/predict",
        files=files,
        data={"checkpoint": args.checkpoint, "threshold": repr(args.threshold)},
    )
    body = resp.json()
    if resp.status_code == 202:  # many images or an archive: a prediction job
        print(
            json.dumps(body)
            if args.json
            else f"prediction job {body['id']} queued; results at "
            f"/api/v1/jobs/{body['id']}/results (?format=csv for all)"
        )
        return 0
    if args.save_overlays:
        import base64

        out = Path(args.save_overlays)
        out.mkdir(parents=True, exist_ok=True)
        for p in body["predictions"]:
            if p.get("overlay_png"):
                (out / f"{Path(p['filename']).stem}.png").write_bytes(
                    base64.b64decode(p["overlay_png"])
                )
    if args.json:
        _print_json(body)
        return 0
    rows: list[list[str]] = []
    for p in body["predictions"]:
        if p.get("error"):
            rows.append([p["filename"], "error", p["error"]])
        for b in p.get("boxes") or []:
            box = ", ".join(f"{v:.0f}" for v in b["box"])
            rows.append([p["filename"], b["label"], f"{100 * b['score']:.1f}% at {box}"])
        for a in p.get("areas") or []:
            rows.append([p["filename"], a["label"], f"{100 * a['fraction']:.1f}% of the image"])
    _table(
        ["image", "label", "score / area"],
        rows,
        title=f"{body['task']}, checkpoint {body['checkpoint']}, {body['milliseconds']:.1f} ms",
    )
    return 0


def classify(api: Api, args: argparse.Namespace) -> int:
    files = _image_files(args.images)
    resp = api.request(
        "POST",
        f"/jobs/{args.job}/classify",
        files=files,
        data={"checkpoint": args.checkpoint, "top_k": str(args.top_k)},
    )
    body = resp.json()
    if resp.status_code == 202:
        print(
            json.dumps(body)
            if args.json
            else f"{len(files)} images: inference job {body['id']} queued; results at "
            f"/api/v1/jobs/{body['id']}/results"
        )
        return 0
    if args.json:
        _print_json(body)
        return 0
    rows = [
        [p["filename"], t["label"], f"{100 * t['probability']:.2f}%"]
        for p in body["predictions"]
        for t in p["top"]
    ]
    _table(
        ["image", "label", "probability"],
        rows,
        title=f"checkpoint {body['checkpoint']}, {body['milliseconds']:.1f} ms",
    )
    return 0


def _overlay_target(output: str | None, image: Path, method: str, many: bool) -> Path:
    """Where an image's overlay goes: -o itself for one image, a file in -o for several."""
    name = f"{image.stem}.{method}.png"
    if output is None:
        return Path(name)
    out = Path(output)
    if many or out.is_dir():
        out.mkdir(parents=True, exist_ok=True)
        return out / name
    return out


def explain(api: Api, args: argparse.Namespace) -> int:
    paths = [Path(name) for name in args.images]
    for path in paths:
        if not path.is_file():
            _fail(f"{path} is not a file", EXIT_USAGE)
    data = {"checkpoint": args.checkpoint, "method": args.method, "top_k": str(args.top_k)}
    if args.target is not None:
        data["target"] = args.target
    resp = api.request(
        "POST",
        f"/jobs/{args.job}/explain",
        files=[("images", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths],
        data=data,
        timeout=600,
    )
    body = resp.json()
    if resp.status_code == 202:
        print(
            json.dumps(body)
            if args.json
            else f"{len(paths)} images: explain job {body['id']} queued; heat maps at "
            f"/api/v1/jobs/{body['id']}/explanations"
        )
        return 0
    rows, saved = [], []
    for path, item in zip(paths, body["explanations"], strict=True):
        if item["error"]:
            rows.append([path.name, "", "", "", item["error"]])
            continue
        out = _overlay_target(args.output, path, args.method, len(paths) > 1)
        out.write_bytes(base64.b64decode(item["overlay_png"]))
        saved.append(str(out))
        top, target = item["top"][0], item["target"]
        rows.append(
            [
                path.name,
                f"{top['label']} {100 * top['probability']:.1f}%",
                target["label"],
                item["layer"] or "(pixels)",
                str(out),
            ]
        )
    if args.json:
        _print_json({**body, "saved": saved})
        return 0
    _table(
        ["image", "prediction", "explained", "layer", "overlay"],
        rows,
        title=f"{args.method}, checkpoint {body['checkpoint']}, {body['milliseconds']:.1f} ms",
    )
    return 0


def download(api: Api, args: argparse.Namespace) -> int:
    params = {"checkpoint": args.checkpoint, "format": args.format}
    if args.export:
        params["export"] = args.export
    resp = api.request("GET", f"/jobs/{args.job}/download", params=params, timeout=600)
    out = Path(args.output or f"{args.job}_{args.checkpoint}.{args.format}")
    out.write_bytes(resp.content)
    print(
        json.dumps({"path": str(out), "bytes": len(resp.content)})
        if args.json
        else f"saved {out} ({len(resp.content):,} bytes)"
    )
    return 0


def gpus(api: Api, args: argparse.Namespace) -> int:
    rows = api.json("GET", "/gpus")
    if args.json:
        _print_json(rows)
        return 0
    if not rows:
        print("no GPUs registered (workers without GPUs train on the CPU; see `digits queue`)")
        return 0
    _table(
        ["gpu", "name", "worker", "alive", "util", "memory", "temp", "job"],
        [
            [
                g["uuid"],
                g["name"],
                g["worker"],
                "yes" if g["alive"] else "stale",
                "" if g["utilization"] is None else f"{g['utilization']:.0f}%",
                ""
                if g["memory_used_bytes"] is None
                else f"{g['memory_used_bytes'] / 2**30:.1f}/{g['memory_total'] / 2**30:.1f} GiB",
                "" if g["temperature_c"] is None else f"{g['temperature_c']:.0f}°C",
                g["job_id"],
            ]
            for g in rows
        ],
    )
    return 0


def queue(api: Api, args: argparse.Namespace) -> int:
    body = api.json("GET", "/queue")
    workers = api.json("GET", "/workers")
    if args.json:
        _print_json({"queue": body["items"], "workers": workers})
        return 0
    _table(
        ["worker", "kind", "alive", "job"],
        [[w["name"], w["kind"], "yes" if w["alive"] else "stale", w["job_id"]] for w in workers],
        title="workers",
    )
    _table(
        ["#", "job", "name", "why it waits"],
        [[i["position"], i["job_id"], i["name"], i["reason"]] for i in body["items"]],
        title=f"{body['total']} waiting job(s)",
    )
    return 0


def add_client_commands(sub: Any) -> None:
    """Register the HTTP client commands on the `digits` parser."""

    def client_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
        _common(parser)
        return parser

    ds = client_parser("datasets", help="import, list, show and delete datasets")
    ds_sub = ds.add_subparsers(dest="action", required=True)
    create = ds_sub.add_parser("create", help="import a folder of class folders, or an archive")
    _common(create)
    create.add_argument("path", help="a folder with one sub-folder per class, or a .zip/.tar.gz")
    create.add_argument("--name")
    create.add_argument("--group")
    create.add_argument("--width", type=int, default=256)
    create.add_argument("--height", type=int, default=256)
    create.add_argument("--channels", type=int, choices=[1, 3], default=3)
    create.add_argument(
        "--resize-mode", choices=["squash", "crop", "fill", "half_crop"], default="squash"
    )
    create.add_argument("--val-pct", type=float, default=25)
    create.add_argument("--test-pct", type=float, default=0)
    create.add_argument("--min-per-class", type=int, default=2)
    create.add_argument("--max-per-class", type=int)
    create.add_argument("--encoding", choices=["auto", "raw", "png", "jpg"], default="auto")
    create.add_argument("--wait", action="store_true", help="wait until the import ends")
    create.set_defaults(client=datasets_create)
    for name, func, help_text in (("list", datasets_list, "list datasets"),):
        p = ds_sub.add_parser(name, help=help_text)
        _common(p)
        p.add_argument("--status")
        p.set_defaults(client=func)
    for name, func in (("show", datasets_show), ("delete", datasets_delete)):
        p = ds_sub.add_parser(name, help=f"{name} a dataset")
        _common(p)
        p.add_argument("id")
        p.set_defaults(client=func)

    jobs = client_parser("jobs", help="train, follow and manage jobs")
    jobs_sub = jobs.add_subparsers(dest="action", required=True)
    jc = jobs_sub.add_parser("create", help="queue training (lists of rates/batch sizes sweep)")
    _common(jc)
    jc.add_argument("--dataset", required=True, help="dataset id")
    jc.add_argument(
        "--network", required=True, help="lenet, alexnet, googlenet, resnet18, ... or a JSON file"
    )
    jc.add_argument("--name")
    jc.add_argument("--group")
    jc.add_argument("--notes")
    jc.add_argument("--gpu", help="a worker name or GPU UUID")
    jc.add_argument(
        "--recipe",
        choices=["digits", "recommended"],
        help="what fills the options left out: DIGITS's defaults, or the network's recommended",
    )
    _hyper_args(jc)
    jc.add_argument("--watch", action="store_true", help="follow it to the end")
    jc.set_defaults(client=jobs_create)
    jl = jobs_sub.add_parser("list", help="list jobs")
    _common(jl)
    jl.add_argument("--status")
    jl.add_argument("--group")
    jl.set_defaults(client=jobs_list)
    for name, func in (
        ("show", jobs_show),
        ("abort", jobs_abort),
        ("delete", jobs_delete),
        ("watch", jobs_watch),
    ):
        p = jobs_sub.add_parser(name, help=f"{name} a job")
        _common(p)
        p.add_argument("id")
        p.set_defaults(client=func)
    jclone = jobs_sub.add_parser("clone", help="queue a copy of a job, with overrides")
    _common(jclone)
    jclone.add_argument("id")
    jclone.add_argument("--name")
    _hyper_args(jclone)
    jclone.set_defaults(client=jobs_clone)

    pr = client_parser("predict", help="boxes or masks from a detection or segmentation job")
    pr.add_argument("job")
    pr.add_argument("images", nargs="*")
    pr.add_argument("--archive", metavar="FILE", help="a zip or tar of images: a prediction job")
    pr.add_argument("--checkpoint", default="best")
    pr.add_argument("--threshold", type=float, default=0.5, help="detection: lowest score")
    pr.add_argument("--save-overlays", metavar="DIR", help="write each drawing here as PNG")
    pr.set_defaults(client=predict)

    cl = client_parser("classify", help="classify images with a trained job's model")
    cl.add_argument("job")
    cl.add_argument("images", nargs="+")
    cl.add_argument("--checkpoint", default="best")
    cl.add_argument("--top-k", type=int, default=5)
    cl.set_defaults(client=classify)

    ex = client_parser("explain", help="heat maps of why a trained job's model chose a class")
    ex.add_argument("job")
    ex.add_argument("images", nargs="+")
    ex.add_argument(
        "--method",
        choices=["gradcam", "gradcampp", "layercam", "integrated_gradients", "occlusion"],
        default="gradcam",
    )
    ex.add_argument("--target", help="class label or index to explain (default: the top one)")
    ex.add_argument("--checkpoint", default="best")
    ex.add_argument("--top-k", type=int, default=5)
    ex.add_argument(
        "-o",
        "--output",
        help="PNG to write (a folder for several images); default IMAGE.METHOD.png",
    )
    ex.set_defaults(client=explain)

    dl = client_parser("download", help="download a trained model")
    dl.add_argument("job")
    dl.add_argument("--checkpoint", default="best")
    dl.add_argument("--format", choices=["tar.gz", "zip"], default="tar.gz")
    dl.add_argument(
        "--export", help="torchscript, onnx, onnx-int8, onnx-fp16 (several comma-separated)"
    )
    dl.add_argument("-o", "--output", help="file to write")
    dl.set_defaults(client=download)

    from cli.studies import add_study_commands  # it imports this module's helpers

    add_study_commands(sub, _hyper_args)
    client_parser("gpus", help="the fleet's GPUs and what they run").set_defaults(client=gpus)
    client_parser("queue", help="workers, waiting jobs and why they wait").set_defaults(
        client=queue
    )


def _hyper_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int, nargs="+", help="several values make a sweep")
    p.add_argument(
        "--learning-rate",
        type=lambda v: v if v == "auto" else float(v),
        nargs="+",
        help="several values make a sweep; auto runs the LR range test first",
    )
    p.add_argument(
        "--solver", choices=["sgd", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw"]
    )
    p.add_argument(
        "--lr-policy",
        choices=[
            "fixed",
            "step",
            "multistep",
            "exp",
            "inv",
            "poly",
            "sigmoid",
            "cosine",
            "onecycle",
        ],
    )
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--batch-accumulation", type=int)
    p.add_argument("--crop-size", type=int)
    p.add_argument("--use-mean", choices=["image", "pixel", "none"])
    p.add_argument("--snapshot-interval", type=float)
    p.add_argument("--val-interval", type=float)
    p.add_argument("--seed", type=int)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--url", default=None, help="server URL (DIGITS_URL, default http://127.0.0.1:8000)"
    )
    p.add_argument("--token", default=None, help="API token (DIGITS_TOKEN)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def run_client(args: argparse.Namespace) -> int:
    """Run a client command; failures print advice and return a meaningful exit code."""
    url = args.url or os.environ.get("DIGITS_URL") or "http://127.0.0.1:8000"
    token = args.token or os.environ.get("DIGITS_TOKEN") or _local_token()
    api = Api(url, token)
    try:
        return int(args.client(api, args))
    except CliError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc), "exit_code": exc.code}), file=sys.stderr)
        else:
            print(f"error: {exc}", file=sys.stderr)
        return exc.code
    finally:
        api.http.close()


def _local_token() -> str | None:
    """The first-start admin token of a local embedded install, when there is one."""
    data = Path(os.environ.get("DIGITS_DATA_DIR", "data")) / "admin-token"
    try:
        return data.read_text().strip() or None
    except OSError:
        return None
