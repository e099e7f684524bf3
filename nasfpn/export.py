"""Write a genotype's neck as a standalone, readable PyTorch file (imports only torch).

The file carries the source of the layers it uses, copied from :mod:`nasfpn.ops`, so it runs
the same code as the built neck, and registers its learned layers under the same names, so a
state dict of :func:`nasfpn.build_neck`'s module loads into it unchanged. Its ``forward`` spells
the graph out one node a line. The only free text of a genotype (its name) enters the file as a
Python string literal made by ``repr``; everything else written is generated from validated
choices.
"""
from __future__ import annotations

import inspect
import keyword
from pathlib import Path
from typing import Mapping, Sequence

import torch

from . import ops
from .fsio import atomic_write_text
from .genotype import Genotype
from .neck import Neck, build_neck

_OP_LAYERS = {"conv3x3": "nn.Conv2d({w}, {w}, 3, padding=1)", "relu_conv_bn": "ReluConvBN({w})",
              "sepconv_bn": "SepConvBN({w}, swish={swish})"}


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
    def __init__(self, neck: Neck, class_name: str):
        self.neck = neck
        self.genotype = neck.genotype
        self.graph = neck.genotype.spelled_out()
        self.class_name = class_name
        self.width = neck.out_channels
        self.used: set[str] = {"upsample", "downsample"}

    def source(self) -> str:
        cells, self.cell_types = self._cell_classes()
        neck = self._neck_class()
        names = sorted(self.used, key=lambda n: list(vars(ops)).index(n))
        layers = "\n\n\n".join(inspect.getsource(getattr(ops, n)).rstrip() for n in names)
        g = self.genotype
        header = (
            f'"""A feature-pyramid neck exported by nasfpn (genotype {g.hash()[:12]}).\n\n'
            "Standalone: needs only torch. Takes the backbone's features as a dict, finest level first\n"
            f"(levels {list(g.backbone_levels)}), and returns a dict p{g.levels[0]}..p{g.levels[-1]} of {self.width} channels each.\n"
            "Its state dict is that of nasfpn.build_neck(genotype, ...) for the same genotype.\n"
            '"""\n'
            "from typing import Dict, List, Tuple\n\n"
            "import torch\nimport torch.nn.functional as F\nfrom torch import Tensor, nn\n\n"
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
        g, w = self.graph, self.width
        init, body = [], []
        for name, sources, _ in cell.plan:
            node = g.nodes[int(name[1:])]
            module = cell._modules[name]
            init.append(f"self.{name} = Parts()")
            exprs = []
            for j, src in enumerate(sources):
                expr = src.lower()
                if f"lat{j}" in module._modules:
                    c = module._modules[f"lat{j}"].conv.in_channels
                    init.append(f"self.{name}.lat{j} = ConvBN({c}, {w})")
                    self.used.add("ConvBN")
                    expr = f"self.{name}.lat{j}({expr})"
                step = module.steps[j]
                if step < 0:
                    expr = f"upsample({expr}, p{node.level})"
                elif step > 0 and f"down{j}" in module._modules:
                    init.append(f"self.{name}.down{j} = DownConv({w}, {2 ** step})")
                    self.used.add("DownConv")
                    expr = f"self.{name}.down{j}({expr})"
                elif step > 0:
                    expr = f"downsample({expr}, {2 ** step})"
                exprs.append(expr)
            if node.combine == "sum":
                merged = " + ".join(exprs)
            elif node.combine == "weighted":
                init.append(f"self.{name}.fuse = WeightedFusion({len(exprs)})")
                self.used.add("WeightedFusion")
                merged = f"self.{name}.fuse([{', '.join(exprs)}])"
            else:
                hi, lo = exprs if module.hi_first else exprs[::-1]
                self.used.add(node.combine)
                merged = f"{node.combine}({hi}, {lo})"
            if node.op != "none":
                init.append(f"self.{name}.op = " + _OP_LAYERS[node.op].format(w=w, swish=g.activation == "swish"))
                self.used.update({"relu_conv_bn": ["ReluConvBN"], "sepconv_bn": ["SepConvBN"]}.get(node.op, []))
                merged = f"self.{name}.op({merged})"
            body.append(f"# {name}: level {node.level}, {node.combine}({', '.join(sources)}) -> {node.op}")
            body.append(f"{name} = {merged}")
        outs = []
        for level, src in zip(g.cell_levels, g.outputs):
            if f"out_p{level}" in cell._modules:
                c = cell._modules[f"out_p{level}"].conv.in_channels
                init.append(f"self.out_p{level} = ConvBN({c}, {w})")
                self.used.add("ConvBN")
                outs.append(f"self.out_p{level}({src.lower()})")
            else:
                outs.append(src.lower())
        body.append(f"return {', '.join(outs)}")
        return init, body

    def _cell_source(self, name: str, init: list[str], body: list[str]) -> str:
        args = ", ".join(f"p{lv}: Tensor" for lv in self.graph.cell_levels)
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
        init = [f"self.out_channels = {w}", "self.lateral = Parts()"]
        body = ["feats = list(x.values())",
                f"if len(feats) != {len(backbone)}:",
                f"    raise ValueError('expected {len(backbone)} backbone features, levels {list(backbone)}')"]
        body += [f"c{lv} = feats[{k}]" for k, lv in enumerate(backbone)]
        for lv in backbone:
            layer = neck.lateral[f"p{lv}"] if f"p{lv}" in neck.lateral else None
            if layer is None:
                body.append(f"p{lv} = c{lv}")
                continue
            if g.lateral == "conv":
                init.append(f"self.lateral.p{lv} = nn.Conv2d({layer.in_channels}, {w}, 1)")
            else:
                init.append(f"self.lateral.p{lv} = ConvBN({layer.conv.in_channels}, {w})")
                self.used.add("ConvBN")
            body.append(f"p{lv} = self.lateral.p{lv}(c{lv})")
        init.append("self.extra = Parts()")
        extra = []
        source = {"backbone": f"c{backbone[-1]}", "lateral": f"p{backbone[-1]}", "output": f"p{backbone[-1]}"}[g.extra.source]
        for lv, op in zip(g.extra_levels, g.extra.ops):
            layer = neck.extra[f"p{lv}"]
            if op in ("conv", "relu_conv"):
                init.append(f"self.extra.p{lv} = ExtraConv({layer.conv.in_channels}, {w}, relu={op == 'relu_conv'})")
                self.used.add("ExtraConv")
            else:
                c = layer.project.conv.in_channels if op == "proj_pool" else w
                init.append(f"self.extra.p{lv} = ExtraPool({c}, {w}, project={op == 'proj_pool'})")
                self.used.update({"ExtraPool", "ConvBN"})
            extra.append(f"p{lv} = self.extra.p{lv}({source})")
            source = f"p{lv}"
        if g.extra.source != "output":
            body += extra
        init.append(f"self.cells = nn.ModuleList([{', '.join(f'{c}()' for c in self.cell_types)}])")
        state = ", ".join(f"p{lv}" for lv in g.cell_levels)
        body += ["for cell in self.cells:", f"    {state} = cell({state})"]
        if g.extra.source == "output":
            body += extra
        body.append("return {" + ", ".join(f"'p{lv}': p{lv}" for lv in g.levels) + "}")
        lines = [f"class {self.class_name}(nn.Module):",
                 f'    """{len(neck.cells[0].plan)}-node cell x {g.repeats}, width {w}; see NAME and GENOTYPE_YAML."""',
                 "", "    def __init__(self):", "        super().__init__()"]
        lines += [f"        {line}" for line in init]
        lines += ["", "    def forward(self, x: Dict[str, Tensor]) -> Dict[str, Tensor]:"]
        lines += [f"        {line}" for line in body]
        return "\n".join(lines) + "\n"


def load_exported(path: str | Path, class_name: str = "ExportedNeck"):
    """Import an exported neck file and return an instance of its class."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"nasfpn_exported_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, class_name)()


def export_onnx(neck: torch.nn.Module, in_channels: Mapping[int, int], path: str | Path,
                image_size: int = 512) -> None:
    """Trace a neck (built or exported) to ONNX, with the backbone levels as positional inputs
    ``c3``.. and the outputs ``p3``..; the spatial sizes are dynamic axes.

    Raises:
        ImportError: the optional ``onnx`` package is missing (``pip install onnx``).
    """
    import importlib.util
    import warnings

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
