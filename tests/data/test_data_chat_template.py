"""The one chat template: text, Jinja equivalence, loss masks, image expansion, generation prompts."""

import jinja2
import pytest

from megatron_infimed.data.chat_template import (
    CHAT_TEMPLATE_JINJA,
    question_prompt,
    render_conversation,
    to_messages,
    tokenize_conversation,
    tokenize_generation_prompt,
)
from megatron_infimed.data.pack import IGNORE_INDEX
from megatron_infimed.data.tokenizer import IMAGE_PAD

CONVERSATIONS = [
    [{"from": "human", "value": "<image>\nWhat organ is shown?"}, {"from": "gpt", "value": "The liver."}],
    [{"from": "system", "value": "You are a radiologist."},
     {"from": "human", "value": "<image>\n<image>\nCompare."}, {"from": "gpt", "value": "Left is larger."},
     {"from": "human", "value": "Any fracture?"}, {"from": "gpt", "value": "No."}],
    [{"from": "human", "value": "Text only, no image."}, {"from": "gpt", "value": "  spaced\nanswer "}],
]


def jinja_render(conversations, add_generation_prompt):
    template = jinja2.Environment().from_string(CHAT_TEMPLATE_JINJA)
    return template.render(messages=to_messages(conversations), add_generation_prompt=add_generation_prompt)


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("generation", [False, True])
def test_jinja_template_renders_exactly_our_text(conversation, generation):
    assert jinja_render(conversation, generation) == render_conversation(conversation, generation)


def test_rendered_text_is_qwen_style():
    text = render_conversation(CONVERSATIONS[0])
    assert text == ("<|im_start|>user\n<image>\nWhat organ is shown?<|im_end|>\n"
                    "<|im_start|>assistant\nThe liver.<|im_end|>\n")


@pytest.mark.parametrize("conversation", CONVERSATIONS)
def test_ids_equal_encoding_the_rendered_text_with_images_expanded(sp_tokenizer, conversation):
    tokenized = tokenize_conversation(conversation, sp_tokenizer, image_tokens=16)
    text = render_conversation(conversation).replace("<image>", IMAGE_PAD * 16)
    assert tokenized.input_ids.tolist() == sp_tokenizer.encode(text)


def test_image_placeholder_expands_to_image_tokens_pad_ids(sp_tokenizer):
    tokenized = tokenize_conversation(CONVERSATIONS[1], sp_tokenizer, image_tokens=16)
    assert tokenized.num_images == 2
    assert int((tokenized.input_ids == sp_tokenizer.image_token_id).sum()) == 32


def test_loss_falls_only_on_assistant_content_and_im_end(sp_tokenizer):
    conversation = CONVERSATIONS[1]
    tokenized = tokenize_conversation(conversation, sp_tokenizer, image_tokens=4)
    # Labels are shifted: the target of position i is token i+1; collect the trained targets.
    targets = [t for t in tokenized.labels.tolist() if t != IGNORE_INDEX]
    expected = []
    for turn in conversation:
        if turn["from"] == "gpt":
            expected += sp_tokenizer.encode(turn["value"]) + [sp_tokenizer.eos_id]
    assert targets == expected


def test_labels_are_the_next_token_where_trained(sp_tokenizer):
    tokenized = tokenize_conversation(CONVERSATIONS[0], sp_tokenizer, image_tokens=4)
    ids, labels = tokenized.input_ids.tolist(), tokenized.labels.tolist()
    for i, label in enumerate(labels):
        assert label == IGNORE_INDEX or label == ids[i + 1]
    assert labels[-1] == IGNORE_INDEX
    # the token before the answer is the "\n" after "assistant": it predicts the first answer token
    first = labels.index(next(lab for lab in labels if lab != IGNORE_INDEX))
    assert ids[first] == sp_tokenizer.encode("\n")[0]


def test_image_positions_are_never_trained(sp_tokenizer):
    tokenized = tokenize_conversation(CONVERSATIONS[1], sp_tokenizer, image_tokens=4)
    assert not bool((tokenized.labels == sp_tokenizer.image_token_id).any())


def test_generation_prompt_is_the_training_prefix_up_to_the_answer(sp_tokenizer):
    conversation = CONVERSATIONS[0]
    prompt = tokenize_generation_prompt(conversation[:1], sp_tokenizer, image_tokens=16)
    full = tokenize_conversation(conversation, sp_tokenizer, image_tokens=16).input_ids.tolist()
    assert full[:len(prompt)] == prompt
    assert sp_tokenizer.decode(prompt).endswith("<|im_end|>\n<|im_start|>assistant\n")
    answer = sp_tokenizer.encode("The liver.") + [sp_tokenizer.eos_id]
    assert full[len(prompt):len(prompt) + len(answer)] == answer


def test_question_prompt_puts_images_first_and_optional_system():
    turns = question_prompt("Is it normal?", num_images=2, system="Be brief.")
    assert turns == [{"from": "system", "value": "Be brief."},
                     {"from": "human", "value": "<image>\n<image>\nIs it normal?"}]


def test_generation_prompt_refuses_a_final_assistant_turn(sp_tokenizer):
    with pytest.raises(ValueError, match="must end with a user turn"):
        tokenize_generation_prompt(CONVERSATIONS[0], sp_tokenizer, image_tokens=4)


def test_unknown_role_names_the_sample_and_turn(sp_tokenizer):
    with pytest.raises(ValueError, match=r"sample s7: turn 1 has speaker 'bot'"):
        tokenize_conversation([{"from": "human", "value": "hi"}, {"from": "bot", "value": "x"}], sp_tokenizer, 4,
                              sample_id="s7")


@pytest.mark.parametrize("conversation", CONVERSATIONS[:2])
def test_hf_backend_ids_equal_encoding_the_rendered_text(bpe_tokenizer, conversation):
    tokenized = tokenize_conversation(conversation, bpe_tokenizer, image_tokens=4)
    text = render_conversation(conversation).replace("<image>", IMAGE_PAD * 4)
    assert tokenized.input_ids.tolist() == bpe_tokenizer.encode(text)
