"""Tiny random-weight models whose tokenizers and chat templates follow real model families.

The templates are condensed from the families' published Hugging Face tokenizer configs (the parts
that matter here: system/tools preamble, tool-call and tool-result rendering, thinking switches);
the tokenizers are BPE vocabularies trained in milliseconds that carry each family's special
tokens. Nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

_QWEN_TOOLS_PREAMBLE = (
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].role == 'system' %}{{- messages[0].content + '\\n\\n' }}{%- endif %}"
    '{{- "# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}'
    "{%- for tool in tools %}{{- '\\n' }}{{- tool | tojson }}{%- endfor %}"
    '{{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, '
    '\\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}'
)

_QWEN_TOOL_RESULT = (
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or (messages[loop.index0 - 1].role != 'tool') %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}{{- '<|im_end|>\\n' }}{%- endif %}"
)

_QWEN_TOOL_CALLS = (
    "{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    '{{- \'\\n<tool_call>\\n{"name": "\' + tool_call.name + \'", "arguments": \' }}'
    "{%- if tool_call.arguments is string %}{{- tool_call.arguments }}{%- else %}{{- tool_call.arguments | tojson }}{%- endif %}"
    "{{- '}\\n</tool_call>' }}"
    "{%- endfor %}"
)

# Qwen2.5-Instruct: Hermes-style tools, no thinking.
QWEN25_TEMPLATE = (
    "{%- if tools %}" + _QWEN_TOOLS_PREAMBLE + "{%- else %}"
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{{- '<|im_start|>' + message.role }}{%- if message.content %}{{- '\\n' + message.content }}{%- endif %}"
    + _QWEN_TOOL_CALLS
    + "{{- '<|im_end|>\\n' }}"
    + _QWEN_TOOL_RESULT
    + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Qwen3: the same tools, plus <think> blocks and the enable_thinking switch.
QWEN3_TEMPLATE = (
    "{%- if tools %}" + _QWEN_TOOLS_PREAMBLE + "{%- else %}"
    "{%- if messages[0].role == 'system' %}{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endif %}"
    "{%- set ns = namespace(last_query_index=messages|length - 1) %}"
    "{%- for message in messages[::-1] %}{%- if message.role == 'user' and ns.last_query_index == messages|length - 1 %}"
    "{%- set ns.last_query_index = (messages|length - 1) - loop.index0 %}{%- endif %}{%- endfor %}"
    "{%- for message in messages %}"
    "{%- set content = message.content if message.content is string else '' %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'assistant' %}"
    "{%- set reasoning_content = message.reasoning_content if message.reasoning_content is string else '' %}"
    "{%- if '</think>' in content %}"
    "{%- set reasoning_content = content.split('</think>')[0].rstrip('\\n').split('<think>')[-1].lstrip('\\n') %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}{%- endif %}"
    "{%- if loop.index0 > ns.last_query_index and reasoning_content %}"
    "{{- '<|im_start|>assistant\\n<think>\\n' + reasoning_content.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') }}"
    "{%- else %}{{- '<|im_start|>assistant\\n' + content }}{%- endif %}"
    + _QWEN_TOOL_CALLS
    + "{{- '<|im_end|>\\n' }}"
    + _QWEN_TOOL_RESULT
    + "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)

# DeepSeek-R1 style: the generation prompt pre-opens <think>, whatever the request says.
R1_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message.role == 'user' %}{{- '<｜User｜>' + message.content }}"
    "{%- elif message.role == 'assistant' %}{{- '<｜Assistant｜>' + message.content.split('</think>')[-1] + '<｜end▁of▁sentence｜>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<｜Assistant｜><think>\\n' }}{%- endif %}"
)

# Llama 3.1: tools go into the first user message; calls come back as bare JSON.
LLAMA31_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if not tools is defined %}{%- set tools = none %}{%- endif %}"
    "{%- if messages[0].role == 'system' %}{%- set system_message = messages[0].content | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system_message = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{%- if tools is not none %}{{- 'Environment: ipython\\n' }}{%- endif %}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: 26 Jul 2024\\n\\n' }}"
    "{{- system_message }}{{- '<|eot_id|>' }}"
    "{%- if tools is not none %}"
    "{%- set first_user_message = messages[0].content | trim %}{%- set messages = messages[1:] %}"
    "{{- '<|start_header_id|>user<|end_header_id|>\\n\\n' }}"
    "{{- 'Given the following functions, please respond with a JSON for a function call with its proper '"
    " 'arguments that best answers the given prompt.\\n\\n' }}"
    '{{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}'
    "{{- 'Do not use variables.\\n\\n' }}"
    "{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\\n\\n' }}{%- endfor %}"
    "{{- first_user_message + '<|eot_id|>' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}"
    "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}"
    "{%- elif 'tool_calls' in message %}"
    "{%- set tool_call = message.tool_calls[0].function %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{{- '{\"name\": \"' + tool_call.name + '\", \"parameters\": ' }}{{- tool_call.arguments | tojson }}{{- '}<|eot_id|>' }}"
    "{%- elif message.role == 'tool' or message.role == 'ipython' %}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + message.content + '<|eot_id|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)

# gpt-oss: harmony channels; reasoning_effort sets the level.
GPTOSS_TEMPLATE = (
    "{{- '<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
    "Reasoning: ' + (reasoning_effort if reasoning_effort is defined else 'medium') + '\n\n"
    "# Valid channels: analysis, commentary, final. Channel must be included for every message.' }}"
    "{%- if tools %}{{- \"\nCalls to these tools must go to the commentary channel: 'functions'.\" }}{%- endif %}"
    "{{- '<|end|>' }}"
    "{%- if tools %}{{- '<|start|>developer<|message|># Tools\n\n## functions\n\nnamespace functions {\n' }}"
    "{%- for t in tools %}{{- '// ' + (t.function.description or '') + '\ntype ' + t.function.name + ' = (_: ' }}"
    "{{- t.function.parameters | tojson }}{{- ') => any;\n' }}{%- endfor %}"
    "{{- '} // namespace functions<|end|>' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'user' %}{{- '<|start|>user<|message|>' + m.content + '<|end|>' }}"
    "{%- elif m.role == 'assistant' and m.tool_calls %}"
    "{%- for tc in m.tool_calls %}{{- '<|start|>assistant to=functions.' + tc.function.name + "
    "'<|channel|>commentary json<|message|>' }}{{- tc.function.arguments | tojson }}{{- '<|call|>' }}{%- endfor %}"
    "{%- elif m.role == 'assistant' %}{{- '<|start|>assistant<|channel|>final<|message|>' + m.content + '<|end|>' }}"
    "{%- elif m.role == 'tool' %}{{- '<|start|>functions.' + m.name + ' to=assistant<|channel|>commentary<|message|>' }}"
    "{{- m.content | tojson }}{{- '<|end|>' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start|>assistant' }}{%- endif %}"
)

QWEN_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
QWEN_TEXT_TOKENS = ["<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>"]  # special: false


@dataclass
class Family:
    name: str
    template: str | None
    special: list[str]
    eos: str
    bos: str | None = None
    text_tokens: list[str] = field(default_factory=list)  # added tokens that decode as text
    more_eos: list[str] = field(default_factory=list)  # generation_config's other end tokens

    @property
    def all_tokens(self) -> list[str]:
        return self.special + self.text_tokens


FAMILIES = {
    "qwen25": Family("qwen25", QWEN25_TEMPLATE, QWEN_TOKENS, "<|im_end|>", text_tokens=QWEN_TEXT_TOKENS),
    "qwen3": Family(
        "qwen3", QWEN3_TEMPLATE, QWEN_TOKENS, "<|im_end|>", text_tokens=QWEN_TEXT_TOKENS + ["<think>", "</think>"]
    ),
    "r1": Family(
        "r1",
        R1_TEMPLATE,
        ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"],
        "<｜end▁of▁sentence｜>",
        bos="<｜begin▁of▁sentence｜>",
        text_tokens=["<think>", "</think>"],
    ),
    "llama31": Family(
        "llama31",
        LLAMA31_TEMPLATE,
        [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|python_tag|>",
        ],
        "<|eot_id|>",
        bos="<|begin_of_text|>",
    ),
    "gptoss": Family(
        "gptoss",
        GPTOSS_TEMPLATE,
        [
            "<|endoftext|>",
            "<|start|>",
            "<|end|>",
            "<|message|>",
            "<|channel|>",
            "<|constrain|>",
            "<|return|>",
            "<|call|>",
        ],
        "<|return|>",
        more_eos=["<|call|>"],
    ),
    # StarCoder2 base: no chat template, FIM tokens.
    "starcoder": Family(
        "starcoder",
        None,
        ["<|endoftext|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<file_sep>"],
        "<|endoftext|>",
    ),
}

_CORPUS = [
    "The quick brown fox jumps over the lazy dog. Why is the sky blue? Paris is the capital of France.",
    'def add(a, b):\n    return a + b\n\nprint(add(1, 2))  # {"name": "get_weather", "arguments": {"city": "Tokyo"}}',
    "Let me think about it. The weather in Tokyo is sunny, 21 degrees. true false null [1, 2.5, -3]",
] * 20


def build_tokenizer(out: Path, family: Family, vocab_size: int = 512) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=family.all_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    tok.save(str(out / "tokenizer.json"))
    data = json.loads((out / "tokenizer.json").read_text())
    for added in data["added_tokens"]:
        added["special"] = added["content"] in family.special
    (out / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": family.bos,
        "eos_token": family.eos,
        "pad_token": family.eos,
        "unk_token": None,
        "add_bos_token": family.bos is not None,
        "model_max_length": 4096,
    }
    if family.template:
        config["chat_template"] = family.template
    (out / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return data["model"]["vocab"] | {a["content"]: a["id"] for a in data["added_tokens"]}


def build_family_model(
    out: Path, family: str | Family, *, seed: int = 0, hidden: int = 64, layers: int = 2, context: int = 4096
) -> Path:
    """A llama-architecture MLX model with random weights for one family's tokenizer and template.
    The end token's output row is zeroed, so greedy decoding rarely stops on its own."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    fam = FAMILIES[family] if isinstance(family, str) else family
    out.mkdir(parents=True, exist_ok=True)
    vocab = build_tokenizer(out, fam)
    vocab_size = max(vocab.values()) + 1
    eos = vocab[fam.eos]
    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "intermediate_size": hidden * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "rope_theta": 10000.0,
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
        "eos_token_id": [eos] + [vocab[t] for t in fam.more_eos] if fam.more_eos else eos,
    }
    if fam.bos:
        config["bos_token_id"] = vocab[fam.bos]
    mx.random.seed(seed)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    mask = mx.ones((vocab_size, 1)).at[eos].multiply(0.0)
    weights["lm_head.weight"] = mx.random.normal((vocab_size, hidden)) * 0.5 * mask
    weights = {k: v.astype(mx.float16) for k, v in weights.items()}
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    (out / "config.json").write_text(json.dumps(config))
    (out / "model_info.json").write_text(
        json.dumps(
            {
                "general.architecture": "llama",
                "general.parameter_count": sum(int(v.size) for v in weights.values()),
                "llama.context_length": context,
                "llama.embedding_length": hidden,
                "llama.block_count": layers,
            }
        )
    )
    return out
