"""What goes wrong with training data, in terms a user can act on: the file, the line, the field."""

from dataclasses import dataclass


@dataclass(frozen=True)
class BadRecord:
    """A record that could not become a sample: where it is (`path:line` or `path:row N`) and why."""

    source: str
    problem: str

    def __str__(self) -> str:
        return f"{self.source}: {self.problem}"


class RecordProblem(ValueError):
    """What is wrong with a record; becomes a `BadRecord` at the record's source."""


class BadRecordError(ValueError):
    """One malformed record; the message starts with `path:line:`. `on_bad_record: skip` skips these."""

    def __init__(self, record: BadRecord) -> None:
        super().__init__(str(record))
        self.record = record


class DataFileError(ValueError):
    """A data file as a whole is unusable (missing, unreadable, unknown format, no usable records).

    Always fatal, whatever `on_bad_record` says: skipping cannot make such a file trainable.
    """


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to find assistant tokens.

    Always fatal: it is the template's fault, not the record's, and skipping would drop every chat it
    renders the same way.
    """


class EarlierTurnsRerendered(ChatTemplateError):
    """The chat template renders an earlier assistant message otherwise once later turns follow (Qwen3's
    drops its reasoning): the chat is trained in parts (`chat.trained_parts`)."""
