"""Script 0: fetch and verify the files a run on Stable Diffusion reads (utils/assets.py).

Name what to fetch: the authors' prompt files and statistics (pinned to one commit, checked
against the SHA-256 the suite records), the SSCD checkpoints (hash recorded on first
download: none is published), and `training_images`, the images of a prompt file's URL
column (one RGB PNG per row, `{row:04d}.png`, as --originals expects, with manifest.csv and
dead_links.json). Groups: `sd14` (what the README's SD v1.4 commands read) and `all`.
A rerun fetches only what is missing or fails its check. Hub models (SD, CLIP) stay in the
Hugging Face cache: see the README.

    python 0_fetch_assets.py --list
    python 0_fetch_assets.py sd14
    python 0_fetch_assets.py sscd_disc_large training_images --images_from prompts/unmemorized_laion_prompts.csv \\
        --images_to unmemorized_images
"""

import logging
import os

from utils import cli, defaults
from utils.assets import CATALOGUE, MIRROR_ENV, NAMES, TRAINING_IMAGES, select

logger = logging.getLogger("0_fetch_assets")


def listing(names: list[str], args) -> str:
    """What ``names`` would fetch and where, one line each."""
    lines = []
    for name in names:
        if name == TRAINING_IMAGES:
            lines.append(f"{name:<20} {args.images_from} URL column -> {os.path.join(args.images_to, '{row:04d}.png')}"
                         " + manifest.csv, dead_links.json")
            continue
        asset = CATALOGUE[name]
        path = os.path.join(args.root, asset.destination)
        state = "present" if os.path.isfile(path) else "missing"
        check = f"sha256 {asset.sha256[:16]}..." if asset.sha256 else "sha256 recorded on first download"
        lines.append(f"{name:<20} {path} ({state}, {check}) <- {asset.source(args.mirror)}  [{asset.licence}]")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("assets", nargs="*", metavar="ASSET", help=f"what to fetch: {', '.join(NAMES)}")
    parser.add_argument("--list", action="store_true", help="show what the named assets (default: all) would fetch")
    parser.add_argument("--root", default=".", help="folder the destinations (prompts/, statistics/, weights/) are in")
    parser.add_argument("--mirror", default=os.environ.get(MIRROR_ENV),
                        help=f"fetch catalogue files from this server, same paths as the origin (env {MIRROR_ENV})")
    images = parser.add_argument_group("training images")
    images.add_argument("--images_from", default=defaults.ORIGINALS_FROM, help="prompt file whose URL column to fetch")
    images.add_argument("--images_to", default=defaults.ORIGINALS_FOLDER, help="folder of the images (--originals)")
    http = parser.add_argument_group("HTTP (ours; img2dataset: 10 s, no retries)")
    http.add_argument("--workers", type=cli.positive_int, default=defaults.FETCH_WORKERS, help="parallel downloads")
    http.add_argument("--timeout", type=cli.positive_float, default=defaults.FETCH_TIMEOUT,
                      help="seconds to connect and between two reads")
    http.add_argument("--retries", type=cli.non_negative_int, default=defaults.FETCH_RETRIES,
                      help="further tries after a timeout, dropped connection, truncated body, 5xx or 429")
    http.add_argument("--backoff", type=cli.non_negative_float, default=defaults.FETCH_BACKOFF,
                      help="seconds before the first retry, doubled each time")
    parser.add_argument("--log_level", default="INFO", help="logging level")
    args = cli.parse(parser, argv)
    names = select(args.assets or (["all"] if args.list else []))
    if args.list:
        print(listing(names, args))
        return
    if not names:
        raise ValueError(f"name what to fetch (e.g. sd14), or pass --list; assets: {', '.join(NAMES)}")

    from utils.download import Settings, fetch_file, fetch_images, new_session, prompt_urls

    settings = Settings(args.workers, args.timeout, args.retries, args.backoff)
    session = new_session()
    failed = []
    for name in names:
        if name == TRAINING_IMAGES:
            continue
        try:
            print(f"{name}: {fetch_file(CATALOGUE[name], args.root, settings, args.mirror, session)}")
        except ValueError as error:  # the other assets are still fetched
            failed.append(f"{name}: {error}")
            logger.error("%s", failed[-1])
    if TRAINING_IMAGES in names:
        folder = os.path.join(args.root, args.images_to)
        summary = fetch_images(prompt_urls(os.path.join(args.root, args.images_from)), folder, settings)
        print(f"{TRAINING_IMAGES}: {summary['saved']} of {summary['rows']} rows saved in {folder}, "
              f"{summary['dead']} dead {summary['by_status']} (see dead_links.json)")
    if failed:
        raise ValueError(f"{len(failed)} asset(s) failed: " + "; ".join(failed))


if __name__ == "__main__":
    cli.run(main)
