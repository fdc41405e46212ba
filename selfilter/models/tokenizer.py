"""A small tokenizer trained here, shaped like LLaVA-1.5's (Vicuna) tokenizer.

Byte-level BPE: every string is encodable (no `<unk>` in practice) and decoding is exact, so
"a red circle." comes back as written (a word-level decoder would glue punctuation as
"a red circle ."). `<s>` is prepended by the post-processor, like Llama's tokenizer, and the
chat template never writes it itself (that would double it).

The chat template follows Vicuna v1 as LLaVA-1.5 and lmms-eval's ``llava_hf`` use it:
``USER: <image>\\n{question} ASSISTANT: {answer}</s>USER: ...``. Assistant turns end with
``</s>`` so that training teaches the model to stop and generation (eos = ``</s>``) halts.
"""
from __future__ import annotations

import copy
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

BOS, EOS, UNK, PAD, IMAGE = "<s>", "</s>", "<unk>", "<pad>", "<image>"
SPECIAL_TOKENS = [UNK, BOS, EOS, PAD, IMAGE]  # ids 0..4 in this order

# Messages' content may be a string ("<image>\nWhat colour ...?", what llava_hf sends) or a
# list of typed parts ({"type": "image"} / {"type": "text", "text": ...}, what
# ``processor.apply_chat_template`` sends); both render to the same text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['content'] is string -%}{%- set text = message['content'] -%}"
    "{%- else -%}{%- set ns = namespace(text='') -%}"
    "{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{%- set ns.text = ns.text + '<image>\n' -%}"
    "{%- elif part['type'] == 'text' -%}{%- set ns.text = ns.text + part['text'] -%}{%- endif -%}"
    "{%- endfor -%}{%- set text = ns.text -%}{%- endif -%}"
    "{%- if message['role'] == 'system' -%}{{ text + ' ' }}"
    "{%- elif message['role'] == 'user' -%}{{ 'USER: ' + text + ' ' }}"
    "{%- elif message['role'] == 'assistant' -%}{{ 'ASSISTANT: ' + text + eos_token }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ 'ASSISTANT:' }}{%- endif -%}"
)

# Enough text to give a tokenizer for test fixtures a sensible vocabulary without any data.
BUILTIN_CORPUS = [
    "USER: <image>\nWhat color is the circle? ASSISTANT: The circle is red.",
    "USER: <image>\nHow many squares are there? ASSISTANT: There are 2 squares.",
    "USER: <image>\nIs there a blue triangle in the image? ASSISTANT: Yes.",
    "USER: <image>\nDescribe the image. ASSISTANT: A small green square on the left and a large "
    "yellow circle on the right.",
    "USER: Which object is left of the star? ASSISTANT: The purple triangle.",
    "a red circle. a blue square. a green triangle. a yellow star. an orange diamond.",
    "one two three four five six small large big top bottom left right middle above below",
    "no yes 0 1 2 3 4 5 6 7 8 9 , . ? ! : ; ' \" ( ) -",
]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2,
                    model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it for ``transformers``.

    The result has ``<s>``/``</s>``/``<unk>``/``<pad>`` and an ``<image>`` special token (never
    split, one id), prepends ``<s>`` when ``add_special_tokens`` is on, and carries the chat
    template. ``vocab_size`` is an upper bound: a small corpus stops merging earlier.
    """
    tok = Tokenizer(models.BPE(unk_token=UNK))
    # add_prefix_space=False: "ASSISTANT: yes" keeps the space inside "Ġyes", and decoding a
    # generated continuation gives back exactly the characters that were encoded.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, bos_id)]
    )
    return _wrap(tok, model_max_length)


def with_eos(tokenizer: PreTrainedTokenizerFast, model_max_length: int) -> PreTrainedTokenizerFast:
    """A copy that appends ``</s>`` and truncates to ``model_max_length``: CLIP's text encoder
    pools the hidden state at the first ``eos_token_id``, so every text must carry one."""
    tok = copy.deepcopy(tokenizer.backend_tokenizer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}",
        special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))],
    )
    return _wrap(tok, model_max_length)


def _wrap(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        # ``image_token`` becomes an attribute that LlavaProcessor reads.
        extra_special_tokens={"image_token": IMAGE},
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
