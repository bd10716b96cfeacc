"""Graft a linear head onto a served model.onnx next to its heads (onnx + numpy only).

The sentence embedding is the latest float tensor every existing head reads (MiniLM int8: the
pooler's Tanh output, before its DynamicQuantizeLinear; USE: the scaled 512-d vector). The
new head is a float MatMul + Add on that tensor, a new graph output; the existing nodes are
untouched, so the old heads' logits do not change. `merge_branch` adds a whole second graph
(full fine-tune: its own encoder and head) on the same inputs, its names prefixed.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def _ancestors(graph, output: str) -> set[str]:  # noqa: ANN001
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    stack = [output]
    while stack:
        t = stack.pop()
        if t in seen:
            continue
        seen.add(t)
        node = producer.get(t)
        if node is not None:
            stack.extend(i for i in node.input if i)
    return seen


def embedding_tensor(model) -> str:  # noqa: ANN001
    """The latest float tensor that every graph output depends on."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    common = set.intersection(*(_ancestors(graph, o.name) for o in graph.output)) - inits
    order = {o: k for k, n in enumerate(graph.node) for o in n.output}
    producer = {o: n for n in graph.node for o in n.output}
    candidates = [t for t in common if t in order
                  and producer[t].op_type not in ("DynamicQuantizeLinear", "Shape", "Constant")]
    if not candidates:
        raise ValueError("model.onnx: no tensor shared by every head")
    return max(candidates, key=lambda t: order[t])


FEATURES = ("pooler", "pooler+mean", "layers")
_LAYER_OUTPUT = re.compile(r"/encoder/layer\.(\d+)/output/LayerNorm/")


def layer_tensors(model) -> list[str]:  # noqa: ANN001
    """Each encoder layer's output [batch, seq, dim] (the final LayerNorm of every layer of
    a HF BERT export, fused or not), in layer order."""
    found: dict[int, str] = {}
    for node in model.graph.node:
        if "LayerNorm" in node.op_type and node.output:
            m = _LAYER_OUTPUT.search(node.output[0])
            if m:
                found[int(m.group(1))] = node.output[0]
    if not found or sorted(found) != list(range(len(found))):
        raise ValueError("model.onnx: no per-layer encoder outputs")
    return [found[i] for i in sorted(found)]


def hidden_tensor(model) -> str:  # noqa: ANN001
    """The encoder's last hidden state [batch, seq, dim]: what the pooler's Gather (the last
    Gather the shared embedding depends on, over a computed tensor) reads."""
    g = model.graph
    ancestors = _ancestors(g, embedding_tensor(model))
    producer = {o: n for n in g.node for o in n.output}
    gathers = [n for n in g.node if n.op_type == "Gather" and n.output[0] in ancestors
               and n.input[0] in producer and producer[n.input[0]].op_type != "Shape"]
    if not gathers:
        raise ValueError("model.onnx: no pooler Gather over the last hidden state")
    return gathers[-1].input[0]


def add_features(model, kind: str) -> str:  # noqa: ANN001
    """The feature tensor a grafted head reads, adding its nodes to `model` if needed:
    `pooler` = the shared embedding; `pooler+mean` = [pooler, attention-masked mean of the
    last hidden state] (MiniLM was pre-trained for mean pooling); `layers` = [pooler, the
    masked mean of every encoder layer's output] (the lower layers keep more of what a
    task-tuned top layer discards)."""
    from onnx import TensorProto, helper, numpy_helper

    if kind not in FEATURES:
        raise ValueError(f"features {kind!r}: use one of {FEATURES}")
    emb = embedding_tensor(model)
    if kind == "pooler":
        return emb
    g = model.graph
    name = "features_pooler_mean" if kind == "pooler+mean" else "features_layers"
    if name in {o for n in g.node for o in n.output}:
        return name
    hiddens = [hidden_tensor(model)] if kind == "pooler+mean" else layer_tensors(model)
    p = "/features/mean"
    g.initializer.extend([numpy_helper.from_array(np.array([1], np.int64), f"{p}/axes1"),
                          numpy_helper.from_array(np.array([2], np.int64), f"{p}/axes2"),
                          numpy_helper.from_array(np.array(1e-9, np.float32), f"{p}/eps")])
    g.node.extend([
        helper.make_node("Cast", ["attention_mask"], [f"{p}/mask"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", [f"{p}/mask", f"{p}/axes2"], [f"{p}/mask3"]),
        helper.make_node("ReduceSum", [f"{p}/mask3", f"{p}/axes1"], [f"{p}/count"],
                         keepdims=0),
        helper.make_node("Max", [f"{p}/count", f"{p}/eps"], [f"{p}/count1"]),
    ])
    means = []
    for k, hidden in enumerate(hiddens):
        q = f"{p}/{k}"
        g.node.extend([
            helper.make_node("Mul", [hidden, f"{p}/mask3"], [f"{q}/masked"]),
            helper.make_node("ReduceSum", [f"{q}/masked", f"{p}/axes1"], [f"{q}/sum"],
                             keepdims=0),
            helper.make_node("Div", [f"{q}/sum", f"{p}/count1"], [f"{q}/mean"]),
        ])
        means.append(f"{q}/mean")
    g.node.append(helper.make_node("Concat", [emb, *means], [name], axis=1))
    return name


def with_outputs(model, names: list[str]):  # noqa: ANN001, ANN201
    """A copy of the model with extra float outputs [batch, dim] (e.g. the embedding)."""
    import onnx
    from onnx import TensorProto, helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for name in names:
        m.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return m


def add_head(model, output: str, weight: np.ndarray, bias: np.ndarray,  # noqa: ANN001, ANN201
             features: str = "pooler"):
    """Append `output` = features @ weight + bias; weight [dim, labels]."""
    from onnx import TensorProto, helper, numpy_helper

    emb = add_features(model, features)
    g = model.graph
    if output in {o.name for o in g.output}:
        raise ValueError(f"model.onnx already has an output {output!r}")
    w = numpy_helper.from_array(weight.astype(np.float32), f"{output}.weight")
    b = numpy_helper.from_array(bias.astype(np.float32), f"{output}.bias")
    g.initializer.extend([w, b])
    g.node.append(helper.make_node("MatMul", [emb, w.name], [f"{output}_matmul"],
                                   name=f"/{output}/MatMul"))
    g.node.append(helper.make_node("Add", [f"{output}_matmul", b.name], [output],
                                   name=f"/{output}/Add"))
    g.output.append(helper.make_tensor_value_info(output, TensorProto.FLOAT,
                                                  ["batch", weight.shape[1]]))
    return model


def add_residual(model, output: str, weight: np.ndarray, bias: np.ndarray):  # noqa: ANN001, ANN201
    """Replace graph output `output` by `output + embedding @ weight + bias` (domain
    adaptation of an existing linear head: its last layer becomes W + weight, b + bias).
    Columns of `weight`/`bias` that are zero leave those logits bit-identical (x + 0 = x);
    no other output is touched."""
    from onnx import helper, numpy_helper

    emb = embedding_tensor(model)
    g = model.graph
    if output not in {o.name for o in g.output}:
        raise ValueError(f"model.onnx has no output {output!r}")
    if any(output in n.input for n in g.node):
        raise ValueError(f"model.onnx: {output!r} feeds other nodes; cannot adapt it in place")
    base = f"{output}_base"
    for node in g.node:
        node.output[:] = [base if o == output else o for o in node.output]
    w = numpy_helper.from_array(weight.astype(np.float32), f"{output}.adapt.weight")
    b = numpy_helper.from_array(bias.astype(np.float32), f"{output}.adapt.bias")
    g.initializer.extend([w, b])
    g.node.append(helper.make_node("MatMul", [emb, w.name], [f"{output}_adapt_matmul"],
                                   name=f"/{output}/adapt/MatMul"))
    g.node.append(helper.make_node("Add", [f"{output}_adapt_matmul", b.name],
                                   [f"{output}_adapt_delta"], name=f"/{output}/adapt/AddBias"))
    g.node.append(helper.make_node("Add", [base, f"{output}_adapt_delta"], [output],
                                   name=f"/{output}/adapt/Add"))
    return model


def embeddings(model_dir: Path, texts: list[str], threads: int = 2,
               batch_size: int = 64) -> np.ndarray:
    """The sentence embedding of each text's first window, through the served graph."""
    import onnx

    from wacht.service.runtime.model_dir import load_model_dir

    emb = embedding_tensor(onnx.load(str(load_model_dir(model_dir).model_file)))
    return tensors(model_dir, texts, [emb], threads, batch_size)[emb]


def tensors(model_dir: Path, texts: list[str], names: list[str], threads: int = 2,
            batch_size: int = 64, model=None) -> dict[str, np.ndarray]:  # noqa: ANN001
    """Named float tensors [batch, dim] (the embedding, a head's logits) of each text's first
    window, through the served graph or `model` (graph outputs or intermediate tensors)."""
    import onnx
    import onnxruntime as ort

    from wacht.service.runtime.engine import build_feeds
    from wacht.service.runtime.model_dir import load_model_dir
    from wacht.service.runtime.tokenize import WindowTokenizer

    md = load_model_dir(model_dir)
    model = onnx.load(str(md.model_file)) if model is None else model
    present = {o.name for o in model.graph.output}
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sess = ort.InferenceSession(
        with_outputs(model, [n for n in names if n not in present]).SerializeToString(),
        options, providers=["CPUExecutionProvider"])
    types = {i.name: (np.int32 if i.type == "tensor(int32)" else np.int64)
             for i in sess.get_inputs()}
    tok = WindowTokenizer.from_file(md.tokenizer_file, md.manifest.max_length,
                                    md.manifest.window_stride)
    windows = [e.windows[0] for e in tok.encode(texts, "head", 1)]
    order = sorted(range(len(windows)), key=lambda i: len(windows[i]))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        values = sess.run(names, build_feeds(types, [windows[i] for i in idx], tok.pad_id))
        for name, vec in zip(names, values, strict=True):
            if name not in out:
                out[name] = np.zeros((len(texts), vec.shape[1]), dtype=np.float32)
            out[name][idx] = vec
    return out


def _has_subgraphs(graph) -> bool:  # noqa: ANN001
    from onnx import AttributeProto

    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS)
               for n in graph.node for a in n.attribute)


def merge_branch(model, other, prefix: str, outputs: list[str] | None = None):  # noqa: ANN001, ANN201
    """A copy of `model` with `other`'s graph added as a second branch on the same inputs.

    Every node, initializer and intermediate tensor of `other` is renamed `prefix + name`;
    its inputs are `model`'s inputs of the same name (a Cast is inserted where the element
    types differ); `outputs` (default: all of `other`'s outputs) are appended under their own
    names. `model`'s nodes are not touched, so its outputs do not change."""
    import onnx
    from onnx import helper

    g, o = model.graph, other.graph
    if other.functions or _has_subgraphs(o):
        raise ValueError("merge_branch: graphs with functions or subgraphs are not supported")
    mine = {i.name: i.type.tensor_type.elem_type for i in g.input}
    keep = [x.name for x in o.output] if outputs is None else list(outputs)
    missing = set(keep) - {x.name for x in o.output}
    if missing:
        raise ValueError(f"merge_branch: the branch has no output {sorted(missing)}")
    taken = ({x.name for x in g.input} | {x.name for x in g.output} | {x.name for x in
             g.initializer} | {t for n in g.node for t in n.output})
    clash = [name for name in keep if name in taken]
    if clash:
        raise ValueError(f"merge_branch: {clash} already in the model")
    own = {v.domain or "ai.onnx": v.version for v in model.opset_import}
    theirs = {v.domain or "ai.onnx": v.version for v in other.opset_import}
    if "ai.onnx" in theirs and own.get("ai.onnx", theirs["ai.onnx"]) != theirs["ai.onnx"]:
        raise ValueError(f"merge_branch: default opset {own.get('ai.onnx')} != "
                         f"{theirs['ai.onnx']}")

    rename: dict[str, str] = {"": ""}
    casts = []
    for x in o.input:
        if x.name not in mine:
            raise ValueError(f"merge_branch: the model has no input {x.name!r}")
        want = x.type.tensor_type.elem_type
        if want == mine[x.name]:
            rename[x.name] = x.name
        else:  # e.g. the branch reads int64 where the model's input is int32
            rename[x.name] = f"{prefix}{x.name}"
            casts.append(helper.make_node("Cast", [x.name], [rename[x.name]], to=want,
                                          name=f"{prefix}cast/{x.name}"))
    for t in o.initializer:
        rename[t.name] = f"{prefix}{t.name}"
    for n in o.node:
        for t in n.output:
            rename.setdefault(t, t if t in keep else f"{prefix}{t}")

    merged = onnx.ModelProto()
    merged.CopyFrom(model)
    mg = merged.graph
    mg.node.extend(casts)
    for k, n in enumerate(o.node):
        node = onnx.NodeProto()
        node.CopyFrom(n)
        node.name = f"{prefix}{n.name or f'node_{k}'}"
        node.input[:] = [rename[i] for i in n.input]
        node.output[:] = [rename[t] for t in n.output]
        mg.node.append(node)
    for t in o.initializer:
        init = onnx.TensorProto()
        init.CopyFrom(t)
        init.name = rename[t.name]
        mg.initializer.append(init)
    for v in o.value_info:
        if v.name in rename:
            info = onnx.ValueInfoProto()
            info.CopyFrom(v)
            info.name = rename[v.name]
            mg.value_info.append(info)
    for x in o.output:
        if x.name in keep:
            mg.output.append(x)
    for domain, version in theirs.items():
        if domain not in own:
            merged.opset_import.append(helper.make_opsetid(
                "" if domain == "ai.onnx" else domain, version))
        elif own[domain] < version:
            next(v for v in merged.opset_import
                 if (v.domain or "ai.onnx") == domain).version = version
    merged.ir_version = max(model.ir_version, other.ir_version)
    return merged
