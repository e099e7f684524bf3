"""The ``nasfpn`` command. Bad input ends with one line naming what is wrong and exit code 2 (``check-data``
lists up to ten problems of a data set at once)."""
from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path
from typing import Sequence

from . import __version__
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
    except RuntimeError as err:  # the work itself failed (e.g. a backbone warm-up that diverged)
        print(f"nasfpn {args.command}: failed: {err}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nasfpn", description="Search, inspect, draw and export neck topologies.")
    parser.add_argument("-v", "--verbose", action="store_true", help="more logging")
    parser.add_argument("--version", action="version", version=f"nasfpn {__version__}")
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
    p.add_argument("--repeats", type=int, default=None,
                   help="stack the cell this many times (default: the genotype's; a search's proxy trains one)")
    p.add_argument("--onnx", type=Path, default=None, help="also write an ONNX graph here (needs the onnx package)")
    p.add_argument("--weights", type=Path, default=None,
                   help="a state dict (torch.save of the neck's state_dict) to put in the ONNX graph")
    p.set_defaults(run=_export)

    p = sub.add_parser("draw", help="draw a genotype's cell (.png or .svg)")
    genotype_arg(p)
    p.add_argument("-o", "--output", required=True, type=Path, help="cell.png or cell.svg")
    p.set_defaults(run=_draw)

    p = sub.add_parser("train", help="train and evaluate one neck in the proxy detector; print its AP")
    p.add_argument("--genotype", default="fpn", help=f"a genotype YAML file or a reference name ({refs}; default fpn)")
    p.add_argument("--config", type=Path, default=None, help="YAML with data:, backbone:, proxy: sections")
    data_args(p)
    p.add_argument("--steps", type=int, help="training steps (default 600)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--image-size", type=int, help="letterboxed input size, a multiple of 128 (default 256)")
    p.add_argument("--width", type=int, help="neck and head width (default 64)")
    p.add_argument("--seed", type=int, help="proxy seed: initialisation and data order (the backbone warm-up "
                   "has its own, backbone.warmup_seed)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    detector_args(p)
    aux_arg(p)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.set_defaults(run=_train)

    p = sub.add_parser("search", help="run a neck search (no settings: the quickstart)")
    p.add_argument("--config", default=None, help="YAML file or shipped config name (quickstart) overriding any part: "
                   "data, backbone, proxy, space, controller, search, confirm, scheduler, resources, ray, reward; "
                   "with no --config and no other setting, the quickstart")
    p.add_argument("--space", help="search space name or YAML (default wide)")
    p.add_argument("--controller", help="controller name or YAML: ppo, reinforce, evolution, random (default ppo)")
    p.add_argument("--trials", type=int, help="trial budget before the confirmation, baselines included (default 12)")
    p.add_argument("--concurrent", type=int, help="trials at once (default 2)")
    p.add_argument("--steps", type=int, help="proxy training steps per trial (default 600)")
    detector_args(p)
    aux_arg(p)
    p.add_argument("--no-asha", action="store_true", help="no early stopping")
    p.add_argument("--top", type=int, help="searched cells to confirm over seeds (default 1)")
    p.add_argument("--confirm-seeds", type=int, help="proxy seeds of the confirmation (default 3; 0: none)")
    p.add_argument("--confirm-steps", type=int, help="steps of the confirmation recipe (default: 1.5 x --steps)")
    data_args(p)
    p.add_argument("--out", type=Path, help="experiment folder (default runs/<space>-<controller>-<time>)")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the search in DIR (its config is reused)")
    p.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT (default: a private local Ray)")
    p.set_defaults(run=_search)

    p = sub.add_parser("confirm", help="run or extend the confirmation of a finished search over seeds")
    p.add_argument("folder", type=Path, metavar="RUN_DIR")
    p.add_argument("--top", type=int, help="searched cells to confirm (default: the search's confirm.top_k)")
    p.add_argument("--seeds", type=int, help="proxy seeds per neck (default: the search's confirm.seeds)")
    p.add_argument("--steps", type=int, help="steps of the confirmation recipe (default: the search's)")
    p.set_defaults(run=_confirm)

    p = sub.add_parser("report", help="rebuild an experiment folder's report from its ledger")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.set_defaults(run=_report)

    p = sub.add_parser("check-data", help="validate a COCO dataset and print a summary")
    p.add_argument("annotations", type=Path, metavar="ANNOTATIONS.json")
    p.add_argument("--images", type=Path, required=True, metavar="DIR")
    p.set_defaults(run=_check_data)

    p = sub.add_parser("convert-voc", help="convert a Pascal VOC folder (XML per image) to COCO JSON",
                       description="Reads Annotations/ + JPEGImages/, annotations/ + images/, or XML files beside "
                       "their images in VOC_DIR; any other layout: name both folders with --annotations and "
                       "--images. Every image is decoded; a missing or broken one is left out with a warning "
                       "(--strict: exit 2, nothing written).")
    p.add_argument("voc_root", type=Path, nargs="?", metavar="VOC_DIR")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.json")
    p.add_argument("--annotations", type=Path, metavar="DIR", help="the folder of the XML files (with --images, "
                   "instead of VOC_DIR)")
    p.add_argument("--images", type=Path, metavar="DIR", help="the folder of the images (with --annotations)")
    p.add_argument("--classes", default=None, help="comma-separated class names in label order (default: all "
                   "found, sorted)")
    p.add_argument("--strict", action="store_true", help="stop (exit 2, nothing written) if an image is missing or "
                   "broken, instead of leaving it out")
    p.set_defaults(run=_convert_voc)

    p = sub.add_parser("sample", help="sample genotypes from a search space; profile, draw and export them")
    p.add_argument("--space", default="wide", help=f"a space YAML file or name ({', '.join(space_names())})")
    p.add_argument("-n", "--count", type=int, default=8, help="how many genotypes (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/sample"), help="output folder (default runs/sample)")
    channel_args(p)
    p.add_argument("--image-size", type=int, default=512)
    p.set_defaults(run=_sample)
    return parser


def detector_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", metavar="NAME", help="the proxy detector the neck is trained in: retinanet, fcos "
                   "or faster_rcnn (default retinanet)")
    p.add_argument("--roi-extractor", metavar="NAME", help="Faster R-CNN's RoI features: level (torchvision's "
                   "MultiScaleRoIAlign, default) or soft (AugFPN's soft RoI selection)")


def aux_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--aux-loss", type=float, metavar="W", help="AugFPN's consistent supervision: the detection "
                   "loss also on the neck's laterals before fusion, training only, times W (default 0: off; "
                   "AugFPN's weight is 0.25)")


def data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, metavar="ANN.json", help="COCO annotations (default: the built-in synthetic set)")
    p.add_argument("--images", type=Path, metavar="DIR", help="the image folder of --data")
    p.add_argument("--val-data", type=Path, metavar="ANN.json", help="a separate validation split "
                   "(default: a deterministic split of --data)")
    p.add_argument("--val-images", type=Path, metavar="DIR")
    p.add_argument("--backbone", help="a torchvision model name, timm:NAME or package.module:attr (default: "
                   "efficientnet_lite0_imagenet with the pretrained extra installed, else resnet18 warmed up)")
    p.add_argument("--backbone-weights", type=Path, metavar="FILE", help="local state dict of the backbone")
    p.add_argument("--return-nodes", help="comma-separated graph nodes of C3,C4,C5 (models not known by name)")
    p.add_argument("--no-freeze", action="store_true", help="train the backbone too (no feature cache)")
    p.add_argument("--warmup-steps", type=int, help="steps of backbone warm-up when it has no weights (default 1200)")
    p.add_argument("--no-cache", action="store_true", help="do not use the frozen-backbone feature cache")
    p.add_argument("--cache-dir", type=Path, help="cache folder (default $NASFPN_CACHE or ~/.cache/nasfpn)")


def flag_values(args: argparse.Namespace) -> dict:
    """The configuration flags given on the command line, as plain values (see
    :func:`nasfpn.search.config.merge_flags`)."""
    from .search.config import FLAG_KEYS, SWITCHES

    names = (*FLAG_KEYS, *SWITCHES, "space", "controller")  # cache_dir among them
    # ``is``, not ``in (None, False)``: 0 == False, and ``--seed 0`` or ``--aux-loss 0`` is a value given.
    return {name: getattr(args, name) for name in names
            if getattr(args, name, None) is not None and getattr(args, name) is not False}


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
    if args.repeats is not None:
        if args.repeats < 1:
            raise UsageError(f"--repeats {args.repeats}: must be a positive integer")
        genotype = genotype.replace(repeats=args.repeats)
    if args.onnx is not None and genotype.recursion is not None:
        raise UsageError(f"--onnx: {genotype.name or args.genotype} has recursion ({genotype.recursion.label()}): "
                         "its neck runs the backbone, so it has no ONNX graph from features to pyramid; export the "
                         "module without --onnx (its class takes the backbone)")
    channels = _channels(args.in_channels, genotype.backbone_levels)
    export_neck(genotype, channels, args.output, args.width, args.class_name)
    print(f"wrote {args.output}" + (f" (its class takes the backbone: {args.class_name}(backbone), see its docstring)"
                                    if genotype.recursion is not None else ""))
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


def _train(args: argparse.Namespace) -> None:
    import json

    import dataclasses

    from .search.config import load_search_config, merge_flags, search_config
    from .search.driver import detector_text
    from .task import prepare_task, task_problem
    from .train import train_proxy

    config = load_search_config(args.config) if args.config else {}
    unknown = sorted(set(config) - {"data", "backbone", "proxy"})
    if unknown:
        raise UsageError(f"{args.config}: unknown section(s) {unknown}; valid: ['backbone', 'data', 'proxy']")
    validated = search_config(merge_flags(config, **flag_values(args)))
    data, backbone, proxy = validated.data, validated.backbone, validated.proxy
    if "eval_every" not in (config.get("proxy") or {}):
        proxy = dataclasses.replace(proxy, eval_every=0)  # the search evaluates along the way for ASHA; train need not
    genotype = load_genotype(args.genotype)
    problem = task_problem(genotype, backbone)
    if problem:  # before the task is prepared (a warm-up can take minutes)
        raise UsageError(problem)
    task = prepare_task(data, backbone, proxy)
    result = train_proxy(genotype, task, proxy, report=lambda r: log.info("step %(step)d loss %(loss).4f", r))
    print(f"genotype  {genotype.name or args.genotype} ({genotype.hash()[:12]})")
    print(f"backbone  {backbone.name}, weights {task.backbone_weights}, "
          f"{'frozen, features cached' if task.train_cache else 'frozen' if backbone.freeze else 'trained'}")
    print(f"data      {len(task.train)} train / {len(task.val)} val images, {task.num_classes} classes, "
          f"{proxy.image_size} px; {result['steps']} steps of {proxy.batch_size}")
    print(f"detector  {detector_text(proxy)}")
    if proxy.aux_loss:
        print(f"aux loss  {proxy.aux_loss:g} x the detection loss on the neck's laterals (training only)")
    if result["status"] != "ok":
        print(f"FAILED    {result['error']}")
    print("AP      AP50    AP75    AP_S    AP_M    AP_L")
    print("  ".join(f"{result[m]:6.3f}" for m in ("ap", "ap50", "ap75", "ap_small", "ap_medium", "ap_large")))
    print(f"neck      {result['params']:,} params, {result['macs'] / 1e9:.3f} GMACs at {proxy.image_size} px "
          f"(as the proxy builds it: width {proxy.width}, {result['proxy_repeats']} repeat(s))")
    print(f"time      {result['seconds']:.1f} s (train {result['train_seconds']:.1f}, eval {result['eval_seconds']:.1f})")
    if args.json:
        args.json.write_text(json.dumps({"genotype": genotype.to_dict(), "hash": genotype.hash(), **result}, indent=1))


def _search(args: argparse.Namespace) -> None:
    import time

    from .search.config import QUICKSTART, command_line_config
    from .search.driver import run_search

    if args.resume is not None:
        given = sorted(f"--{name.replace('_', '-')}" for name in flag_values(args)) + \
            [flag for flag, value in (("--config", args.config), ("--out", args.out)) if value is not None]
        if given:
            raise UsageError(f"--resume takes everything from {args.resume / 'config.yaml'}; drop {', '.join(given)} "
                             f"(to extend the confirmation: nasfpn confirm {args.resume} --top/--seeds/--steps)")
        print(f"wrote {run_search(None, args.resume, resume=True, verbose=args.verbose)}")
        return
    config, quickstart = command_line_config(args.config, flag_values(args))
    if quickstart:
        print(f"no settings given: the quickstart (nasfpn search --config {QUICKSTART}; see the README)")
    out = args.out or Path("runs") / f"{Path(config.space).stem}-{Path(str(config.controller)).stem}-" \
                                     f"{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"experiment folder: {out}")
    print(f"wrote {run_search(config, out, verbose=args.verbose)}")


def _confirm(args: argparse.Namespace) -> None:
    from .search.driver import run_search

    overrides = {key: value for key, value in (("top_k", args.top), ("seeds", args.seeds), ("steps", args.steps))
                 if value is not None}
    print(f"wrote {run_search(None, args.folder, confirm_only=True, confirm=overrides, verbose=args.verbose)}")


def _report(args: argparse.Namespace) -> None:
    from .search.report import build_report

    if not (args.folder / "ledger.jsonl").is_file():
        raise UsageError(f"{args.folder}: not an experiment folder (no ledger.jsonl)")
    print(f"wrote {build_report(args.folder)}")


def _check_data(args: argparse.Namespace) -> int:
    from .data import DatasetError, check_dataset, format_summary
    from .data.check import format_problems

    try:
        print(format_summary(check_dataset(args.annotations, args.images)))
    except DatasetError as err:
        if len(getattr(err, "problems", ())) < 2:
            raise  # one line, as every other error
        print(f"nasfpn check-data: error: {format_problems(err.problems, args.annotations)}", file=sys.stderr)
        return 2
    return 0


def _convert_voc(args: argparse.Namespace) -> None:
    from .data import voc_to_coco

    if (args.annotations is None) != (args.images is None):
        raise UsageError("--annotations and --images go together (the folder of the XML files and that of the images)")
    if (args.voc_root is None) == (args.annotations is None):
        raise UsageError("give VOC_DIR, or --annotations DIR --images DIR for another layout (not both)")
    classes = [name.strip() for name in args.classes.split(",") if name.strip()] if args.classes else None
    summary = voc_to_coco(args.voc_root, args.output, classes, annotations=args.annotations, images=args.images,
                          strict=args.strict)
    warnings = summary.get("warnings", [])  # each was logged as it was found
    print(f"wrote {args.output} ({summary['layout']}): {summary['images']} images, {summary['boxes']} boxes, "
          f"classes {summary['classes']}" + (f"; {len(warnings)} warning(s) above" if warnings else ""))
    print(f"check it: nasfpn check-data {args.output} --images {summary['images_dir']}")


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
