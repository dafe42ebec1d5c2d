"""Run a bounded number of downloads at once behind one progress bar, and sort out the outcomes.

Shared by every file source (Binance archive, Tardis): a 404 means "not published" and is listed,
a failed file is named with its error, and neither stops the other downloads.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Generic, Hashable, TypeVar

from .http import DownloadError, NotFound

K = TypeVar("K", bound=Hashable)
Progress = Callable[[int, "int | None"], None]


@dataclass
class FetchResult(Generic[K]):
    downloaded: list[tuple[K, Path]] = field(default_factory=list)
    cached: list[tuple[K, Path]] = field(default_factory=list)
    missing: list[tuple[K, str]] = field(default_factory=list)  # 404: not published
    failed: list[tuple[K, str]] = field(default_factory=list)
    bytes: int = 0

    @property
    def ready(self) -> list[tuple[K, Path]]:
        return self.downloaded + self.cached


def run_downloads(
    items: list[K],
    fetch: Callable[[K, Progress], tuple[Path, bool]],
    *,
    jobs: int = 4,
    show_progress: bool = True,
    name: Callable[[K], str] = str,
) -> FetchResult[K]:
    """`fetch(item, progress) -> (path, was_cached)` for every item, `jobs` at a time."""
    from rich.progress import BarColumn, DownloadColumn, Progress as Bar, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    result: FetchResult[K] = FetchResult()
    lock = threading.Lock()
    totals: dict[K, int] = {}
    columns = [TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn()]
    with Bar(*columns, disable=not show_progress) as bar:
        task = bar.add_task(f"files 0/{len(items)}", total=None)

        def progress_for(item: K) -> Progress:
            def cb(n: int, total: int | None) -> None:
                with lock:
                    if total is not None and item not in totals:
                        totals[item] = total
                        bar.update(task, total=sum(totals.values()))
                    result.bytes += n
                bar.advance(task, n)

            return cb

        done = 0
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
            futs = {ex.submit(fetch, it, progress_for(it)): it for it in items}
            for fut in as_completed(futs):
                it = futs[fut]
                done += 1
                bar.update(task, description=f"files {done}/{len(items)}")
                try:
                    path, cached = fut.result()
                except NotFound as e:
                    result.missing.append((it, str(e)))
                except DownloadError as e:
                    result.failed.append((it, str(e)))
                except OSError as e:
                    result.failed.append((it, f"{name(it)}: {e}"))
                else:
                    (result.cached if cached else result.downloaded).append((it, path))
    order = {it: i for i, it in enumerate(items)}
    for lst in (result.downloaded, result.cached, result.missing, result.failed):
        lst.sort(key=lambda pair: order[pair[0]])
    return result
