"""Script 2: memorization score of each prompt and the threshold tau_mem (SPEC §3).

Score (--score, one registered detector per method, utils/methods/<name>): nemo, max pairwise
MS-SSIM of the first-step noise differences of --samples_per_prompt seeds; wen, Wen et al.'s
magnitude of the text-conditional noise prediction over a guided generation; anisotropy,
Asthana & Belagiannis's norm and anisotropy of the score difference at x_T; so the detectors
can be compared on the same prompt files. Rows are written as each prompt
finishes; at the end the threshold mean + 1 std over the prompts is printed and saved beside
the output. Run it on non-memorized prompts to calibrate tau_mem (paper: 0.428), on
memorized ones for detection (metrics.detection).
"""

from experiments import detect
from utils import cli


def main(argv=None) -> float | None:
    parser = cli.parser_for(__doc__)
    detect.add_args(parser)
    return detect.run(cli.parse(parser, argv))


if __name__ == "__main__":
    cli.run(main)
