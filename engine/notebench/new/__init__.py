"""`notebench new`: a project made from a folder of the user's Parquet or CSV, with copier (see `project`)."""

from notebench.new.errors import NeedAnswers, NewProjectError
from notebench.new.infer import Options
from notebench.new.project import Project, create_project, plan

__all__ = ["NeedAnswers", "NewProjectError", "Options", "Project", "create_project", "plan"]
