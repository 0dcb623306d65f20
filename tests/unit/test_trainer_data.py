"""Dataset parsing, format detection, row checks and loss masks (real SmolLM2 tokenizer)."""

from __future__ import annotations

import io
from typing import Any

import pytest
from finetune_contract.config import InputLimits
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


LIMITS = InputLimits(max_line_bytes=200, max_rows=3, max_json_depth=6)


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        (b'{"a":' + b"[" * 90 + b"]" * 90 + b"}", "nested 91 levels deep"),
        (b'{"a": ' + b"[" * 6 + b"1" + b"]" * 6 + b"}", "nested 7 levels deep, more than the limit of 6"),
        (b'{"text": ' + b"9" * 190 + b"}", None),
        (b'{"text": "x", "n": NaN}', "NaN is not a JSON number"),
        (b'{"text": "caf\xe9"}', "not UTF-8 text (byte 14 of the line)"),
        (b'{"text": "' + b"x" * 300 + b'"}', "longer than 200 bytes"),
    ],
    ids=["deep-array", "deep-object", "long-number-in-limits", "nan", "latin-1", "long-line"],
)
def test_each_hostile_line_is_an_issue_on_its_own_line(line: bytes, needle: str | None) -> None:
    good = b'{"text": "ok"}'
    parsed = data.parse_jsonl_stream(io.BytesIO(b"\n".join([good, line, good]) + b"\n"), "train", LIMITS)
    if needle is None:
        assert parsed.errors == [], parsed.errors
        return
    assert [r.line for r in parsed.rows] == [1, 3]
    assert [e.line for e in parsed.errors] == [2]
    assert needle in parsed.errors[0].message, parsed.errors[0].message
    assert parsed.errors[0].failure_reason.value == "InvalidDataset"


def test_nesting_deeper_than_the_json_parser_can_go_is_an_issue_not_a_crash() -> None:
    parsed = data.parse_jsonl_stream(io.BytesIO(b"[" * 100_000 + b"]" * 100_000 + b"\n"), "train")
    assert [(e.line, e.message) for e in parsed.errors] == [(1, "nested deeper than 32 levels")]


def test_a_number_python_cannot_convert_is_an_issue_with_its_line() -> None:
    parsed = data.parse_jsonl_stream(io.BytesIO(b'{"text": "a", "n": ' + b"7" * 5000 + b"}\n"), "train")
    assert [(e.line, "4300 digits" in e.message) for e in parsed.errors] == [(1, True)]


def test_u2028_inside_a_row_does_not_split_it_and_crlf_ends_a_line() -> None:
    rows = ['{"text": "one\u2028two\u2029three\x85four"}', "{oops", '{"text": "b"}']
    parsed = data.parse_jsonl_stream(io.BytesIO("\r\n".join(rows).encode()), "train")
    assert [r.line for r in parsed.rows] == [1, 3]
    assert parsed.rows[0].data["text"] == "one\u2028two\u2029three\x85four"
    assert [e.line for e in parsed.errors] == [2]


def test_more_rows_than_the_limit_stop_reading_with_the_limit_named() -> None:
    text = "".join(f'{{"text": "{i}"}}\n' for i in range(10))
    parsed = data.parse_jsonl(text, "train", LIMITS)
    assert len(parsed.rows) == 3
    assert [(e.line, "more than 3 rows" in e.message) for e in parsed.errors] == [(4, True)]


def test_a_file_of_garbage_reports_its_first_problems_only() -> None:
    parsed = data.parse_jsonl("{bad\n" * 10_000, "train")
    assert len(parsed.errors) == data.MAX_ISSUES_PER_FILE + 1
    assert "stopped reading after" in parsed.errors[-1].message


def test_a_long_line_is_skipped_without_being_read_whole() -> None:
    class Counting(io.BytesIO):
        largest = 0

        def readline(self, size: int | None = -1) -> bytes:
            line = super().readline(size)
            Counting.largest = max(Counting.largest, len(line))
            return line

    stream = Counting(b'{"text": "' + b"x" * 50_000_000 + b'"}\n{"text": "b"}\n')
    parsed = data.parse_jsonl_stream(stream, "train", LIMITS)
    assert [r.line for r in parsed.rows] == [2]
    assert Counting.largest <= 1 << 20


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
