"""What `notebench new` refuses: bad input, named with the file or column and the fix; nothing is written."""

from __future__ import annotations

from notebench.errors import NotebenchError

__all__ = ["NeedAnswers", "NewProjectError"]


class NewProjectError(NotebenchError):
    """`notebench new` cannot make a project from this input; the message names the file or column and the fix."""

    exit_code = 2


class NeedAnswers(NewProjectError):
    """What the data cannot tell, asked in one message: each missing option with its candidates."""

    def __init__(self, data, questions: list[str], answers: list[str], command: str = "notebench new DIR --data PATH"):
        self.data, self.questions, self.answers = data, questions, answers
        lines = "".join(f"\n  - {q}" for q in questions)
        super().__init__(f"the data in {data} does not say everything a project needs; tell it:{lines}\n"
                         f"then run again, e.g.\n  {command} {' '.join(answers)}")

    def asking(self, command: str) -> NeedAnswers:
        """The same question, its example command being `command` (the one the user ran)."""
        return NeedAnswers(self.data, self.questions, self.answers, command)
