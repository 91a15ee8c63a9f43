"""Script 4: generate images under a mitigation (SPEC §5 and the baselines of Table 1).

Without a mitigation flag nothing is changed. Each method registers its mitigation flag and
settings (utils/methods/<name>); the neuron modes read script 3's results, the others need only
a prompt file (--dataset or --prompts). -b prompts share a pipeline call, each with all its
--num_samples images (the authors' meaning). Images are named img_{prompt:04d}_{sample:02d}.jpg
(prompt = row of the results or prompt file), each saved atomically; settings.json (what made
the folder), config.json of the run and prompt_records.jsonl (per prompt: caption used, added
tokens, cost; under a launcher, process RANK > 0 writes prompt_records.{RANK}.jsonl) are written
beside them. A prompt is done once its record follows its images, so a killed run continues when
the same command is run again; other settings in the same folder are refused.
"""

from experiments import generate
from utils import cli


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    generate.add_args(parser)
    generate.run(cli.parse(parser, argv, check=generate.check))


if __name__ == "__main__":
    cli.run(main)
