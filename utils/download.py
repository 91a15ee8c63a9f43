"""The HTTP fetcher of ``0_fetch_assets.py``: catalogue files checked against their SHA-256,
and the training images of a prompt file's ``URL`` column, in parallel.

Every download is streamed to a hidden temporary (``utils.outputs.atomic_path``) and renamed
only once it is complete and checked, so a killed run never leaves a partial file under a
final name. Timeouts, dropped connections, truncated bodies, 5xx and 429 answers are retried
with exponential backoff; a 4xx, a wrong content type (an HTML error page served for an
image) or an undecodable image is not. Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, fields

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ReadTimeoutError

from utils import defaults
from utils.assets import RECORDED_HASHES, Asset
from utils.outputs import atomic_file, atomic_path, remove_leftovers, save_image, write_json

logger = logging.getLogger(__name__)

CHUNK = 1 << 16
USER_AGENT = "nemo-repro-fetch/1 (+https://github.com/ml-research/localizing_memorization_in_diffusion_models)"
IMAGE_NAME = "{row:04d}.png"  # utils.images.ORIGINAL_NAME: one PNG per prompt row
MANIFEST = "manifest.csv"
DEAD_LINKS = "dead_links.json"
MANIFEST_INTERVAL = 2.0  # seconds between two rewrites of the manifest during a run
RETRIED_CODES = {429, 500, 502, 503, 504}


class FetchError(ValueError):
    """A download that failed; ``status`` is the manifest's word for it."""

    def __init__(self, status: str, message: str, http_code: int | None = None, retryable: bool = False):
        super().__init__(message)
        self.status, self.http_code, self.retryable = status, http_code, retryable


@dataclass(frozen=True)
class Settings:
    workers: int = defaults.FETCH_WORKERS
    timeout: float = defaults.FETCH_TIMEOUT
    retries: int = defaults.FETCH_RETRIES
    backoff: float = defaults.FETCH_BACKOFF


def new_session(pool: int = 1) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool, pool_maxsize=pool)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def stream(session: requests.Session, url: str, sink, timeout: float, accepts, kind: str) -> int:
    """GET ``url`` and pass its body to ``sink`` chunk by chunk; returns the HTTP code (200).

    ``accepts(content_type)`` says whether the answer is what was asked for (``kind`` names it
    in the error). Raises FetchError."""
    try:
        with session.get(url, stream=True, timeout=(timeout, timeout)) as response:
            code = response.status_code
            if code != 200:
                raise FetchError("http_error", f"{url}: HTTP {code}", code, retryable=code in RETRIED_CODES)
            content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
            if not accepts(content_type):
                raise FetchError("wrong_type", f"{url}: served as {content_type or 'no content type'}, "
                                 f"expected {kind}", code)
            for chunk in response.iter_content(CHUNK):
                sink(chunk)
            return code
    except requests.exceptions.ChunkedEncodingError as error:  # urllib3: the body ended before Content-Length
        raise FetchError("truncated", f"{url}: body cut short ({error.__class__.__name__})", retryable=True) from None
    except requests.Timeout:
        raise FetchError("timeout", f"{url}: no answer within {timeout} s", retryable=True) from None
    except requests.ConnectionError as error:
        if error.args and isinstance(error.args[0], ReadTimeoutError):  # a read timeout while streaming
            raise FetchError("timeout", f"{url}: no data within {timeout} s", retryable=True) from None
        raise FetchError("connection_error", f"{url}: {error.__class__.__name__}", retryable=True) from None
    except requests.RequestException as error:  # a malformed URL, an unsupported scheme
        raise FetchError("bad_url", f"{url}: {error}") from None


def with_retries(attempt, settings: Settings):
    """``attempt()``, tried again after a retryable FetchError (backoff, 2x backoff, ...)."""
    for n in range(settings.retries + 1):
        try:
            return attempt()
        except FetchError as error:
            if not error.retryable or n == settings.retries:
                raise
            logger.debug("%s; retry %d of %d", error, n + 1, settings.retries)
            time.sleep(settings.backoff * 2 ** n)


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Catalogue files

def _not_html(content_type: str) -> bool:
    return content_type != "text/html"


def recorded_hashes(folder: str) -> dict[str, str]:
    """Hashes recorded on first download of assets that have no published one."""
    path = os.path.join(folder, RECORDED_HASHES)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _record_hash(folder: str, name: str, sha256: str) -> None:
    recorded = recorded_hashes(folder)
    recorded[name] = sha256
    write_json(os.path.join(folder, RECORDED_HASHES), dict(sorted(recorded.items())))
    logger.warning("%s has no published SHA-256; recorded %s in %s (later runs check against it)",
                   name, sha256, os.path.join(folder, RECORDED_HASHES))


def fetch_file(asset: Asset, root: str, settings: Settings, mirror: str | None = None,
               session: requests.Session | None = None) -> str:
    """Put ``asset`` at ``root/asset.destination`` unless it is there and passes its check.

    Returns "present" or "fetched". A download whose SHA-256 differs from the expected one is
    a ValueError naming the file and both hashes; nothing is left under the final name."""
    path = os.path.join(root, asset.destination)
    folder = os.path.dirname(path)
    remove_leftovers(folder)
    expected = asset.sha256 or recorded_hashes(folder).get(asset.name)
    if os.path.isfile(path):
        actual = sha256_of(path)
        if expected is None:
            _record_hash(folder, asset.name, actual)
            return "present"
        if actual == expected:
            return "present"
        logger.warning("%s fails its check (SHA-256 %s, expected %s): fetching it again", path, actual, expected)
    url = asset.source(mirror)
    session = session or new_session()

    def attempt() -> str:
        digest = hashlib.sha256()
        with atomic_path(path) as temporary, open(temporary, "wb") as f:
            stream(session, url, lambda chunk: (f.write(chunk), digest.update(chunk)), settings.timeout,
                   _not_html, "a file, not an HTML page")
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise ValueError(f"checksum mismatch for {path} (from {url}): SHA-256 {actual}, expected {expected}")
        return actual

    actual = with_retries(attempt, settings)
    if expected is None:
        _record_hash(folder, asset.name, actual)
    logger.info("fetched %s (%s)", path, url)
    return "fetched"


# ---------------------------------------------------------------------------------------
# Training images

@dataclass
class ImageRecord:
    """One row of the manifest: what was fetched for prompt ``row`` and what was saved."""

    row: int
    url: str
    status: str  # ok, no_url, http_error, wrong_type, timeout, truncated, connection_error, bad_url, decode_error
    http_code: str = ""  # the last answer's code; empty when none came
    bytes: int = 0  # size of the saved PNG
    sha256: str = ""  # of the saved PNG


MANIFEST_FIELDS = [f.name for f in fields(ImageRecord)]


def read_manifest(folder: str) -> dict[int, ImageRecord]:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return {}
    with open(path, newline="", encoding="utf-8") as f:
        return {int(r["row"]): ImageRecord(int(r["row"]), r["url"], r["status"], r["http_code"], int(r["bytes"]),
                                           r["sha256"]) for r in csv.DictReader(f)}


def write_manifest(folder: str, records: dict[int, ImageRecord]) -> None:
    with atomic_file(os.path.join(folder, MANIFEST), newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, MANIFEST_FIELDS)
        writer.writeheader()
        writer.writerows(asdict(records[row]) for row in sorted(records))


def _is_saved(folder: str, record: ImageRecord | None) -> bool:
    """A row whose image is saved and still has the hash its manifest recorded."""
    if record is None or record.status != "ok":
        return False
    path = os.path.join(folder, IMAGE_NAME.format(row=record.row))
    return os.path.isfile(path) and sha256_of(path) == record.sha256


def _is_image(content_type: str) -> bool:
    return content_type.startswith("image/")


def fetch_image(row: int, url: str, folder: str, session: requests.Session, settings: Settings) -> ImageRecord:
    """Download one training image, decode it and save it as RGB PNG; never raises for the URL's faults."""
    path = os.path.join(folder, IMAGE_NAME.format(row=row))
    if not url:
        return ImageRecord(row, url, "no_url")
    body = io.BytesIO()

    def attempt() -> int:
        body.seek(0)
        body.truncate()
        return stream(session, url, body.write, settings.timeout, _is_image, "an image")

    try:
        code = with_retries(attempt, settings)
    except FetchError as error:
        return ImageRecord(row, url, error.status, "" if error.http_code is None else str(error.http_code))
    from PIL import Image

    try:
        with Image.open(io.BytesIO(body.getvalue())) as image:
            rgb = image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError):
        return ImageRecord(row, url, "decode_error", str(code))
    save_image(path, rgb)
    return ImageRecord(row, url, "ok", str(code), os.path.getsize(path), sha256_of(path))


def prompt_urls(prompts: str) -> dict[int, str]:
    """The ``URL`` column of a prompt file by row (rows without one map to "")."""
    from utils.files import read_csv

    frame = read_csv(prompts, required=("URL",))
    return {row: str(url).strip() for row, url in frame["URL"].items()}


def fetch_images(urls: dict[int, str], folder: str, settings: Settings) -> dict:
    """Fetch every row of ``urls`` whose image is missing or fails its check into ``folder``
    (``IMAGE_NAME``), writing ``MANIFEST`` as it goes and ``DEAD_LINKS`` at the end.

    Returns the summary written to ``DEAD_LINKS``."""
    from tqdm import tqdm

    os.makedirs(folder, exist_ok=True)
    remove_leftovers(folder)
    previous = read_manifest(folder)
    records = {row: previous[row] for row in urls if row in previous and previous[row].url == urls[row]
               and _is_saved(folder, previous[row])}
    pending = [row for row in urls if row not in records]
    logger.info("%d of %d training images present, fetching %d into %s", len(records), len(urls), len(pending), folder)
    local = threading.local()

    def work(row: int) -> ImageRecord:
        if not hasattr(local, "session"):
            local.session = new_session()
        return fetch_image(row, urls[row], folder, local.session, settings)

    flushed = time.monotonic()
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        futures = [pool.submit(work, row) for row in pending]
        for future in tqdm(as_completed(futures), total=len(futures), desc="images", unit="image"):
            record = future.result()
            records[record.row] = record
            stale = os.path.join(folder, IMAGE_NAME.format(row=record.row))
            if record.status != "ok" and os.path.exists(stale):  # a saved image that failed its check
                os.remove(stale)
            if time.monotonic() - flushed >= MANIFEST_INTERVAL:
                write_manifest(folder, records)
                flushed = time.monotonic()
    write_manifest(folder, records)
    summary = dead_link_summary(records)
    write_json(os.path.join(folder, DEAD_LINKS), summary)
    return summary


def dead_link_summary(records: dict[int, ImageRecord]) -> dict:
    """Counts by status and every row without an image (row, status, HTTP code, URL)."""
    by_status: dict[str, int] = {}
    for record in records.values():
        by_status[record.status] = by_status.get(record.status, 0) + 1
    dead = [dict(row=r.row, status=r.status, http_code=r.http_code, url=r.url)
            for row, r in sorted(records.items()) if r.status != "ok"]
    return dict(rows=len(records), saved=by_status.get("ok", 0), dead=len(dead),
                dead_share=round(len(dead) / max(len(records), 1), 4),
                by_status=dict(sorted(by_status.items())), dead_rows=dead)
