"""The downloader core: one job per model, fetching its missing binaries into storage, verified, with
progress published to watchers and reported to the catalog. Knows nothing about gRPC servers.

Jobs are persisted under JAN_ROOT/.downloads/jobs, so a restarted downloader resumes the jobs that were
running (the bytes already on disk are kept by the fetcher's sidecars) and still lists ended ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import orjson

from jan.downloader.v1 import downloader_service_pb2 as pb
from jan.model.v1 import model_pb2
from services.common import netsafety
from services.common.catalog_client import CatalogClient
from services.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    ResourceExhausted,
)
from services.common.filesafety import remove_written, write_atomic
from services.common.storage import Storage
from services.downloader.fetch import Fetcher, FetchError, FetchOptions, make_session, sidecar_of
from services.downloader.settings import DownloaderSettings

if TYPE_CHECKING:
    import aiohttp

log = logging.getLogger(__name__)

P = pb.Phase
ACTIVE = (P.PHASE_QUEUED, P.PHASE_CONNECTING, P.PHASE_DOWNLOADING, P.PHASE_VERIFYING, P.PHASE_STORING)
ENDED = (P.PHASE_DONE, P.PHASE_FAILED, P.PHASE_CANCELLED)


@dataclass
class FileJob:
    name: str
    url: str
    sha256: str = ""
    size: int = 0
    phase: int = P.PHASE_QUEUED
    done: int = 0
    total: int = 0
    error: str = ""


@dataclass
class Job:
    model_id: str
    files: list[FileJob]
    phase: int = P.PHASE_QUEUED
    error: str = ""
    error_code: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))
    speed: float = 0.0
    # Runtime only (not persisted).
    task: asyncio.Task[None] | None = field(default=None, repr=False, compare=False)
    version: int = field(default=0, repr=False, compare=False)
    changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    pausing: bool = field(default=False, repr=False, compare=False)

    @property
    def folder(self) -> str:
        return self.model_id.split("/", 1)[0]

    @property
    def bytes_done(self) -> int:
        return sum(f.done for f in self.files)

    @property
    def bytes_total(self) -> int:
        totals = [f.total or f.size for f in self.files]
        return sum(totals) if all(totals) else 0

    def to_pb(self) -> pb.Job:
        total = self.bytes_total
        eta = (total - self.bytes_done) / self.speed if total and self.speed > 0 else -1.0
        return pb.Job(
            model_id=self.model_id,
            phase=self.phase,  # type: ignore[arg-type]
            bytes_done=self.bytes_done,
            bytes_total=total,
            bytes_per_second=self.speed if self.phase in ACTIVE else 0.0,
            eta_seconds=eta if self.phase in ACTIVE else -1.0,
            files=[
                pb.FileProgress(
                    name=f.name,
                    url=f.url,
                    phase=f.phase,  # type: ignore[arg-type]
                    bytes_done=f.done,
                    bytes_total=f.total or f.size,
                    sha256=f.sha256,
                    error=f.error,
                )
                for f in self.files
            ],
            error=self.error,
            error_code=self.error_code,
            created=self.created,
            updated=self.updated,
        )

    def persisted(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "files": [asdict(f) for f in self.files],
            "phase": self.phase,
            "error": self.error,
            "error_code": self.error_code,
            "created": self.created,
            "updated": self.updated,
        }


class Downloader:
    def __init__(
        self,
        settings: DownloaderSettings,
        storage: Storage,
        catalog: CatalogClient,
        resolver: netsafety.Resolver = netsafety.default_resolver,
    ) -> None:
        self.settings = settings
        self.storage = storage
        self.catalog = catalog
        self.resolver = resolver
        self.jobs: dict[str, Job] = {}
        self.jobs_dir = settings.state_dir / "jobs"
        # Bytes received and jobs ended (by result), for the process's metrics: __main__ wires them.
        self.on_received: Callable[[int], None] = lambda n: None
        self.on_ended: Callable[[str], None] = lambda result: None
        self.options = FetchOptions(
            connections=settings.connections,
            min_split_bytes=settings.min_split_bytes,
            chunk_bytes=settings.chunk_bytes,
            stall_timeout_s=settings.stall_timeout_s,
            connect_timeout_s=settings.connect_timeout_s,
            retries=settings.retries,
            backoff_initial_s=settings.backoff_initial_s,
            backoff_max_s=settings.backoff_max_s,
            max_file_bytes=settings.max_file_bytes,
            allow_private_networks=settings.allow_private_networks,
        )
        # The Hub API's session, made at the first repository import: aiohttp is ~10 MB of resident
        # memory that a downloader which only fetches files (through httpconn) never needs.
        self.session: aiohttp.ClientSession | None = None
        self.fetcher: Fetcher | None = None

    # --- life cycle ---------------------------------------------------------------------------------------

    async def start(self) -> None:
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.jobs_dir.glob(".*.tmp"):  # a job record's save cut by a kill -9
            leftover.unlink(missing_ok=True)
        self.fetcher = Fetcher(self.options, self.resolver)
        for path in sorted(self.jobs_dir.glob("*.json")):
            job = self._load(path)
            if job is None:
                continue
            self.jobs[job.model_id] = job
            if job.phase in ACTIVE:
                log.info("resuming the download of %s after a restart", job.model_id)
                job.phase = P.PHASE_QUEUED
                self._launch(job)

    async def close(self) -> None:
        for job in self.jobs.values():
            if job.task is not None and not job.task.done():
                job.task.cancel()
        for job in self.jobs.values():
            if job.task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job.task
        if self.session is not None:
            await self.session.close()

    def _path(self, model_id: str) -> Path:
        return self.jobs_dir / f"{quote(model_id, safe='')}.json"

    def _load(self, path: Path) -> Job | None:
        try:
            raw = orjson.loads(path.read_bytes())
            files = [FileJob(**f) for f in raw.pop("files")]
            return Job(files=files, **raw)
        except (OSError, ValueError, TypeError, KeyError):
            log.warning("ignoring unreadable job file %s", path)
            return None

    def _save(self, job: Job) -> None:
        job.updated = int(time.time())
        write_atomic(self._path(job.model_id), orjson.dumps(job.persisted()))

    def _publish(self, job: Job) -> None:
        job.version += 1
        job.changed.set()
        job.changed = asyncio.Event()

    # --- operations ---------------------------------------------------------------------------------------

    async def start_download(self, model_id: str) -> tuple[Job, bool]:
        job = self.jobs.get(model_id)
        if job is not None and (job.phase in ACTIVE or (job.task is not None and not job.task.done())):
            return job, False
        if job is not None and job.phase == P.PHASE_PAUSED:
            return await self.resume(model_id), False
        model = await self.catalog.get_model(model_id)
        files = self._files_to_fetch(model)
        if not files and job is not None:
            return job, False  # complete already: the record of the download that made it stays
        await asyncio.to_thread(self._preflight, model, files)
        job = Job(model_id=model_id, files=files)
        self.jobs[model_id] = job
        self._save(job)
        # Before answering: whoever asks the catalog next sees the model downloading, not missing.
        await self._report(job)
        self._launch(job)
        return job, True

    def _files_to_fetch(self, model: model_pb2.Model) -> list[FileJob]:
        if model.engine in ("api", "tensorrt"):
            raise FailedPrecondition(
                f"{model.id} runs on a remote {model.engine} server: there is nothing to download",
                code="nothing_to_download",
            )
        missing = [b for b in model.binaries if not b.present]
        if not model.binaries:
            raise FailedPrecondition(
                f"{model.id} names no binary to download (give it a source_url or metadata.binaries)",
                code="nothing_to_download",
            )
        no_url = [b.name for b in missing if not b.url]
        if no_url:
            raise FailedPrecondition(
                f"{model.id} misses {', '.join(no_url)} and has no URL to fetch it from", code="no_source_url"
            )
        return [FileJob(name=b.name, url=b.url, sha256=b.sha256, size=b.size) for b in missing]

    def _preflight(self, model: model_pb2.Model, files: list[FileJob]) -> None:
        for f in files:
            netsafety.require_safe_url(
                f.url, allow_private=self.settings.allow_private_networks, resolver=self.resolver
            )
            if f.size > self.settings.max_file_bytes:
                raise InvalidArgument(
                    f"{f.name} is {f.size} bytes, above the size cap of {self.settings.max_file_bytes}",
                    code="too_large",
                )
        self._check_space(model.id.split("/", 1)[0], files)

    def _check_space(self, folder: str, files: list[FileJob]) -> None:
        # Contents stored already are linked, not downloaded: they need no space.
        new = [f for f in files if not (f.sha256 and self.storage.has_content(f.sha256))]
        needed = sum(max(0, (f.size or f.total) - self._partial_size(folder, f.name)) for f in new)
        free = self.storage.free_bytes(folder)
        if free is not None and needed + self.settings.reserve_bytes > free:
            raise ResourceExhausted(
                f"not enough space: the download needs {_human(needed)}"
                f" (+{_human(self.settings.reserve_bytes)} kept free) and {_human(free)} is free",
                code="insufficient_space",
            )

    def _partial_size(self, folder: str, name: str) -> int:
        try:
            return self.storage.partial_path(folder, name).stat().st_size
        except OSError:
            return 0

    def get(self, model_id: str) -> Job:
        job = self.jobs.get(model_id)
        if job is None:
            raise NotFound(f"no download job for {model_id}", code="download_not_found", param="model_id")
        return job

    async def pause(self, model_id: str) -> Job:
        job = self.get(model_id)
        if job.phase in ENDED or job.phase == P.PHASE_PAUSED:
            return job
        job.pausing = True
        await self._stop_task(job)
        job.pausing = False
        job.phase = P.PHASE_PAUSED
        for f in job.files:
            if f.phase in ACTIVE:
                f.phase = P.PHASE_PAUSED
        self._save(job)
        self._publish(job)
        await self._report(job, reason="download paused")
        return job

    async def resume(self, model_id: str) -> Job:
        job = self.get(model_id)
        if job.phase != P.PHASE_PAUSED:
            if job.phase in ENDED:
                raise FailedPrecondition(
                    f"the download of {model_id} has ended; start it again", code="job_ended"
                )
            return job
        await asyncio.to_thread(
            self._check_space, job.folder, [f for f in job.files if f.phase != P.PHASE_DONE]
        )
        job.phase = P.PHASE_QUEUED
        self._save(job)
        self._launch(job)
        return job

    async def cancel(self, model_id: str) -> Job:
        job = self.get(model_id)
        if job.phase in ENDED:
            return job
        await self._stop_task(job)
        for f in job.files:
            if f.phase != P.PHASE_DONE:
                f.phase = P.PHASE_CANCELLED
                await asyncio.to_thread(self._remove_partial, job.folder, f.name)
        job.phase = P.PHASE_CANCELLED
        job.error, job.error_code = "cancelled", "cancelled"
        self._save(job)
        self._publish(job)
        await self._report(job, reason="download cancelled")
        return job

    def _remove_partial(self, folder: str, name: str) -> None:
        partial = self.storage.partial_path(folder, name)
        partial.unlink(missing_ok=True)
        remove_written(sidecar_of(partial))
        if self.storage.stat(folder, name) is None:
            # Also aborts a half-done upload to a bucket.
            self.storage.delete(folder, name)

    async def _stop_task(self, job: Job) -> None:
        if job.task is not None and not job.task.done():
            job.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await job.task
        job.task = None

    def list_jobs(self) -> list[Job]:
        now = time.time()
        for model_id, job in list(self.jobs.items()):
            if job.phase in ENDED and now - job.updated > self.settings.keep_finished_s:
                del self.jobs[model_id]
                self._path(model_id).unlink(missing_ok=True)
        return sorted(self.jobs.values(), key=lambda j: j.model_id)

    async def watch(self, model_id: str) -> AsyncIterator[Job]:
        job = self.get(model_id)
        while True:
            event = job.changed
            yield job
            if job.phase in ENDED or job.phase == P.PHASE_PAUSED:
                return
            await event.wait()
            # Throttle: watchers see at most a few states a second, however fast the bytes come.
            await asyncio.sleep(self.settings.progress_interval_s)

    # --- running a job ------------------------------------------------------------------------------------

    def _launch(self, job: Job) -> None:
        job.task = asyncio.create_task(self._run(job), name=f"download {job.model_id}")

    async def _run(self, job: Job) -> None:
        assert self.fetcher is not None
        ticking = asyncio.Event()
        ticker = asyncio.create_task(self._tick(job, ticking))

        async def stop_ticking() -> None:
            # Before the final report: a periodic "downloading" report must not arrive after it.
            ticking.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(ticker)

        try:
            await self._report(job)  # the model is "downloading" from the first moment
            for f in job.files:
                if f.phase == P.PHASE_DONE:
                    continue
                await self._fetch_file(job, f)
            await stop_ticking()
            await self._write_back(job)
            # The catalog hears first: whoever sees the job done then sees the model downloaded.
            await self._report(job, state=model_pb2.MODEL_STATE_UNSPECIFIED)
            job.phase = P.PHASE_DONE
            job.error = job.error_code = ""
            self._save(job)
            log.info("downloaded %s (%s)", job.model_id, _human(job.bytes_done))
            self.on_ended("done")
        except asyncio.CancelledError:
            raise
        except FetchError as exc:
            await stop_ticking()
            await self._fail(job, exc.code, exc.message)
        except Exception as exc:
            log.exception("download of %s failed", job.model_id)
            await stop_ticking()
            await self._fail(job, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            # Also when the job is cancelled (pause, cancel): the caller reports next.
            await stop_ticking()
            self._publish(job)

    async def _fetch_file(self, job: Job, f: FileJob) -> None:
        assert self.fetcher is not None
        if f.sha256 and await self._link_stored(job, f):
            return
        partial = self.storage.partial_path(job.folder, f.name)
        partial.parent.mkdir(parents=True, exist_ok=True)
        f.phase = job.phase = P.PHASE_CONNECTING
        self._publish(job)

        def progress(done: int, total: int) -> None:
            self.on_received(done - f.done)
            f.done = done
            if total > 0:
                f.total = total
            if f.phase == P.PHASE_CONNECTING:
                f.phase = job.phase = P.PHASE_DOWNLOADING

        def sha_known(sha: str) -> None:
            f.sha256 = sha

        auth = {}
        token = self.settings.hf_token.get_secret_value()
        if token and f.url.startswith(self.settings.hf_endpoint + "/"):
            auth = {"Authorization": f"Bearer {token}"}
        result = await self.fetcher.fetch(
            f.url,
            partial,
            expected_sha256=f.sha256,
            expected_size=f.size,
            auth=auth,
            progress=progress,
            on_sha256_known=sha_known,
        )
        f.phase = job.phase = P.PHASE_STORING
        f.sha256, f.size, f.done, f.total = result.sha256, result.size, result.size, result.size
        self._publish(job)

        def stored(n: int) -> None:
            return None

        await asyncio.to_thread(
            self.storage.commit, job.folder, f.name, sha256=result.sha256, progress=stored
        )
        f.phase = P.PHASE_DONE
        self._save(job)
        self._publish(job)

    async def _link_stored(self, job: Job, f: FileJob) -> bool:
        """Bytes with the expected digest that are stored already (another folder's binary) are linked,
        not downloaded again: True when the file is done that way."""
        folder = job.folder
        if not await asyncio.to_thread(self.storage.link_content, folder, f.name, f.sha256):
            return False
        size = await asyncio.to_thread(self.storage.stat, folder, f.name)
        f.size = f.done = f.total = size or f.size
        f.phase = P.PHASE_DONE
        # A partial left by an earlier, interrupted attempt (and its sidecars) is of no use any more.
        partial = self.storage.partial_path(folder, f.name)
        for path in partial.parent.glob(f"{partial.name}*"):  # bytes, sidecar, a bucket upload record
            path.unlink(missing_ok=True)
        remove_written(sidecar_of(partial))  # and a sidecar's temp copy a kill -9 left
        log.info(
            "%s of %s: %s already stored, linked instead of downloaded", f.name, job.model_id, _human(f.size)
        )
        self._save(job)
        self._publish(job)
        return True

    async def _tick(self, job: Job, stop: asyncio.Event) -> None:
        """Publishes progress, computes the speed, persists and reports to the catalog now and then.
        It ends only between reports (when `stop` is set), so no report of it can overtake the final one."""
        last_bytes, last_time = job.bytes_done, time.monotonic()
        last_report = 0.0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.settings.progress_interval_s)
                return
            now = time.monotonic()
            done = job.bytes_done
            instant = (done - last_bytes) / max(now - last_time, 1e-6)
            job.speed = instant if job.speed == 0 else 0.7 * job.speed + 0.3 * instant
            last_bytes, last_time = done, now
            self._publish(job)
            if now - last_report >= 1.0:
                last_report = now
                self._save(job)
                await self._report(job)

    async def _fail(self, job: Job, code: str, message: str) -> None:
        log.warning("download of %s failed: %s", job.model_id, message)
        self.on_ended(code)
        job.phase = P.PHASE_FAILED
        job.error, job.error_code = message, code
        for f in job.files:
            if f.phase != P.PHASE_DONE:
                f.phase = P.PHASE_FAILED
                f.error = message
        self._save(job)
        await self._report(job, reason=f"download failed: {message}")

    async def _report(
        self, job: Job, reason: str = "", state: model_pb2.ModelState.ValueType | None = None
    ) -> None:
        if state is None:
            state = (
                model_pb2.MODEL_STATE_DOWNLOADING
                if job.phase in ACTIVE
                else model_pb2.MODEL_STATE_UNSPECIFIED
            )
        try:
            await self.catalog.report(job.model_id, state, reason, job.bytes_done, job.bytes_total)
        except Exception as exc:  # the catalog being away must not stop a download
            log.warning("cannot report %s to the catalog: %s", job.model_id, exc)

    async def _write_back(self, job: Job) -> None:
        """Records what the download learned (exact sizes, verified digests) in the model object."""
        try:
            model = await self.catalog.get_model(job.model_id)
        except Exception as exc:
            log.warning("cannot read %s back: %s", job.model_id, exc)
            return
        if any(b.external_path or not b.url for b in model.binaries):
            return
        learned = {f.name: f for f in job.files}
        binaries: list[dict[str, Any]] = []
        for b in model.binaries:
            f = learned.get(b.name)
            entry: dict[str, Any] = {"name": b.name, "url": b.url}
            sha, size = (f.sha256, f.size) if f else (b.sha256, b.size)
            if sha:
                entry["sha256"] = sha
            if size:
                entry["size"] = size
            binaries.append(entry)
        patch: dict[str, Any] = {"binaries": binaries}
        total = sum(b.get("size", 0) for b in binaries)
        if total:
            patch["size"] = total
        try:
            await self.catalog.update_metadata(job.model_id, patch)
        except Exception as exc:
            log.warning("cannot record what was learned about %s: %s", job.model_id, exc)

    # --- Hugging Face -------------------------------------------------------------------------------------

    async def import_repository(self, repo_url: str, folder: str = "") -> tuple[str, list[model_pb2.Model]]:
        from services.downloader import hf  # aiohttp: only for repository imports

        if self.session is None:
            self.session = make_session(self.options, self.resolver)
        try:
            ref = hf.parse_repo_url(repo_url, self.settings.hf_endpoint)
        except ValueError as exc:
            raise InvalidArgument(str(exc), code="invalid_repo_url", param="source_url") from None
        endpoint = self.settings.hf_endpoint
        await asyncio.to_thread(
            netsafety.require_safe_url,
            endpoint,
            allow_private=self.settings.allow_private_networks,
            resolver=self.resolver,
            param=None,
            label="HF_ENDPOINT refused: ",
        )
        try:
            files = await hf.list_repo_files(
                self.session, endpoint, ref, token=self.settings.hf_token.get_secret_value()
            )
        except hf.HubError as exc:
            if exc.code == "hf_repo_not_found":
                raise NotFound(str(exc), code=exc.code, param="source_url") from None
            raise FailedPrecondition(str(exc), code=exc.code, param="source_url") from None
        planned = hf.plan_models(endpoint, ref, files)
        if not planned:
            raise FailedPrecondition(
                f"{ref.org}/{ref.repo} has no GGUF file to import", code="no_gguf_in_repo", param="source_url"
            )
        folder = folder or ref.repo
        created = []
        repo_page = f"{endpoint}/{ref.org}/{ref.repo}"
        for plan in planned:
            metadata: dict[str, Any] = {
                "engine": "llamacpp",
                "size": plan.size,
                "binaries": [
                    {
                        k: v
                        for k, v in (("name", b.name), ("url", b.url), ("sha256", b.sha256), ("size", b.size))
                        if v
                    }
                    for b in plan.binaries
                ],
            }
            if plan.quantization:
                metadata["quantization"] = plan.quantization
            model_id = f"{folder}/{plan.stem}"
            try:
                model = await self.catalog.create_model(
                    model_id=model_id,
                    source_url=repo_page,
                    name=plan.name,
                    metadata=metadata,
                    owned_by=ref.org,
                )
            except AlreadyExists:
                # Imported before: keep the user's object, and still add quantizations that are new.
                model = await self.catalog.get_model(model_id)
            created.append(model)
        return folder, created


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"
