"""Random tokens added to the prompt (Somepalli et al., NeurIPS 2023), the Table 1 baseline
(script 4 ``--random_tokens N``); the code in ``tokens``."""

from utils import cli
from utils.methods.registry import Mitigation, Row, register

RANDOM_TOKEN_COUNTS = (1, 4, 10)  # NeMo paper, Table 1
RANDOM_TOKEN_SEED = 0  # ours: seeds each prompt's draw with (seed, prompt index)


def add_options(parser) -> None:
    group = parser.add_argument_group("--random_tokens settings")
    group.add_argument("--random_token_seed", type=int, default=RANDOM_TOKEN_SEED,
                       help="seed of the tokens and positions (each prompt draws with (seed, prompt index))")


register(Mitigation(
    "random_tokens", "ours: N random vocabulary tokens added to each caption (Somepalli et al., NeurIPS 2023; "
    f"Table 1: {', '.join(map(str, RANDOM_TOKEN_COUNTS))})", "utils.methods.random_tokens.tokens:prepare",
    takes=cli.positive_int, metavar="N", add_options=add_options,
    rows=tuple(Row(f"{n} random token{'s' if n > 1 else ''}", 4 + k, "random_tokens", n)
               for k, n in enumerate(RANDOM_TOKEN_COUNTS))))
