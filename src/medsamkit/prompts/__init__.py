"""Prompts: the protocol's modes, prompts simulated from a truth mask, and the one click session."""

from medsamkit.core.prompt_modes import VALID_FORMS, PromptMode, parse_mode, parse_modes
from medsamkit.prompts.session import ClickSession, StepResult, run_interactive
from medsamkit.prompts.simulate import (
    Prompt,
    center_point,
    initial_prompt,
    next_click,
    random_points,
    stack_prompts,
    tight_box,
)

__all__ = [
    "VALID_FORMS", "ClickSession", "Prompt", "PromptMode", "StepResult", "center_point", "initial_prompt",
    "next_click", "parse_mode", "parse_modes", "random_points", "run_interactive", "stack_prompts", "tight_box",
]
