"""Attention scaling (Ren et al., ECCV 2024), the inference-time mitigation of Table 1
(script 4 ``--ren``); the code in ``attention``.

Defaults are those of the authors' mitigation command (renjie3/MemAttn,
``local_cmd_inference_time_mitigation.sh``: ``--c1 1.25 --cross_attn_mask``).
"""

from utils.methods.registry import Mitigation, Row, register

REN_BOS_LOGIT_FACTOR = 1.25  # text2img.py --c1 (1.0 there; 1.25 in local_cmd_inference_time_mitigation.sh)
REN_MASK_PADDING = True  # the mitigation command passes --cross_attn_mask


def add_options(parser) -> None:
    group = parser.add_argument_group("--ren settings (defaults: renjie3/MemAttn local_cmd_inference_time_mitigation.sh)")
    group.add_argument("--ren_factor", type=float, default=REN_BOS_LOGIT_FACTOR,
                       help="factor of the BOS token's attention logit, conditional branch (--c1)")
    group.add_argument("--ren_no_mask", action="store_true",
                       help="do not mask the keys after the first end token (their command masks: --cross_attn_mask)")


register(Mitigation("ren", "ours: attention scaling (Ren et al., ECCV 2024); settings below",
                    "utils.methods.ren.attention:prepare", add_options=add_options,
                    rows=(Row("attention scaling (Ren)", 3, "ren"),), cost="utils.methods.ren.attention:generation_cost"))
