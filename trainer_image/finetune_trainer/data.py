"""Datasets: JSONL parsing with line numbers, format detection, tokenization with loss masks.

Three row formats, detected from the first valid row unless `dataset.format` says otherwise:

- chat: ``{"messages": [{"role": "user", "content": ...}, {"role": "assistant", ...}]}``
  (the OpenAI fine-tuning format; an assistant message may carry ``"weight": 0`` to be shown
  but not trained on). Rendered with the model's chat template; loss on assistant turns only.
- prompt-completion: ``{"prompt": ..., "completion": ...}``; loss on the completion only.
- text: ``{"text": ...}``; loss on every token.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Final, Literal

from finetune_contract.config import InputLimits
from finetune_contract.outcomes import FailureReason

from .memory_budget import MemoryBudgetExceeded, memory_budget

Format = Literal["chat", "prompt-completion", "text"]
IGNORE_INDEX = -100
# What a chat template may add to a conversation's own text (system prompts, tool schemas, markup).
MAX_TEMPLATE_OVERHEAD_CHARS: Final = 1024**2
ROLES = {"system", "user", "assistant"}


@dataclass(frozen=True)
class Row:
    line: int  # 1-based line number in the source file
    data: dict[str, Any]


# Which input an issue is about decides its failure reason; every dataset file (train, validation, test)
# is InvalidDataset.
_FILE_REASONS: Final = {"baseModel": FailureReason.INVALID_MODEL, "output": FailureReason.INVALID_OUTPUT}


@dataclass(frozen=True)
class Issue:
    file: str  # train, validation, test, baseModel, output
    line: int | None
    message: str
    # Set when the cause says more than the file does (AccessDenied).
    reason: FailureReason | None = None

    @property
    def failure_reason(self) -> FailureReason:
        return self.reason or _FILE_REASONS.get(self.file, FailureReason.INVALID_DATASET)

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "reason": self.failure_reason.value,
            "message": self.message,
        }


# Problems kept per file: a file of garbage would otherwise make a report as large as itself, and the
# first ones are what a user fixes first.
MAX_ISSUES_PER_FILE: Final = 50


@dataclass
class ParsedFile:
    name: str
    rows: list[Row] = field(default_factory=list)
    errors: list[Issue] = field(default_factory=list)
    blank_lines: int = 0

    def add_error(self, line: int | None, message: str) -> bool:
        """Record a problem; False once the file has had its share (stop reading it)."""
        if len(self.errors) >= MAX_ISSUES_PER_FILE:
            return False
        self.errors.append(Issue(self.name, line, message))
        if len(self.errors) == MAX_ISSUES_PER_FILE:
            self.errors.append(
                Issue(
                    self.name, line, f"stopped reading after {MAX_ISSUES_PER_FILE} problems; fix these first"
                )
            )
            return False
        return True


def parse_jsonl(text: str, name: str, limits: InputLimits | None = None) -> ParsedFile:
    """Parse JSONL text (tests, small inputs); see `parse_jsonl_stream`."""
    return parse_jsonl_stream(io.BytesIO(text.encode("utf-8")), name, limits)


def parse_jsonl_stream(stream: BinaryIO, name: str, limits: InputLimits | None = None) -> ParsedFile:
    """Parse JSONL from a byte stream, one line at a time, keeping line numbers.

    Lines end at "\\n" only (JSONL's rule), so a U+2028 inside a row does not split it; blank lines
    are skipped and counted. Every way a line can be bad becomes an issue with its line number,
    within `limits`: a line too long (not read whole), too many rows, invalid UTF-8, invalid JSON,
    NaN/Infinity, a number too long to convert, nesting too deep.
    """
    limits = limits or InputLimits()
    parsed = ParsedFile(name)
    for number, raw in enumerate(_lines(stream, limits.max_line_bytes), start=1):
        if raw is None:
            more = parsed.add_error(
                number,
                f"line is longer than {limits.max_line_bytes} bytes (the platform's limit); split the row "
                "or ask your platform team to raise limits.dataset.maxLineBytes",
            )
        else:
            more = _parse_line(raw, number, parsed, limits)
        if not more:
            break
        if len(parsed.rows) > limits.max_rows:
            parsed.rows.pop()
            parsed.add_error(
                number,
                f"more than {limits.max_rows} rows (the platform's limit); use fewer rows or ask your "
                "platform team to raise limits.dataset.maxRows",
            )
            break
    return parsed


def _lines(stream: BinaryIO, max_bytes: int) -> Iterator[bytes | None]:
    """Each line without its end; None for a line over `max_bytes`, which is skipped unread."""
    while True:
        line = stream.readline(max_bytes + 2)  # room for "\r\n"
        if not line:
            return
        if not line.endswith(b"\n") and len(line) > max_bytes:
            while (rest := stream.readline(1 << 20)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        yield None if len(line) > max_bytes else line


def _parse_line(raw: bytes, number: int, parsed: ParsedFile, limits: InputLimits) -> bool:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return parsed.add_error(
            number, f"not UTF-8 text (byte {exc.start + 1} of the line); save the file as UTF-8"
        )
    if not text.strip():
        parsed.blank_lines += 1
        return True
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        return parsed.add_error(number, f"not valid JSON ({exc.msg} at column {exc.colno})")
    except RecursionError:
        return parsed.add_error(number, f"nested deeper than {limits.max_json_depth} levels")
    except ValueError as exc:
        # Python refuses numbers of more than 4300 digits, and we refuse NaN and Infinity.
        return parsed.add_error(number, f"not valid JSON ({_short(str(exc))})")
    if not isinstance(value, dict):
        return parsed.add_error(number, f"expected a JSON object, got {type(value).__name__}")
    if (depth := json_depth(value)) > limits.max_json_depth:
        return parsed.add_error(
            number, f"nested {depth} levels deep, more than the limit of {limits.max_json_depth}"
        )
    parsed.rows.append(Row(number, value))
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _short(message: str) -> str:
    return message.split(";", maxsplit=1)[0][:200]


def json_depth(value: Any) -> int:
    """Levels of objects/arrays (a scalar is 0, {"a": 1} is 1); iterative, so any depth is safe."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        stack.extend((child, level + 1) for child in children)
    return deepest


def as_format(value: str) -> Format:
    """The row format a dataset.format other than auto names."""
    if value not in ("chat", "prompt-completion", "text"):
        raise ValueError(f"dataset.format {value!r} is not a row format")
    return value  # type: ignore[return-value]


def detect_format(row: dict[str, Any]) -> Format | None:
    if "messages" in row:
        return "chat"
    if "prompt" in row and "completion" in row:
        return "prompt-completion"
    if "text" in row:
        return "text"
    return None


def _nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def check_row(row: dict[str, Any], fmt: Format) -> str | None:
    """Return what is wrong with the row for the format, or None if it is fine."""
    found = detect_format(row)
    if found is None:
        return "no 'messages', 'prompt'+'completion' or 'text' key; use one of the three formats"
    if found != fmt:
        return f"row is in {found!r} format but the dataset is {fmt!r}; use one format per dataset"
    if fmt == "chat":
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            return "'messages' is empty or not a list"
        trained = 0
        for i, msg in enumerate(messages):
            if not isinstance(msg, dict):
                return f"messages[{i}] is not an object"
            role = msg.get("role")
            if role not in ROLES:
                return f"messages[{i}].role is {role!r}; expected one of system, user, assistant"
            if not _nonempty_str(msg.get("content")):
                return f"messages[{i}].content is empty or not a string"
            if msg.get("weight", 1) not in (0, 1):
                return f"messages[{i}].weight must be 0 or 1"
            if role == "assistant" and msg.get("weight", 1) == 1:
                trained += 1
        if trained == 0:
            return "no assistant message to train on (add an assistant reply)"
        return None
    if fmt == "prompt-completion":
        if not isinstance(row["prompt"], str):
            return "'prompt' is not a string"
        if not _nonempty_str(row["completion"]):
            return "'completion' is empty or not a string"
        return None
    if not _nonempty_str(row["text"]):
        return "'text' is empty or not a string"
    return None


def row_fingerprint(row: dict[str, Any], fmt: Format) -> str:
    """A hash of what the model sees, ignoring whitespace and key order (for duplicates/overlap)."""
    if fmt == "chat":
        content: Any = [(m.get("role"), " ".join(str(m.get("content", "")).split())) for m in row["messages"]]
    elif fmt == "prompt-completion":
        content = [" ".join(row["prompt"].split()), " ".join(row["completion"].split())]
    else:
        content = " ".join(row["text"].split())
    return hashlib.sha256(json.dumps(content).encode()).hexdigest()


# --- tokenization -----------------------------------------------------------------------------


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    full_length: int  # before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def trainable_tokens(self) -> int:
        # The first label is never predicted (nothing precedes it), so it does not count.
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def _render(tokenizer: Any, messages: list[dict[str, Any]], generation_prompt: bool, memory: int = 0) -> str:
    """The conversation through the model's chat template; with `memory` (bytes), rendering may use at
    most that much (the template is the model's code, not ours) and its text is refused when it is far
    longer than the messages, which the tokenizer, outside the budget, would otherwise pay for."""
    clean = [{"role": m["role"], "content": m["content"]} for m in messages]
    with memory_budget(memory) if memory else nullcontext():
        text: str = tokenizer.apply_chat_template(
            clean, tokenize=False, add_generation_prompt=generation_prompt
        )
    if memory:
        allowed = 4 * sum(len(str(m["content"])) for m in clean) + MAX_TEMPLATE_OVERHEAD_CHARS
        if len(text) > allowed:
            raise MemoryBudgetExceeded(
                f"rendered {len(clean)} messages to {len(text)} characters (at most {allowed} are "
                "accepted: 4x the messages plus 1 Mi characters)"
            )
    return text


def _chat_spans(
    tokenizer: Any, messages: list[dict[str, Any]], memory: int = 0
) -> tuple[str, list[tuple[int, int]]]:
    """Render a conversation and find the character spans of trained assistant turns.

    Templates differ, so instead of parsing one we render prefixes of the conversation: the
    assistant turn i spans from the end of "messages[:i] + generation prompt" to the end of
    "messages[:i+1]", which includes the template's end-of-turn token so the model learns to stop.
    """
    full = _render(tokenizer, messages, generation_prompt=False, memory=memory)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, msg in enumerate(messages):
        if msg["role"] != "assistant" or msg.get("weight", 1) == 0:
            continue
        before = _render(tokenizer, messages[:i], generation_prompt=True, memory=memory) if i else ""
        upto = _render(tokenizer, messages[: i + 1], generation_prompt=False, memory=memory)
        if full.startswith(before) and full.startswith(upto) and len(upto) > len(before):
            spans.append((len(before), len(upto)))
            cursor = len(upto)
            continue
        # Templates that rewrite earlier turns (e.g. dropping reasoning) break the prefix property:
        # fall back to locating the reply text itself.
        start = full.find(msg["content"], cursor)
        if start < 0:
            raise ValueError("the chat template drops assistant content; set dataset.format to 'text'")
        cursor = start + len(msg["content"])
        spans.append((start, cursor))
    return full, spans


def tokenize_row(
    row: dict[str, Any], fmt: Format, tokenizer: Any, max_length: int, *, template_memory: int = 0
) -> Example:
    """`template_memory`: bytes the chat template may allocate per rendering (0: unbounded), see
    `memory_budget`; over it, `MemoryBudgetExceeded`."""
    if fmt == "chat":
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the base model's tokenizer has no chat template; use prompt/completion rows instead"
            )
        text, spans = _chat_spans(tokenizer, row["messages"], template_memory)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids: list[int] = list(enc["input_ids"])
        labels = [IGNORE_INDEX] * len(ids)
        for t, (start, end) in enumerate(enc["offset_mapping"]):
            if end <= start:
                continue
            if any(s <= start < e for s, e in spans):
                labels[t] = ids[t]
    elif fmt == "prompt-completion":
        prompt_ids = list(tokenizer(row["prompt"], add_special_tokens=True)["input_ids"])
        completion_ids = list(tokenizer(row["completion"], add_special_tokens=False)["input_ids"])
        completion_ids.append(tokenizer.eos_token_id)
        ids = prompt_ids + completion_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + completion_ids
    else:
        ids = list(tokenizer(row["text"], add_special_tokens=True)["input_ids"])
        ids.append(tokenizer.eos_token_id)
        labels = list(ids)
    return Example(ids[:max_length], labels[:max_length], len(ids))


def generation_prompt(row: dict[str, Any], fmt: Format, tokenizer: Any) -> tuple[str, str] | None:
    """(prompt text, reference answer) for rows that end in an answer; None for plain text."""
    if fmt == "chat":
        messages = row["messages"]
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            return None
        return _render(tokenizer, messages[:-1], generation_prompt=True), str(messages[-1]["content"])
    if fmt == "prompt-completion":
        return str(row["prompt"]), str(row["completion"])
    return None


def generation_prompt_ids(row: dict[str, Any], fmt: Format, tokenizer: Any) -> tuple[list[int], str] | None:
    pair = generation_prompt(row, fmt, tokenizer)
    if pair is None:
        return None
    prompt, reference = pair
    # Chat prompts already contain the template's special tokens; plain prompts get the
    # tokenizer's own (as in training).
    ids = tokenizer(prompt, add_special_tokens=fmt != "chat")["input_ids"]
    return list(ids), reference
