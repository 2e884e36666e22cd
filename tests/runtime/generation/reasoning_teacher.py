"""A tiny Qwen3 that answers every chat with its thinking and one tool call, for SGLang's OpenAI-compatible
server with its Qwen3 reasoning parser and Qwen2.5 tool-call parser switched on.

The model is a chain of bigrams: attention and the MLP write nothing (their output projections are zero), so
the state the head reads is the current token's embedding alone, and the head maps each token of the chain to
the next. The chain starts at the generation prompt's last token (every chat ends in it) and spells
`<think>REASONING</think><tool_call>CALL</tool_call><|im_end|>`, each piece one added token. The chat
template is Qwen3's own, as the trl package ships it.
"""

import json
from itertools import pairwise
from pathlib import Path

import torch
import trl
from tokenizers import AddedToken

from kubedistill.runtime.demo.tiny import TinyShape, build_model, build_tokenizer

REASONING = "Paris needs a lookup."
TOOL = "get_weather"
ARGUMENTS = {"city": "Paris"}
CALL = "\n" + json.dumps({"name": TOOL, "arguments": ARGUMENTS}) + "\n"
"""Between `<tool_call>` and `</tool_call>`, with the newlines SGLang's Qwen2.5 detector expects
(`srt/function_call/qwen25_detector.py`: `bot_token = "<tool_call>\\n"`, `eot_token = "\\n</tool_call>"`)."""
PIECES = ("<think>", REASONING, "</think>", "<tool_call>", CALL, "</tool_call>")
ANSWER_TOKENS = len(PIECES) + 1
"""Tokens of a whole answer: the pieces and the end of the turn."""
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL,
        "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
QWEN3_TEMPLATE = Path(trl.__file__).parent / "chat_templates" / "qwen3.jinja"


def save_reasoning_teacher(directory: Path) -> Path:
    tokenizer = build_tokenizer(["what is the weather in paris today", "hello there"], vocab_size=300)
    tokenizer.add_tokens([AddedToken(piece, special=False, normalized=False) for piece in PIECES])
    tokenizer.chat_template = QWEN3_TEMPLATE.read_text(encoding="utf-8")
    generation_prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    chain = [
        generation_prompt[-1],
        *tokenizer.convert_tokens_to_ids(list(PIECES)),
        tokenizer.eos_token_id,
    ]
    assert len(set(chain)) == len(chain), "a bigram chain visits each token once"
    model = build_model(
        tokenizer,
        TinyShape(hidden_size=32, intermediate_size=64, num_hidden_layers=1, tie_word_embeddings=False),
    )
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        head.zero_()
        for dimension, (token, following) in enumerate(pairwise(chain)):
            embeddings[token] = 0.0
            embeddings[token, dimension] = 1.0
            head[following, dimension] = 10.0
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
