"""Write a genotype's neck as a standalone, readable PyTorch file (imports only torch).

The file carries the source of the layers it uses, copied from :mod:`nasfpn.ops`, so it runs
the same code as the built neck, and makes its learned layers by the same calls (the
:class:`~nasfpn.vocabulary.Layer` the builder made each from) under the same names, so a state
dict of :func:`nasfpn.build_neck`'s module loads into it unchanged. Its ``forward`` spells the
graph out one node a line. The only free text of a genotype (its name) enters the file as a
Python string literal made by ``repr``; everything else written is generated from validated
choices.

A genotype with ``recursion`` (DetectoRS' RFP) is written as two classes: the pyramid
(``<class_name>Pyramid``, as any neck) and ``<class_name>``, which holds it, the ASPP, the
``rfp_conv``s and the gate under the names :class:`nasfpn.rfp.RecursiveNeck` gives them, and
takes the backbone as a constructor argument: a traced ``torch.fx.GraphModule`` returning C3..C5
(torchvision's ``create_feature_extractor`` of a ResNet), opened to the feedback by the same
``feedback_graph`` as nasfpn's backbones. Its ``forward`` takes the images. The backbone stays
the caller's (not in its parameters or state dict), and the class is not TorchScript-able (it
holds the traced backbone outside its modules) nor exportable to ONNX as a neck.
"""
from __future__ import annotations

import ast
import inspect
import keyword
from pathlib import Path
from typing import Mapping, Sequence

import torch

from . import ops
from .fsio import atomic_write_text
from .genotype import Genotype
from .neck import Neck, build_neck
from .rfp import RecursiveNeck
from .vocabulary import COMBINES, Layer


def export_neck(genotype: Genotype, in_channels: Mapping[int, int] | Sequence[int], path: str | Path | None = None,
                width: int | None = None, class_name: str = "ExportedNeck") -> str:
    """Return (and write to ``path`` when given) the source of a standalone neck module.

    Raises:
        ValueError: ``class_name`` is not a Python identifier.
        GenotypeError: the genotype breaks a rule of the language.
    """
    if not class_name.isidentifier() or keyword.iskeyword(class_name):
        raise ValueError(f"class name {class_name!r} is not a Python identifier")
    neck = build_neck(genotype, in_channels, width)
    source = _Writer(neck, class_name).source()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, source)
    return source


class _Writer:
    def __init__(self, module: Neck | RecursiveNeck, class_name: str):
        self.rfp = module if isinstance(module, RecursiveNeck) else None
        self.neck = module.neck if self.rfp is not None else module
        self.whole = module.genotype  # with its recursion, if any: the file's header
        self.genotype = self.neck.genotype
        self.graph = self.genotype.spelled_out()
        self.class_name = class_name
        self.pyramid_name = f"{class_name}Pyramid" if self.rfp is not None else class_name
        self.width = self.neck.out_channels
        self.used: set[str] = {"upsample", "downsample"}

    def source(self) -> str:
        cells, self.cell_types = self._cell_classes()
        neck = self._neck_class()
        if self.rfp is not None:
            neck += "\n\n" + self._rfp_class()
        layers = "\n\n\n".join(inspect.getsource(getattr(ops, n)).rstrip() for n in _with_what_they_use(self.used))
        g = self.whole
        out = f"returns a dict p{g.levels[0]}..p{g.levels[-1]} of {self.width} channels each.\n"
        takes = ("Takes the images a traced backbone is given (see the last class), runs the backbone, the neck,\n"
                 f"and the backbone again with the neck's feedback ({g.recursion.label()}),\nand " + out
                 if g.recursion is not None else
                 "Takes the backbone's features as a dict, finest level first\n"
                 f"(levels {list(g.backbone_levels)}), and " + out)
        header = (
            f'"""A feature-pyramid neck exported by nasfpn (genotype {g.hash()[:12]}).\n\n'
            "Standalone: needs only torch. " + takes +
            "Its state dict is that of nasfpn.build_neck(genotype, ...) for the same genotype.\n"
            '"""\n'
            "from typing import Dict, List, Tuple\n\n"
            "import torch\n" + ("import torch.fx\n" if g.recursion is not None else "") +
            "import torch.nn.functional as F\nfrom torch import Tensor, nn\n\n"
            f"NAME = {g.name!r}\n"
            f"GENOTYPE_HASH = {g.hash()!r}\n"
            "GENOTYPE_YAML = (\n" + "".join(f"    {line!r}\n" for line in g.to_yaml().splitlines(True)) + ")\n\n\n")
        parts = ('class Parts(nn.Module):\n'
                 '    """A container for one node\'s (or one stage\'s) learned layers."""\n')
        return header + layers + "\n\n\n" + parts + "\n\n" + "\n\n\n".join(src for _, src in cells) + "\n\n\n" + neck

    # --- cells -----------------------------------------------------------------------------
    def _cell_classes(self) -> tuple[list[tuple[str, str]], list[str]]:
        """One class per distinct cell (the first differs when it adapts backbone channels),
        and the class of each repeat."""
        classes: list[tuple[str, str]] = []
        seen: dict[str, str] = {}
        types: list[str] = []
        for k, cell in enumerate(self.neck.cells):
            init, body = self._cell_code(cell)
            key = "\n".join(init + body)
            if key not in seen:
                name = "Cell" if k > 0 or len(self.neck.cells) == 1 else "FirstCell"
                if name in seen.values():
                    name = f"Cell{k}"
                seen[key] = name
                classes.append((name, self._cell_source(name, init, body)))
            types.append(seen[key])
        return classes, types

    def _cell_code(self, cell) -> tuple[list[str], list[str]]:
        g = self.graph
        init, body = [], []
        for name, sources, _ in cell.plan:
            node = g.nodes[int(name[1:])]
            module = cell._modules[name]
            init.append(f"self.{name} = Parts()")
            init += self._made(module.calls, f"self.{name}.")
            exprs = []
            for src, adapter, step, down in zip(sources, module.adapters, module.steps, module.downs):
                expr = src.lower()
                if adapter is not None:
                    expr = f"self.{name}.{adapter}({expr})"
                if step < 0:
                    expr = f"upsample({expr}, p{node.level})"
                elif down is not None:
                    expr = f"self.{name}.{down}({expr})"
                elif step > 0:
                    expr = f"downsample({expr}, {2 ** step})"
                exprs.append(expr)
            combine = COMBINES[node.combine]
            if combine.function:
                self.used.add(combine.function)
            merged = combine.source([exprs[j] for j in module.order], fuse=f"self.{name}.fuse")
            if module.op is not None:
                merged = f"self.{name}.op({merged})"
            body.append(f"# {name}: level {node.level}, {node.combine}({', '.join(sources)}) -> {node.op}")
            body.append(f"{name} = {merged}")
        init += self._made(cell.calls, "self.")
        outs = [src.lower() if adapter is None else f"self.{adapter}({src.lower()})"
                for src, adapter in zip(g.outputs, cell.output_adapters)]
        body.append(f"return {', '.join(outs)}")
        return init, body

    def _made(self, calls: Mapping[str, Layer], owner: str) -> list[str]:
        """The lines that make a module's learned layers, by the calls the builder made them with."""
        self.used.update(call.name for call in calls.values())
        return [f"{owner}{path} = {call.source()}" for path, call in calls.items()]

    def _cell_source(self, name: str, init: list[str], body: list[str]) -> str:
        args = ", ".join([f"p{lv}: Tensor" for lv in self.graph.cell_levels] +
                         [f"c{lv}: Tensor" for lv in self.neck.raw_levels])  # the raw features it reads
        ret = ", ".join("Tensor" for _ in self.graph.cell_levels)
        lines = [f"class {name}(nn.Module):", "    def __init__(self):", "        super().__init__()"]
        lines += [f"        {line}" for line in init]
        lines += ["", f"    def forward(self, {args}) -> Tuple[{ret}]:"]
        lines += [f"        {line}" for line in body]
        return "\n".join(lines)

    # --- the neck --------------------------------------------------------------------------
    def _neck_class(self) -> str:
        g, w, neck = self.genotype, self.width, self.neck
        backbone = g.backbone_levels
        init = [f"self.out_channels = {w}"]
        for stage in ("lateral", "extra"):  # the neck's learned layers outside the cells, by stage
            init.append(f"self.{stage} = Parts()")
            init += self._made({path: call for path, call in neck.calls.items() if path.startswith(f"{stage}.")},
                               "self.")
        body = ["feats = list(x.values())",
                f"if len(feats) != {len(backbone)}:",
                f"    raise ValueError('expected {len(backbone)} backbone features, levels {list(backbone)}')"]
        body += [f"c{lv} = feats[{k}]" for k, lv in enumerate(backbone)]
        body += [f"p{lv} = self.lateral.p{lv}(c{lv})" if lv in neck.lateral_levels else f"p{lv} = c{lv}"
                 for lv in backbone]
        extra = []
        source = f"c{backbone[-1]}" if neck.extra_from_backbone else f"p{backbone[-1]}"
        for lv in g.extra_levels:
            extra.append(f"p{lv} = self.extra.p{lv}({source})")
            source = f"p{lv}"
        if not neck.extra_after_cells:
            body += extra
        init.append(f"self.cells = nn.ModuleList([{', '.join(f'{c}()' for c in self.cell_types)}])")
        state = ", ".join(f"p{lv}" for lv in g.cell_levels)
        args = ", ".join([state] + [f"c{lv}" for lv in neck.raw_levels])
        body += ["for cell in self.cells:", f"    {state} = cell({args})"]
        if neck.extra_after_cells:
            body += extra
        body.append("return {" + ", ".join(f"'p{lv}': p{lv}" for lv in g.levels) + "}")
        lines = [f"class {self.pyramid_name}(nn.Module):",
                 f'    """{len(neck.cells[0].plan)}-node cell x {g.repeats}, width {w}; see NAME and GENOTYPE_YAML."""',
                 "", "    def __init__(self):", "        super().__init__()"]
        lines += [f"        {line}" for line in init]
        lines += ["", "    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:"]
        lines += [f"        {line}" for line in body]
        return "\n".join(lines) + "\n"

    def _rfp_class(self) -> str:
        """The recursive feature pyramid around the pyramid class (see the module docstring)."""
        rfp, rec, g = self.rfp, self.rfp.recursion, self.genotype
        self.used.add("feedback_graph")
        stages = tuple(f"layer{lv - 1}" for lv in g.backbone_levels)  # a torchvision ResNet's
        fed = ", ".join(f"stages[{g.backbone_levels.index(lv)}]" for lv in rec.levels)
        init = [f"self.out_channels = {self.width}", f"self.neck = {self.pyramid_name}()", "self.rfp_conv = Parts()"]
        init += self._made(rfp.calls, "self.")
        init += [f"fed = feedback_graph(backbone, [{fed}])  # C{', C'.join(map(str, rec.levels))} take the feedback",
                 "self._backbone = (backbone, fed)  # a tuple: the caller's modules, not registered here"]
        feedback = [f"self.rfp_conv.p{lv}(self.aspp(x['p{lv}']))" for lv in rec.levels]
        body = ["backbone, fed = self._backbone", "x = self.neck(backbone(images))",
                f"for _ in range({rec.steps - 1}):  # the steps after the first",
                "    feedback = [", *[f"        {f}," for f in feedback], "    ]",
                "    new = self.neck(fed(images, *feedback))",
                "    x = {key: self.fuse(new[key], x[key]) for key in x}",
                "return x"]
        lines = [f"class {self.class_name}(nn.Module):",
                 f'    """DetectoRS\' recursive feature pyramid around {self.pyramid_name}:',
                 f"    {rec.label()}.",
                 "",
                 "    backbone: a traced torch.fx.GraphModule returning C" +
                 f"{g.backbone_levels[0]}..C{g.backbone_levels[-1]} (finest first) from the images,",
                 "    e.g. torchvision.models.feature_extraction.create_feature_extractor(resnet50(), "
                 f"{list(stages)});",
                 "    stages: the module path of the stage making each of those levels. The backbone is the",
                 "    caller's: not in this module's parameters or state dict (move and train it yourself).",
                 '    """',
                 "",
                 f"    def __init__(self, backbone: nn.Module, stages: Tuple[str, ...] = {stages!r}):",
                 "        super().__init__()"]
        lines += [f"        {line}" for line in init]
        lines += ["", "    def forward(self, images: Tensor) -> Dict[str, Tensor]:"]
        lines += [f"        {line}" for line in body]
        lines += ["", "    def fuse(self, new: Tensor, old: Tensor) -> Tensor:",
                  "        a = torch.sigmoid(self.gate(new))",
                  "        return a * new + (1 - a) * old"]
        return "\n".join(lines) + "\n"


def _with_what_they_use(names: set[str]) -> list[str]:
    """The functions and layers of :mod:`nasfpn.ops` among ``names`` (others, like ``nn.Conv2d``,
    are torch's) and those their source uses, in the order ops defines them (so each is defined
    before the code that runs it)."""
    defined = [name for name, value in vars(ops).items() if getattr(value, "__module__", None) == ops.__name__]
    needed: set[str] = set()
    todo = [name for name in names if name in defined]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            tree = ast.parse(inspect.getsource(getattr(ops, name)))
            todo += [node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in defined]
    return [name for name in defined if name in needed]


def load_exported(path: str | Path, class_name: str = "ExportedNeck", *args, **kwargs):
    """Import an exported neck file and return an instance of its class, made with ``args`` and
    ``kwargs`` (a recursive neck's class takes the backbone)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nasfpn_exported_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)(*args, **kwargs)


def export_onnx(neck: torch.nn.Module, in_channels: Mapping[int, int], path: str | Path,
                image_size: int = 512) -> None:
    """Trace a neck (built or exported) to ONNX, with the backbone levels as positional inputs
    ``c3``.. and the outputs ``p3``..; the spatial sizes are dynamic axes.

    Raises:
        ImportError: the optional ``onnx`` package is missing (``pip install onnx``).
        ValueError: a recursive neck (RFP), which runs the backbone: no graph from features to pyramid.
    """
    import importlib.util
    import warnings

    if isinstance(neck, RecursiveNeck) or hasattr(neck, "_backbone"):
        raise ValueError("a neck with recursion (RFP) runs the backbone: it has no ONNX graph from features to "
                         "pyramid; export the whole detector instead")
    if importlib.util.find_spec("onnx") is None:
        raise ImportError("ONNX export needs the optional onnx package: pip install onnx")
    levels = sorted(in_channels)
    names = [f"c{lv}" for lv in levels]

    class Positional(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.neck = neck

        def forward(self, *feats):
            return tuple(self.neck(dict(zip(names, feats))).values())

    example = tuple(torch.randn(1, in_channels[lv], image_size >> lv, image_size >> lv) for lv in levels)
    with torch.no_grad():
        outputs = list(neck(dict(zip(names, example))))
    axes = {name: {2: f"h_{name}", 3: f"w_{name}"} for name in [*names, *outputs]}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The torch.export-based exporter needs onnxscript; the TorchScript one needs only onnx.
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(Positional().eval(), example, str(path), dynamo=False, input_names=names,
                          output_names=outputs, dynamic_axes=axes)
