"""Tiny llama models whose greedy (and, in practice, sampled) output is a fixed script.

Random weights never produce a tool call, a <think> block or a JSON answer, so the OpenAI and
Anthropic layers' end-to-end tests use models whose next token is a function of the last one:
every layer writes zero into the residual stream, the final hidden state is the last token's
embedding, and the output head maps it to its scripted successor with a wide logit margin. The
chat template ends the prompt with a trigger token chosen from the conversation, so one model can
answer "call a tool", "answer from the tool result" or "just reply".
"""

from __future__ import annotations

import json
from pathlib import Path

from mlxollama.store import ModelName, Store

from .store import package_tiny
from .tinymodels import build_tokenizer

EOS = "<|im_end|>"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "required": ["city"],
            "properties": {"city": {"type": "string", "description": "City name"}},
        },
    },
}
WEATHER_ARGS = {"city": "Paris"}
READ_ARGS = {"filepath": "notes.txt"}  # a call the Continue CLI can run (its Read tool)
TOOL_ANSWER = "Thanks, the tool has answered."
REPLY = "Hello from a scripted model."
THINKING = "The user greets me."
THOUGHTFUL_ANSWER = "Hello there!"
JSON_ANSWER = '{"answer": "yes"}'

# Qwen2.5-style Hermes tool format, so a template-driven tool parser recognises it.
TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n{% endif %}'
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant"
    '{%- for tc in message.tool_calls %}\n<tool_call>\n{"name": "{{ tc.function.name }}", "arguments": '
    "{{ tc.function.arguments | tojson }}}\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if messages[-1].role == 'tool' %}<|answer|>"
    "{%- elif tools and 'weather' in messages[-1].content %}<|call|>"
    "{%- elif tools and 'notes' in messages[-1].content %}<|read|>"
    "{%- else %}<|reply|>{%- endif %}{%- endif %}"
)
TOOLS_SCRIPTS = {
    "<|call|>": [
        "<tool_call>",
        "\n" + json.dumps({"name": "get_weather", "arguments": WEATHER_ARGS}) + "\n",
        "</tool_call>",
    ],
    # One token for the whole call: a token has one successor, and <tool_call> already has one.
    "<|read|>": ["<tool_call>\n" + json.dumps({"name": "Read", "arguments": READ_ARGS}) + "\n</tool_call>"],
    "<|answer|>": [TOOL_ANSWER],
    "<|reply|>": [REPLY],
}

# Qwen3-style: reasoning in <think></think>, `enable_thinking=False` skips it.
THINK_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{%- if message.reasoning_content %}<think>\n{{ message.reasoning_content }}\n</think>\n\n{%- endif %}"
    "{{ message.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if enable_thinking is defined and enable_thinking is false %}<|nothink|>{%- else %}<|think|>{%- endif %}"
    "{%- endif %}"
)
THINK_SCRIPTS = {
    "<|think|>": ["<think>", "\n" + THINKING + "\n", "</think>", "\n\n", THOUGHTFUL_ANSWER],
    "<|nothink|>": [THOUGHTFUL_ANSWER],
}

JSON_TEMPLATE = (
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<|json|>{%- endif %}"
)
JSON_SCRIPTS = {"<|json|>": [JSON_ANSWER]}

# Qwen's fill-in-the-middle tokens make the engine see a FIM model ("insert" capability); the
# prompt then ends with <|fim_middle|>.
FIM_MIDDLE = "    return a + b\n"
FIM_SCRIPTS = {"<|fim_middle|>": [FIM_MIDDLE]}
FIM_TOKENS = ("<|fim_prefix|>", "<|fim_suffix|>")

MODELS = {
    "scripted-tools:latest": (TOOLS_TEMPLATE, TOOLS_SCRIPTS, ()),
    "scripted-think:latest": (THINK_TEMPLATE, THINK_SCRIPTS, ()),
    "scripted-json:latest": (JSON_TEMPLATE, JSON_SCRIPTS, ()),
    "scripted-fim:latest": (JSON_TEMPLATE.replace("<|json|>", "<|fim_middle|>"), FIM_SCRIPTS, FIM_TOKENS),
}


def build_scripted_model(
    out: Path,
    template: str,
    scripts: dict[str, list[str]],
    specials: tuple[str, ...] = (),
    hidden: int = 64,
    context: int = 32768,
) -> Path:
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama
    from tokenizers import AddedToken, Tokenizer

    out.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out)
    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    pieces = sorted({p for chain in scripts.values() for p in chain})
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in (*scripts, *specials)])
    # Plain added tokens decode to their text, so the pieces reach the output as written.
    tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in pieces])
    tok.save(str(out / "tokenizer.json"))
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))

    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    eos = tok.token_to_id(EOS)
    successor: dict[int, int] = {}
    for trigger, chain in scripts.items():
        ids = [tok.token_to_id(trigger)] + [tok.token_to_id(p) for p in chain] + [eos]
        for a, b in zip(ids, ids[1:]):
            assert successor.get(a, b) == b, f"token {a} has two successors"
            successor[a] = b

    config = {
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": 1,
        "intermediate_size": hidden * 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": vocab_size,
        "rope_theta": 10000.0,
        "max_position_embeddings": context,
        "tie_word_embeddings": False,
        "eos_token_id": eos,
    }
    mx.random.seed(1)
    model = llama.Model(llama.ModelArgs.from_dict(config))
    weights = dict(tree_flatten(model.parameters()))
    for key in weights:
        if key.endswith(("o_proj.weight", "down_proj.weight")):
            weights[key] = mx.zeros_like(weights[key])  # the residual stream stays the embedding
    embed = weights["model.embed_tokens.weight"]
    normed = embed / mx.sqrt(mx.mean(embed * embed, axis=1, keepdims=True) + 1e-5)
    head = mx.zeros((vocab_size, hidden))
    for a, b in successor.items():
        # logit(b | a) = 40 while any other scripted row scores about ±40/sqrt(hidden): sampling
        # at temperature 1 still follows the script.
        head[b] = head[b] + normed[a] * (40.0 / hidden)
    weights["lm_head.weight"] = head
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
                "llama.block_count": 1,
            }
        )
    )
    return out


def ensure_scripted_models(models_dir: Path, work: Path) -> None:
    """Adds the scripted models to the session store (the live server reads it per request)."""
    store = Store(models_dir)
    for name, (template, scripts, specials) in MODELS.items():
        if store.resolve(ModelName.parse(name)) is None:
            model_dir = build_scripted_model(work / name.split(":")[0], template, scripts, specials)
            package_tiny(store, name, model_dir)


# --- coding agents (Codex CLI, Claude Code) ----------------------------------------------------
# Their requests carry ~50 KB of instructions and tools (about 32k tokens with the tiny
# tokenizer), so this model has a 128k window and asks for it with PARAMETER num_ctx, as an
# Ollama user would. Asked for the secret word, it calls the agent's own shell tool (Codex's
# exec_command, Claude Code's Bash) to read notes.txt; once a tool result holding the word is in
# the conversation it answers with it, so the answer proves the round trip.
AGENT_CONTEXT = 131072
AGENT_NOTES = "The secret word is banana.\n"
AGENT_ANSWER = "The tool says the secret word is banana."
AGENT_COMMAND = "cat notes.txt"
AGENT_TEMPLATE = (
    TOOLS_TEMPLATE.split("{%- if add_generation_prompt %}")[0]
    # Claude Code puts a system message after the user's, so the question is the last user turn.
    + "{%- set ns = namespace(found=false, asked='') %}"
    "{%- for m in messages %}{%- if m.role == 'tool' and 'banana' in m.content %}{%- set ns.found = true %}{%- endif %}"
    "{%- if m.role == 'user' %}{%- set ns.asked = m.content %}{%- endif %}{%- endfor %}"
    "{%- set names = (tools or []) | map(attribute='function.name') | list %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n"
    "{%- if ns.found %}<|found|>"
    "{%- elif 'secret word' in ns.asked and 'exec_command' in names %}<|exec|>"
    "{%- elif 'secret word' in ns.asked and 'Bash' in names %}<|bash|>"
    "{%- else %}<|reply|>{%- endif %}{%- endif %}"
)
AGENT_SCRIPTS = {
    "<|exec|>": [
        "<tool_call>\n" + json.dumps({"name": "exec_command", "arguments": {"cmd": AGENT_COMMAND}}) + "\n</tool_call>"
    ],
    "<|bash|>": [
        "<tool_call>\n"
        + json.dumps({"name": "Bash", "arguments": {"command": AGENT_COMMAND, "description": "Read the notes"}})
        + "\n</tool_call>"
    ],
    "<|found|>": [AGENT_ANSWER],
    "<|reply|>": [REPLY],
}
AGENT_MODEL = "scripted-agent:latest"


def ensure_agent_model(models_dir: Path, work: Path) -> str:
    store = Store(models_dir)
    if store.resolve(ModelName.parse(AGENT_MODEL)) is None:
        model_dir = build_scripted_model(work / "scripted-agent", AGENT_TEMPLATE, AGENT_SCRIPTS, context=AGENT_CONTEXT)
        package_tiny(store, AGENT_MODEL, model_dir, params={"num_ctx": AGENT_CONTEXT})
    return AGENT_MODEL
