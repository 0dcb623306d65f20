"""Dataset parsing, format detection, row checks and loss masks (real SmolLM2 tokenizer)."""

from __future__ import annotations

from typing import Any

import pytest
from finetune_trainer import data
from finetune_trainer.tiny_model import smollm2_tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    return smollm2_tokenizer()


def test_parse_jsonl_keeps_line_numbers_and_skips_blank_lines() -> None:
    text = '{"text": "a"}\n\n{bad json\n[1, 2]\n{"text": "b"}\n'
    parsed = data.parse_jsonl(text, "train")
    assert [r.line for r in parsed.rows] == [1, 5]
    assert parsed.blank_lines == 1
    assert [(e.line, e.message.split(" (")[0]) for e in parsed.errors] == [
        (3, "not valid JSON"),
        (4, "expected a JSON object, got list"),
    ]


@pytest.mark.parametrize(
    ("row", "fmt"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "chat"),
        ({"prompt": "p", "completion": "c"}, "prompt-completion"),
        ({"text": "t"}, "text"),
        ({"question": "q"}, None),
    ],
)
def test_detect_format(row: dict[str, Any], fmt: str | None) -> None:
    assert data.detect_format(row) == fmt


@pytest.mark.parametrize(
    ("row", "fmt", "needle"),
    [
        ({"messages": []}, "chat", "empty"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "chat", "role is 'bot'"),
        ({"messages": [{"role": "user", "content": "  "}]}, "chat", "content is empty"),
        ({"messages": [{"role": "user", "content": "q"}]}, "chat", "no assistant message"),
        (
            {
                "messages": [
                    {"role": "user", "content": "q"},
                    {"role": "assistant", "content": "a", "weight": 0},
                ]
            },
            "chat",
            "no assistant message",
        ),
        ({"prompt": "p", "completion": ""}, "prompt-completion", "'completion' is empty"),
        ({"text": ""}, "text", "'text' is empty"),
        ({"text": "x"}, "chat", "one format per dataset"),
        ({"foo": 1}, "text", "use one of the three formats"),
    ],
)
def test_check_row_says_what_is_wrong(row: dict[str, Any], fmt: data.Format, needle: str) -> None:
    problem = data.check_row(row, fmt)
    assert problem is not None
    assert needle in problem


def test_good_rows_pass() -> None:
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert data.check_row(chat, "chat") is None
    assert data.check_row({"prompt": "", "completion": "c"}, "prompt-completion") is None


def test_fingerprint_ignores_whitespace_differences() -> None:
    a = {"prompt": "What  is it?", "completion": "X"}
    b = {"prompt": "What is it? ", "completion": "X"}
    assert data.row_fingerprint(a, "prompt-completion") == data.row_fingerprint(b, "prompt-completion")


def trained_text(tokenizer: Any, example: data.Example) -> str:
    return str(
        tokenizer.decode([t for t, lab in zip(example.input_ids, example.labels, strict=True) if lab != -100])
    )


def test_chat_labels_cover_assistant_turns_only(tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Capital of France?"},
            {"role": "assistant", "content": "Paris."},
        ]
    }
    example = data.tokenize_row(row, "chat", tokenizer, 512)
    # The template's end-of-turn token is trained too, so the model learns to stop.
    assert trained_text(tokenizer, example).replace("\n", "") == "Hello!<|im_end|>Paris.<|im_end|>"
    full = tokenizer.decode(example.input_ids)
    assert full.startswith("<|im_start|>system\nBe brief.")
    assert "Capital of France?" in full


def test_chat_weight_zero_is_shown_but_not_trained(tokenizer: Any) -> None:
    row = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "assistant", "content": "first", "weight": 0},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "second"},
        ]
    }
    example = data.tokenize_row(row, "chat", tokenizer, 512)
    assert "first" not in trained_text(tokenizer, example)
    assert "second" in trained_text(tokenizer, example)


def test_prompt_completion_trains_completion_and_eos(tokenizer: Any) -> None:
    example = data.tokenize_row(
        {"prompt": "Q: 2+2?\nA:", "completion": " 4"}, "prompt-completion", tokenizer, 512
    )
    assert trained_text(tokenizer, example) == " 4" + tokenizer.eos_token


def test_text_trains_everything_and_truncates(tokenizer: Any) -> None:
    example = data.tokenize_row({"text": "one two three four five six"}, "text", tokenizer, 4)
    assert len(example.input_ids) == 4
    assert example.truncated
    assert example.labels == example.input_ids
    assert example.trainable_tokens == 3


def test_generation_prompt_for_eval(tokenizer: Any) -> None:
    row = {"messages": [{"role": "user", "content": "Capital?"}, {"role": "assistant", "content": "Paris"}]}
    pair = data.generation_prompt(row, "chat", tokenizer)
    assert pair is not None
    prompt, reference = pair
    assert prompt.endswith("<|im_start|>assistant\n")
    assert reference == "Paris"
    assert data.generation_prompt({"text": "x"}, "text", tokenizer) is None
