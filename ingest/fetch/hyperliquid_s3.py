"""Hyperliquid's public S3 archives: fills (node_fills_by_block) and order books (l2Book).

Both buckets are *requester-pays*: AWS bills the downloader, so every request must be signed with
the user's own AWS credentials and carry `--request-payer requester`. boto3 is not a dependency
(one CLI call per object does the job), so this module plans the objects, checks that the `aws`
CLI and some credentials are there, says exactly what is missing and the commands it would run,
and runs `aws s3 cp` into `.part` files that are renamed only when complete. Fills are in
`node_fills_by_block` from 2025-07-27 on (see ../shared/reference/data_formats.md §4).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Callable

FILLS_BUCKET = "hl-mainnet-node-data"
BOOK_BUCKET = "hyperliquid-archive"
KINDS = ("fills", "l2book")
FILLS_FROM = date(2025, 7, 27)


class S3Unavailable(RuntimeError):
    """No `aws` CLI or no credentials: the message says what to install or set, and what would run."""


@dataclass(frozen=True)
class S3Object:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def plan(kind: str, days: list[date], hours: list[int], coins: list[str] | None = None) -> list[S3Object]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use fills (node_fills_by_block) or l2book")
    bad = [h for h in hours if not 0 <= h <= 23]
    if bad:
        raise ValueError(f"hours must be 0..23, got {bad}")
    out = []
    for d in days:
        for h in hours:
            if kind == "fills":
                if d < FILLS_FROM:
                    raise ValueError(f"{d}: node_fills_by_block starts {FILLS_FROM}; earlier days are in node_fills/node_trades")
                out.append(S3Object(FILLS_BUCKET, f"node_fills_by_block/hourly/{d:%Y%m%d}/{h}.lz4"))
            else:
                if not coins:
                    raise ValueError("l2book needs --coins (e.g. BTC ETH SOL)")
                out.extend(S3Object(BOOK_BUCKET, f"market_data/{d:%Y%m%d}/{h}/l2Book/{c.upper()}.lz4") for c in coins)
    return out


def parse_hours(spec: str) -> list[int]:
    """`20-23`, `21`, `0,6,12`, or `all`."""
    if spec.strip() == "all":
        return list(range(24))
    out: set[int] = set()
    for part in spec.split(","):
        if "-" in part:
            a, b = (int(x) for x in part.split("-"))
            out.update(range(a, b + 1))
        elif part.strip():
            out.add(int(part))
    return sorted(out)


def local_path(cache: Path, o: S3Object) -> Path:
    return Path(cache) / "hyperliquid" / o.bucket / o.key


def command(o: S3Object, dest: Path, aws: str = "aws") -> list[str]:
    return [aws, "s3", "cp", "--request-payer", "requester", "--only-show-errors", o.uri, str(dest)]


def credentials_hint(env: dict[str, str] | None = None) -> str | None:
    """None if AWS credentials are configured in a way the CLI will find; else what to set.

    Only whether they exist is looked at (environment names, the files' presence), never their values.
    """
    env = dict(os.environ if env is None else env)
    if env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE") or env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI") \
            or env.get("AWS_WEB_IDENTITY_TOKEN_FILE"):
        return None
    home = Path(env.get("HOME", str(Path.home())))
    files = [env.get("AWS_SHARED_CREDENTIALS_FILE") or str(home / ".aws" / "credentials"),
             env.get("AWS_CONFIG_FILE") or str(home / ".aws" / "config")]
    if any(Path(f).is_file() for f in files):
        return None
    return ("no AWS credentials found: the Hyperliquid buckets are requester-pays, so downloads are billed to "
            "your AWS account and must be signed. Run `aws configure` (or set AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)")


def check(objs: list[S3Object], cache: Path, *, env: dict[str, str] | None = None) -> str:
    """The `aws` binary to run; raises S3Unavailable naming what is missing and the commands."""
    env = dict(os.environ if env is None else env)
    aws = shutil.which("aws", path=env.get("PATH"))
    problems = []
    if aws is None:
        problems.append("the AWS CLI (`aws`) is not installed or not on PATH (https://aws.amazon.com/cli/; "
                        "`pip install awscli` also works)")
    hint = credentials_hint(env)
    if hint:
        problems.append(hint)
    if problems:
        cmds = "\n".join("  " + " ".join(command(o, local_path(cache, o))) for o in objs[:10])
        more = f"\n  ... and {len(objs) - 10} more" if len(objs) > 10 else ""
        raise S3Unavailable("cannot download from Hyperliquid's S3 archive:\n- " + "\n- ".join(problems)
                            + f"\nWith those in place, crashlab would run:\n{cmds}{more}")
    return str(aws)


def fetch(
    objs: list[S3Object],
    cache: Path,
    *,
    aws: str,
    env: dict[str, str] | None = None,
    run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
    log: Callable[[str], None] | None = None,
) -> tuple[list[tuple[S3Object, Path]], list[tuple[S3Object, str]]]:
    """Copy each object to the cache (skipping ones already there): (done, failed with the CLI's error)."""
    done, failed = [], []
    for o in objs:
        dest = local_path(cache, o)
        if dest.exists() and dest.stat().st_size > 0:
            done.append((o, dest))
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        part = dest.with_name(dest.name + ".part")
        if log:
            log(f"{o.uri} -> {dest}")
        p = run(command(o, part, aws), capture_output=True, text=True, env=env)
        if p.returncode != 0 or not part.exists():
            part.unlink(missing_ok=True)
            err = (p.stderr or p.stdout or "").strip().splitlines()
            failed.append((o, f"{o.uri}: aws s3 cp exited {p.returncode}: {err[-1] if err else 'no output'}"))
            continue
        os.replace(part, dest)
        done.append((o, dest))
    return done, failed
