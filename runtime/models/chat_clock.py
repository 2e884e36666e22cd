"""The moment chat templates see: the job's, not the clock's.

Llama 3.x templates write today's date into every system prompt ("Today Date: 06 Dec 2026") and gpt-oss's
("Current date: 2026-12-06"), both through `strftime_now`, which transformers puts among a template's globals
as `datetime.now().strftime(format)` (`transformers/utils/chat_template_utils.py`, `_compile_jinja_template`,
5.x). The same records rendered on another day are other tokens: a resume after midnight was refused as
"other records", and the job would have trained on two dates. A job renders as at one moment, its first
run's, which its checkpoints record (`origin.json`) for every run that resumes from them.
"""

from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

DIRECTIVES = "aAbBdHIjmMpSyY"
"""The strftime directives a pinned `strftime_now` answers (every one the chat templates we know use)."""


def pin_chat_clock(tokenizer: "PreTrainedTokenizerBase", moment: datetime) -> None:
    """`tokenizer`'s chat templates render as at `moment` from now on.

    Each template begins with a `strftime_now` macro of its own, which shadows the global of that name (a
    template's own names come before the environment's globals in Jinja). A function passed to the render
    would not do: transformers 5 turns every render argument into plain data (`_plain_template_data`), a
    function into a placeholder string."""
    template = tokenizer.chat_template
    if isinstance(template, str):
        tokenizer.chat_template = pinned_template(template, moment)
    elif isinstance(template, dict):
        tokenizer.chat_template = {name: pinned_template(text, moment) for name, text in template.items()}


def pinned_template(template: str, moment: datetime) -> str:
    values = "".join(f".replace({f'%{d}'!r}, {moment.strftime(f'%{d}')!r})" for d in DIRECTIVES)
    # No whitespace around the macro: the template's own first character stays its first output.
    return f"{{% macro strftime_now(format) %}}{{{{ format{values} }}}}{{% endmacro %}}{template}"
