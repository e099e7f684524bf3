"""The ``nasfpn`` command. Bad input ends with one line naming what is wrong and exit code 2."""
from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path
from typing import Sequence

from .genotype import GenotypeError, load_genotype, reference_names
from .space import SpaceError, load_space, space_names

log = logging.getLogger("nasfpn")
RESNET50_CHANNELS = "512,1024,2048"


class UsageError(Exception):
    """Bad input from the command line: printed as one line, exit code 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    try:
        return args.run(args) or 0
    except (UsageError, GenotypeError, SpaceError, ValueError, OSError) as err:
        print(f"nasfpn {args.command}: error: {err}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasfpn", description="Search, inspect, draw and export neck topologies.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    refs = ", ".join(reference_names())

    def genotype_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument("genotype", metavar="GENOTYPE", help=f"a genotype YAML file or a reference name ({refs})")

    def channel_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--in-channels", default=RESNET50_CHANNELS, metavar="C3,C4,C5",
                       help=f"backbone channels, finest first (default: ResNet-50's {RESNET50_CHANNELS})")
        p.add_argument("--width", type=int, default=None, help="neck width (default: the genotype's)")

    p = sub.add_parser("info", help="validate a genotype; print its hash, parameters and multiply-adds")
    genotype_arg(p)
    channel_args(p)
    p.add_argument("--image-size", type=int, default=512, help="square input size for multiply-adds (default 512)")
    p.set_defaults(run=_info)

    p = sub.add_parser("export", help="write a genotype's neck as a standalone PyTorch module")
    genotype_arg(p)
    channel_args(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="the .py file to write")
    p.add_argument("--class-name", default="ExportedNeck", help="name of the module class (default ExportedNeck)")
    p.add_argument("--onnx", type=Path, default=None, help="also write an ONNX graph here (needs the onnx package)")
    p.add_argument("--weights", type=Path, default=None,
                   help="a state dict (torch.save of the neck's state_dict) to put in the ONNX graph")
    p.set_defaults(run=_export)

    p = sub.add_parser("draw", help="draw a genotype's cell (.png or .svg)")
    genotype_arg(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="cell.png or cell.svg")
    p.set_defaults(run=_draw)

    p = sub.add_parser("sample", help="sample genotypes from a search space; profile, draw and export them")
    p.add_argument("--space", default="wide", help=f"a space YAML file or name ({', '.join(space_names())})")
    p.add_argument("-n", "--count", type=int, default=8, help="how many genotypes (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/sample"), help="output folder (default runs/sample)")
    channel_args(p)
    p.add_argument("--image-size", type=int, default=512)
    p.set_defaults(run=_sample)
    return parser


def _channels(text: str, levels: Sequence[int]) -> dict[int, int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise UsageError(f"--in-channels {text!r}: expected comma-separated integers like {RESNET50_CHANNELS}") from None
    if len(values) != len(levels) or min(values) < 1:
        raise UsageError(f"--in-channels {text!r}: need {len(levels)} positive values, one per backbone level {list(levels)}")
    return dict(zip(levels, values))


def _info(args: argparse.Namespace) -> None:
    from .profile import neck_cost

    genotype = load_genotype(args.genotype)
    channels = _channels(args.in_channels, genotype.backbone_levels)
    cost = neck_cost(genotype, channels, args.image_size, args.width)
    canonical = genotype.canonical()
    spaces = [name for name in space_names() if load_space(name).contains(genotype)]
    print(f"name        {genotype.name or '-'}")
    print(f"hash        {genotype.hash()[:12]}")
    print(f"nodes       {len(genotype.nodes)} as written, {len(canonical.nodes)} canonical, x {genotype.repeats} repeats")
    print(f"width       {args.width or genotype.width}")
    print(f"params      {cost['params']:,}")
    print(f"MACs        {cost['macs'] / 1e9:.2f} G at {args.image_size}x{args.image_size}, in-channels {args.in_channels}")
    print(f"in spaces   {', '.join(spaces) or '-'}")


def _export(args: argparse.Namespace) -> None:
    from .export import export_neck

    if args.weights is not None and args.onnx is None:
        raise UsageError("--weights goes with --onnx (the .py module is written without weights)")
    if args.output.suffix != ".py":
        raise UsageError(f"-o {args.output}: the exported module must be a .py file")
    genotype = load_genotype(args.genotype)
    channels = _channels(args.in_channels, genotype.backbone_levels)
    export_neck(genotype, channels, args.output, args.width, args.class_name)
    print(f"wrote {args.output}")
    if args.onnx is not None:
        import torch

        from .export import export_onnx, load_exported

        neck = load_exported(args.output, args.class_name).eval()
        if args.weights is not None:
            try:  # weights_only: tensors, never arbitrary objects, from the user's file
                state = torch.load(args.weights, map_location="cpu", weights_only=True)
                neck.load_state_dict(state)
            except (RuntimeError, pickle.UnpicklingError, KeyError) as err:
                raise UsageError(f"--weights {args.weights}: not a state dict of this neck: {str(err).splitlines()[0]}") from None
        export_onnx(neck, channels, args.onnx)
        print(f"wrote {args.onnx}")


def _draw(args: argparse.Namespace) -> None:
    from .draw import draw_genotype

    genotype = load_genotype(args.genotype)
    print(f"wrote {draw_genotype(genotype, args.output)}")


def _sample(args: argparse.Namespace) -> None:
    from .sample import sample_space

    if args.count < 1:
        raise UsageError(f"--count {args.count}: must be at least 1")
    space = load_space(args.space)
    channels = _channels(args.in_channels, space.template.backbone_levels)
    report = sample_space(space, args.count, args.seed, args.out, channels, args.image_size, args.width)
    print(f"wrote {report}")


if __name__ == "__main__":
    sys.exit(main())
