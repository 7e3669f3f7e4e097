r"""Render chat messages into the surrogate's prompt text, knowing where each message's content sits.

Features are character spans inside a message's ``content``; to find their tokens the engine needs the
offset at which that content starts in the rendered prompt. Chat templates add text around contents
(role headers, special tokens, default system prompts), so offsets are found by rendering once with
unique sentinel strings in place of the contents, locating the sentinels, then substituting the real
contents back. The result is checked against a plain rendering of the real messages, so a template
that rewrites contents (other than trimming them) is reported instead of silently misaligned.

Tokenizers without a chat template (base models such as Gemma 3 270M) use a plain fallback: the
message contents joined by a blank line, an assistant message written ``"Answer:\n<content>"``, and
the generation prompt ``"\n\nAnswer:\n"`` -- for a system and a user message,
``system + "\n\n" + user + "\n\nAnswer:\n"``. That text is tokenised with the tokenizer's own
special tokens (e.g. BOS). The prompt ends in a line break, not a space: the answer is tokenised on
its own, and after ``"Answer: "`` a SentencePiece tokenizer would leave a lone ``"▁"`` token and split
``"▁Paris"`` into ``"▁"`` + ``"Paris"``, a sequence the model never sees; after a line break the
answer's own tokens are the ones the whole text has.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..adapters.base import Message
from ..errors import ConfigError, InputError

__all__ = ["RenderedChat", "render_chat"]

_PLAIN_SEPARATOR = "\n\n"
_PLAIN_ANSWER = "Answer:\n"


@dataclass(frozen=True)
class RenderedChat:
    """A prompt as text, plus where each message's content starts in it.

    ``content_offsets[i]`` is the character index in ``text`` at which ``messages[i].content``
    starts, so a feature at ``(i, start, end)`` of the content is ``text[off + start : off + end]``.
    ``add_special_tokens`` is how ``text`` must be tokenised: ``False`` when the template already
    wrote the special tokens (BOS, role markers), ``True`` for the plain fallback.
    """

    text: str
    content_offsets: list[int]
    add_special_tokens: bool
    #: True when the tokenizer has no chat template and the plain fallback (module docs) was used.
    fallback: bool = False


def render_chat(
    tokenizer: Any, messages: Sequence[Message], *, add_generation_prompt: bool = True
) -> RenderedChat:
    """Render ``messages`` with ``tokenizer``'s chat template (or the plain fallback).

    Raises :class:`InputError` for an empty message list or a template that rejects the messages,
    and :class:`ConfigError` when the template drops, repeats or rewrites a message's content.
    """
    if not messages:
        raise InputError("cannot render an empty list of messages")
    if getattr(tokenizer, "chat_template", None) is None:
        return _render_plain(messages, add_generation_prompt)
    return _render_template(tokenizer, messages, add_generation_prompt)


def _render_plain(messages: Sequence[Message], add_generation_prompt: bool) -> RenderedChat:
    pieces: list[str] = []
    offsets: list[int] = []
    pos = 0
    for i, msg in enumerate(messages):
        if i:
            pieces.append(_PLAIN_SEPARATOR)
            pos += len(_PLAIN_SEPARATOR)
        if msg.role == "assistant":
            pieces.append(_PLAIN_ANSWER)
            pos += len(_PLAIN_ANSWER)
        offsets.append(pos)
        pieces.append(msg.content)
        pos += len(msg.content)
    if add_generation_prompt:
        pieces.append(_PLAIN_SEPARATOR + _PLAIN_ANSWER)
    return RenderedChat(text="".join(pieces), content_offsets=offsets, add_special_tokens=True, fallback=True)


def _apply(
    tokenizer: Any, contents: Sequence[str], messages: Sequence[Message], add_generation_prompt: bool
) -> str:
    conversation = [{"role": m.role, "content": c} for m, c in zip(messages, contents, strict=True)]
    try:
        text = tokenizer.apply_chat_template(
            conversation, tokenize=False, add_generation_prompt=add_generation_prompt
        )
    except Exception as exc:  # jinja raises TemplateError / its own exceptions for rejected inputs
        raise InputError(f"the surrogate's chat template rejected the messages: {exc}") from exc
    if not isinstance(text, str):
        raise ConfigError(f"chat template returned {type(text).__name__}, expected text")
    return text


def _sentinels(messages: Sequence[Message]) -> list[str]:
    """One marker per message, made of letters and digits only (templates escape nothing in them)."""
    joined = "".join(m.content for m in messages)
    salt = 0
    while True:
        marks = [f"ATTRIBSDKMSG{salt}X{i}X" for i in range(len(messages))]
        if not any(mark in joined for mark in marks):
            return marks
        salt += 1


# Ways a template may transform a content, with the offset shift of the content start they imply.
_TRANSFORMS: tuple[tuple[Callable[[str], str], Callable[[str], int]], ...] = (
    (lambda c: c, lambda c: 0),
    (str.strip, lambda c: len(c) - len(c.lstrip())),
)


def _render_template(
    tokenizer: Any, messages: Sequence[Message], add_generation_prompt: bool
) -> RenderedChat:
    marks = _sentinels(messages)
    skeleton = _apply(tokenizer, marks, messages, add_generation_prompt)
    real = _apply(tokenizer, [m.content for m in messages], messages, add_generation_prompt)

    located: list[tuple[int, int]] = []  # (position in skeleton, message index)
    for i, mark in enumerate(marks):
        count = skeleton.count(mark)
        if count != 1:
            what = "drops" if count == 0 else "repeats"
            raise ConfigError(
                f"the surrogate's chat template {what} the content of message {i} ({messages[i].role}); "
                "feature positions cannot be tracked through it"
            )
        located.append((skeleton.index(mark), i))
    located.sort()

    # Literal template text between the sentinels.
    literals: list[str] = []
    cursor = 0
    for pos, i in located:
        literals.append(skeleton[cursor:pos])
        cursor = pos + len(marks[i])
    literals.append(skeleton[cursor:])

    for transform, shift in _TRANSFORMS:
        parts: list[str] = []
        offsets = [0] * len(messages)
        pos = 0
        for k, (_, i) in enumerate(located):
            parts.append(literals[k])
            pos += len(literals[k])
            content = messages[i].content
            offsets[i] = pos - shift(content)
            new = transform(content)
            parts.append(new)
            pos += len(new)
        parts.append(literals[-1])
        text = "".join(parts)
        if text == real:
            template_text = "".join(literals)
            return RenderedChat(
                text=text,
                content_offsets=offsets,
                add_special_tokens=not _has_special_tokens(tokenizer, template_text),
            )
    raise ConfigError(
        "the surrogate's chat template rewrites message contents; feature positions cannot be tracked"
    )


def _special_token_strings(tokenizer: Any) -> set[str]:
    out = {str(t) for t in getattr(tokenizer, "all_special_tokens", ()) if str(t)}
    decoder = getattr(tokenizer, "added_tokens_decoder", None) or {}
    out.update(str(t) for t in decoder.values() if getattr(t, "special", False) and str(t))
    return out


def _has_special_tokens(tokenizer: Any, template_text: str) -> bool:
    """True when the template's own text already contains special tokens (then the tokenizer must
    not add BOS/EOS again)."""
    return any(tok in template_text for tok in _special_token_strings(tokenizer))
