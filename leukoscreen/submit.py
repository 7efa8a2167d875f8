"""``leukoscreen submit``: upload a folder as one batch, in parts, and follow it to the end."""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import requests
from tqdm import tqdm

from api.specimen_ids import MANIFEST_NAME, ManifestRow, SpecimenError, parse_manifest


def collect_files(paths: list[str]) -> list[tuple[Path, str]]:
    """(path, name to report) for every file; names are relative to the folder given."""
    found: list[tuple[Path, str]] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for f in sorted(path.rglob("*")):
                rel = f.relative_to(path)
                if f.is_file() and not any(part.startswith(".") for part in rel.parts):
                    found.append((f, rel.as_posix()))
        elif path.is_file():
            found.append((path, path.name))
        else:
            raise FileNotFoundError(f"no such file or folder: {raw}")
    return found


def take_manifest(
    files: list[tuple[Path, str]], given: str | None
) -> tuple[list[tuple[Path, str]], list[ManifestRow] | None]:
    """The files without the manifest, and its rows checked against them, all before any upload.

    The upload goes in parts, and the server checks each part's manifest against that part:
    so every row must name a file here and every file must be named, or nothing is sent.
    """
    top = [(p, n) for p, n in files if n == MANIFEST_NAME]
    path = Path(given) if given else (top[0][0] if top else None)
    files = [(p, n) for p, n in files if n != MANIFEST_NAME and (path is None or p != path)]
    if path is None:
        return files, None
    rows = parse_manifest(path.read_bytes())
    names = {n for _, n in files}
    bases: dict[str, list[str]] = {}
    for n in names:
        bases.setdefault(Path(n).name, []).append(n)
    problems = [
        f"manifest line {r.line}: {r.file!r} is not among the files to upload"
        for r in rows
        if r.file not in names and len(bases.get(r.file, [])) != 1
    ]
    named = {r.file if r.file in names else bases[r.file][0] for r in rows if not problems}
    problems += (
        [f"{n} is not in the manifest" for n in sorted(names - named)] if not problems else []
    )
    if problems:
        raise SpecimenError(problems)
    return files, rows


def part_manifest(rows: list[ManifestRow], part: list[tuple[Path, str]]) -> bytes:
    """The manifest rows of one part's files, as the CSV sent with it."""
    names = {n for _, n in part}
    bases = {Path(n).name for n in names}
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "specimen_id", "source"])
    for r in rows:
        if r.file in names or r.file in bases:
            writer.writerow([r.file, r.specimen_id, r.source])
    return out.getvalue().encode()


def plan_parts(
    files: list[tuple[Path, str]], max_files: int, max_bytes: int
) -> list[list[tuple[Path, str]]]:
    parts: list[list[tuple[Path, str]]] = []
    current: list[tuple[Path, str]] = []
    size = 0
    for item in files:
        item_size = item[0].stat().st_size
        if current and (len(current) >= max_files or size + item_size > max_bytes):
            parts.append(current)
            current, size = [], 0
        current.append(item)
        size += item_size
    if current:
        parts.append(current)
    return parts


class SubmitError(RuntimeError):
    pass


# A connection error leaves the client not knowing whether the part was recorded: it is sent
# again with the same Idempotency-Key, and the API answers a recorded part with its first
# answer instead of recording it twice.
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 16.0)
RETRY_STATUSES = (502, 503, 504)


def upload_part(
    http: requests.Session,
    base: str,
    batch_id: str | None,
    part: list[tuple[Path, str]],
    name: str | None,
    submitted_by: str,
    key: str | None = None,
    delays: tuple[float, ...] = RETRY_DELAYS_S,
    fields: dict[str, str] | None = None,
    manifest: bytes | None = None,
) -> dict[str, Any]:
    url = (
        f"{base}/api/v1/batches" if batch_id is None else f"{base}/api/v1/batches/{batch_id}/images"
    )
    headers = {"Idempotency-Key": key or str(uuid.uuid4())}
    data = {"submitted_by": submitted_by, **(fields or {})}
    if name and batch_id is None:
        data["name"] = name
    for attempt in range(len(delays) + 1):
        try:
            with ExitStack() as stack:  # reopened for every attempt: a retry resends it all
                files: list[tuple[str, tuple[str, IO[bytes], str]]] = [
                    (
                        "images",
                        (label, stack.enter_context(open(path, "rb")), "application/octet-stream"),
                    )
                    for path, label in part
                ]
                if manifest is not None:
                    files.append(("manifest", (MANIFEST_NAME, io.BytesIO(manifest), "text/csv")))
                response = http.post(url, files=files, data=data, headers=headers, timeout=600)
        except (requests.ConnectionError, requests.Timeout) as exc:
            if attempt == len(delays):
                raise SubmitError(f"upload failed after {attempt + 1} attempts: {exc}") from exc
            print(f"upload interrupted ({exc}); retrying with the same key", file=sys.stderr)
            time.sleep(delays[attempt])
            continue
        if response.status_code in RETRY_STATUSES and attempt < len(delays):
            time.sleep(delays[attempt])
            continue
        break
    if response.status_code in (202, 422):
        return response.json()
    raise SubmitError(f"upload refused: HTTP {response.status_code}: {response.text[:500]}")


def route_counts(status: dict[str, Any]) -> dict[str, int]:
    """Scored images by route, as the batch JSON counts them (model.gate.Route)."""
    return {
        "flagged": status.get("flagged", 0),
        "cleared": status.get("cleared", 0),
        "manual_review": status.get("manual_review", 0),
    }


def summary(status: dict[str, Any]) -> str:
    """The closing line: every scored image is flagged, cleared or needs manual review."""
    c, r = status["counts"], route_counts(status)
    line = (
        f"scored {c.get('scored', 0)}: flagged {r['flagged']}, cleared {r['cleared']}, "
        f"needs manual review {r['manual_review']}; failed {c.get('failed', 0)}, "
        f"rejected {c.get('rejected', 0)}"
    )
    if status.get("drift_warning"):
        line += f"\nWARNING: {status['drift_warning']}"
    return line


def wait_for(http: requests.Session, base: str, batch_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status = http.get(f"{base}/api/v1/batches/{batch_id}", timeout=60).json()
    with tqdm(total=status["total"], desc="scoring", unit="img") as bar:
        while True:
            bar.total = status["total"]
            bar.n = status["done"]
            bar.set_postfix(**route_counts(status), failed=status["failed"])
            bar.refresh()
            if status["pending"] == 0:
                return status
            if time.monotonic() > deadline:
                raise SubmitError(f"batch {batch_id} not finished after {timeout:.0f} s")
            time.sleep(1.0)
            status = http.get(f"{base}/api/v1/batches/{batch_id}", timeout=60).json()


def run_submit(args: argparse.Namespace) -> int:
    base = args.url.rstrip("/")
    files = collect_files(args.paths)
    if not files:
        print("nothing to upload", file=sys.stderr)
        return 2
    if not args.token:
        print(
            "an API token is needed: --token or LEUKOSCREEN_TOKEN "
            "(an admin creates one: leukoscreen token create USER)",
            file=sys.stderr,
        )
        return 2
    try:
        files, manifest = take_manifest(files, getattr(args, "manifest", None))
    except SpecimenError as exc:
        print("the manifest does not match the files; nothing was uploaded:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    fields: dict[str, str] = {}
    if getattr(args, "specimen_folders", False):
        fields["specimen_folders"] = "1"
    if getattr(args, "specimen_id", None):
        fields["specimen_id"] = args.specimen_id
    http = requests.Session()
    http.headers["Authorization"] = f"Bearer {args.token}"
    batch_id: str | None = None
    counts = {"accepted": 0, "rejected": 0, "duplicate": 0}
    problems: list[dict[str, Any]] = []
    with tqdm(
        total=sum(p.stat().st_size for p, _ in files), desc="uploading", unit="B", unit_scale=True
    ) as bar:
        for part in plan_parts(files, args.part_files, args.part_bytes):
            body = upload_part(
                http,
                base,
                batch_id,
                part,
                args.name,
                args.submitted_by,
                fields=fields,
                manifest=part_manifest(manifest, part) if manifest is not None else None,
            )
            if body.get("problems"):
                print("specimen identities refused; this part was not recorded:", file=sys.stderr)
                for problem in body["problems"]:
                    print(f"  {problem}", file=sys.stderr)
                return 1
            batch_id = body.get("batch_id", batch_id)
            for key in counts:
                counts[key] += body.get(key, 0)
            for row in body.get("files", []):
                if row["status"] != "accepted":
                    problems.append(row)
                    if "batch_id" not in body:  # a 422 part: nothing of it was recorded
                        counts[row["status"]] += 1
            bar.update(sum(p.stat().st_size for p, _ in part))
    print(
        f"batch {batch_id}: {counts['accepted']} accepted, {counts['rejected']} rejected, "
        f"{counts['duplicate']} duplicate"
    )
    for row in problems:
        print(f"  {row['status']:9s} {row['file']}: {row.get('reason', '')}")
    if batch_id is None:
        print("no file was accepted; no batch was created", file=sys.stderr)
        return 1
    if args.wait or args.csv:
        status = wait_for(http, base, batch_id, args.timeout)
        print(summary(status))
        if args.csv:
            # The server's export (db.progress.RESULT_COLUMNS): route and route_reason included.
            response = http.get(
                f"{base}/api/v1/batches/{batch_id}/results", params={"format": "csv"}, timeout=600
            )
            response.raise_for_status()
            Path(args.csv).write_bytes(response.content)
            print(f"results written to {args.csv}")
    else:
        print(f"follow it at {base}/api/v1/batches/{batch_id}")
    return 0
