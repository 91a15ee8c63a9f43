"""Script 5: write a diffusers folder of the model with neurons permanently removed.

The chosen neurons' rows of the value layers' weights are zeroed, which equals
deactivating them with factor 0 (SPEC §1); StableDiffusionPipeline.from_pretrained
loads the result like any checkpoint.
"""

import logging

from utils import cli, defaults

logger = logging.getLogger("5_export_pruned_model")


def main(argv=None) -> None:
    parser = cli.parser_for(__doc__)
    parser.add_argument("-o", "--output", required=True, help="ours: folder to write the pruned pipeline to (it appears only once complete)")
    source = parser.add_argument_group("neurons to remove (one)").add_mutually_exclusive_group(required=True)
    source.add_argument("--neurons", help="a neuron list such as '[[], [12], [], [], [], [], [3, 9]]'")
    source.add_argument("-f", "--result_file", help="results of script 3: remove the union of all refined neurons")
    parser.add_argument("--top_k", type=cli.positive_int, default=None,
                        help="with --result_file: only the K most frequent refined neurons")
    cli.add_model_args(parser, default_dtype=defaults.SAVED_DTYPE, dtype_help="precision the pruned folder is written in")
    cli.add_run_args(parser, resumable=False, limit=False)
    args = cli.parse(parser, argv)

    from utils.outputs import claim_output, save_model_folder

    recorded = cli.run_record(args, inputs=("result_file",))
    if claim_output(args.output, recorded, args.overwrite, folder=True, record=False):
        print(f"{args.output} is complete with the same settings; nothing to do")
        return

    from utils.files import parse_neuron_set, read_results
    from utils.layers import count_neurons, layer_widths, value_layers
    from utils.methods.nemo import selection
    from utils.methods.nemo.export import prune_value_neurons
    from utils.models import load_pipeline_from_args

    pipe = load_pipeline_from_args(args)
    widths = layer_widths(value_layers(pipe.unet))
    if args.neurons:
        neurons = parse_neuron_set(args.neurons, widths, "--neurons")
    else:
        refined = list(read_results(args.result_file, widths)["Refined Neurons"])
        k = args.top_k if args.top_k is not None else len(selection.neuron_frequencies(refined))
        neurons = selection.top_k_overall(refined, k)
    prune_value_neurons(pipe.unet, neurons)
    save_model_folder(args.output, pipe, recorded)
    print(f"removed {count_neurons(neurons)} neurons; pruned model written to {args.output}")


if __name__ == "__main__":
    cli.run(main)
