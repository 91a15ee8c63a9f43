"""Training-image fetch speed on the loopback server (benchmarks/loopback.py): images a second at
several worker counts, with and without a per-request delay (what a remote host's latency
adds; parallel workers hide it), and the time of a rerun when every image is present.

    python -m benchmarks.fetch                                  # 300 images, 1/8/32 workers, 0 and 50 ms
    python -m benchmarks.fetch --images 100 --workers 1,4 --delays 0
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

from benchmarks.loopback import Loopback, Route, random_image
from utils.download import Settings, fetch_images


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300, help="images served")
    parser.add_argument("--size", type=int, default=64, help="side of each PNG (random noise, ~12 KB at 64)")
    parser.add_argument("--workers", default="1,8,32", help="comma-separated worker counts")
    parser.add_argument("--delays", default="0,0.05", help="comma-separated seconds the server waits per request")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    routes = {f"/{i}.png": Route(random_image(i, args.size), content_type="image/png") for i in range(args.images)}
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for delay in (float(d) for d in args.delays.split(",")):
            with Loopback(routes, delay=delay) as server:
                urls = {i: server.url(f"/{i}.png") for i in range(args.images)}
                for workers in (int(w) for w in args.workers.split(",")):
                    target = os.path.join(folder, f"delay{delay}_workers{workers}")
                    settings = Settings(workers=workers, timeout=30, retries=0, backoff=0)
                    start = time.perf_counter()
                    summary = fetch_images(urls, target, settings)
                    seconds = time.perf_counter() - start
                    if summary["saved"] != args.images:
                        raise ValueError(f"only {summary['saved']} of {args.images} images saved: {summary['by_status']}")
                    start = time.perf_counter()
                    fetch_images(urls, target, settings)  # everything present: only checks
                    rerun = time.perf_counter() - start
                    results[delay, workers] = dict(images_per_s=args.images / seconds, seconds=seconds, rerun_s=rerun)
                    print(f"delay {delay * 1000:4.0f} ms  workers {workers:3d}: {args.images / seconds:7.1f} images/s "
                          f"({seconds:.2f} s), rerun with all present {rerun:.3f} s", flush=True)
    return results


if __name__ == "__main__":
    main()
