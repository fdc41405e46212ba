from selfilter.models.tokenizer import BUILTIN_CORPUS, CHAT_TEMPLATE, train_tokenizer, with_eos


def test_round_trip_keeps_punctuation_and_spaces():
    tok = train_tokenizer(BUILTIN_CORPUS, vocab_size=400, min_frequency=1)
    for text in ["a red circle.", "There are 2 squares, left of the star!", "naïve ünïcode ✓"]:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert tok.decode(ids, skip_special_tokens=True) == text


def test_special_tokens_are_single_ids():
    tok = train_tokenizer(BUILTIN_CORPUS, vocab_size=400, min_frequency=1)
    assert tok.image_token == "<image>"
    for t in ["<s>", "</s>", "<unk>", "<pad>", "<image>"]:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id,
                tok.convert_tokens_to_ids("<image>")}) == 5


def test_chat_template_has_vicuna_shape():
    tok = train_tokenizer(BUILTIN_CORPUS, vocab_size=400, min_frequency=1)
    assert tok.chat_template == CHAT_TEMPLATE
    prompt = tok.apply_chat_template([{"role": "user", "content": "<image>\nWhat color?"}],
                                     add_generation_prompt=True, tokenize=False)
    assert prompt == "USER: <image>\nWhat color? ASSISTANT:"
    convo = [{"role": "user", "content": "<image>\nWhat color?"}, {"role": "assistant", "content": "red"},
             {"role": "user", "content": "And the shape?"}, {"role": "assistant", "content": "a circle."}]
    text = tok.apply_chat_template(convo, tokenize=False)
    assert text == "USER: <image>\nWhat color? ASSISTANT: red</s>USER: And the shape? ASSISTANT: a circle.</s>"
    # typed content parts (processor.apply_chat_template's form) render identically
    typed = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color?"}]}]
    assert tok.apply_chat_template(typed, add_generation_prompt=True, tokenize=False) == prompt
    ids = tok(text)["input_ids"]
    assert ids.count(tok.eos_token_id) == 2 and ids[-1] == tok.eos_token_id


def test_clip_variant_appends_eos_and_truncates():
    tok = with_eos(train_tokenizer(BUILTIN_CORPUS, vocab_size=400, min_frequency=1), model_max_length=8)
    ids = tok("a red circle on the left of a blue square.", truncation=True)["input_ids"]
    assert len(ids) == 8 and ids[-1] == tok.eos_token_id
