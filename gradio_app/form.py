"""The clinical form's widgets: a fixed number of slots, one per feature of the selected model.

Events can only be wired to components that exist when the page is built (``@gr.render``'s components
cannot be inputs of the ``/explain`` API endpoint), so the form has ``MAX_FIELDS`` slots built up front,
each a dropdown and a number; choosing a model fills in and shows one of the two per feature and hides
the rest. What the values mean is ``gradio_app.clinical``'s business; this module only lays them out.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import gradio as gr

from gradio_app.clinical import FormField, batch_note

MAX_FIELDS = 12
SLOT_WIDTH = 150  # px before the row wraps


class ClinicalForm:
    """The form's components; build it inside a ``gr.Blocks`` context.

    Args:
        fields: The form of the model selected when the page is built.
    """

    def __init__(self, fields: Sequence[FormField]) -> None:
        self.choices: list[gr.Dropdown] = []
        self.numbers: list[gr.Number] = []
        with gr.Accordion("Clinical data", visible=bool(fields), elem_id="clinical") as self.box:
            self.note = gr.Markdown(note(fields), visible=bool(fields))
            with gr.Row():
                for i in range(MAX_FIELDS):
                    choice, number = slot(fields[i] if i < len(fields) else None)
                    self.choices.append(gr.Dropdown(elem_id=f"clinical-choice-{i + 1}", min_width=SLOT_WIDTH,
                                                    **choice))
                    self.numbers.append(gr.Number(elem_id=f"clinical-number-{i + 1}", min_width=SLOT_WIDTH,
                                                  **number))

    @property
    def inputs(self) -> list[gr.components.Component]:
        """The values the explain event reads: every slot's dropdown, then every slot's number."""
        return [*self.choices, *self.numbers]

    @property
    def outputs(self) -> list[gr.components.Component | gr.Accordion]:
        """What :func:`updates` refreshes, in its order (API clients get all but the accordion)."""
        return [self.box, self.note, *self.choices, *self.numbers]


def slot(field: FormField | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The dropdown's and the number's properties for one slot: the field's input shown, the other hidden."""
    hidden: dict[str, Any] = {"visible": False, "value": None}
    if field is None:
        return {**hidden, "choices": []}, hidden
    if field.numeric:
        placeholder = "required" if field.required else "empty = missing"
        return ({**hidden, "choices": []},
                {"visible": True, "value": None, "label": field.label, "placeholder": placeholder})
    return {"visible": True, "value": field.empty, "label": field.label, "choices": field.choices}, hidden


def note(fields: Sequence[FormField]) -> str:
    """The form's one-line explanation (and a warning if the model has more fields than slots)."""
    text = "This model also reads clinical data. Leave a field empty (or *(missing)*) when it is not known."
    if len(fields) > MAX_FIELDS:
        rest = ", ".join(f.name for f in fields[MAX_FIELDS:])
        text += f" **Only {MAX_FIELDS} fields fit in this form: {rest} are sent as missing.**"
    return text


def updates(fields: Sequence[FormField]) -> tuple:
    """New properties for :attr:`ClinicalForm.outputs`: the form of another model (hidden when it has none)."""
    slots = [slot(fields[i] if i < len(fields) else None) for i in range(MAX_FIELDS)]
    return (gr.Accordion(visible=bool(fields)), gr.Markdown(note(fields), visible=bool(fields)),
            *(gr.Dropdown(**choice) for choice, _ in slots), *(gr.Number(**number) for _, number in slots))


def batch_updates(fields: Sequence[FormField]) -> tuple:
    """The batch view's note and CSV upload (emptied: its rows belong to the previous model), shown for a
    model with clinical data only."""
    return gr.Markdown(batch_note(fields), visible=bool(fields)), gr.File(value=None, visible=bool(fields))


def values(fields: Sequence[FormField], slots: Sequence[Any]) -> list[Any]:
    """One value per form field from :attr:`ClinicalForm.inputs`' values (the dropdown or the number)."""
    choices, numbers = slots[:MAX_FIELDS], slots[MAX_FIELDS:]
    return [(numbers if f.numeric else choices)[i] for i, f in enumerate(fields[:MAX_FIELDS])]


def parameter_names() -> list[str]:
    """The API names of :attr:`ClinicalForm.inputs`: ``choice_1``... then ``number_1``..."""
    return [f"choice_{i + 1}" for i in range(MAX_FIELDS)] + [f"number_{i + 1}" for i in range(MAX_FIELDS)]


def with_form_parameters(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(*inputs, *form)`` with the form's slots named in its signature, each defaulting to ``None``.

    Gradio names an endpoint's API parameters, and gives them defaults, from the function's signature:
    this keeps ``/explain`` callable with its original parameters alone (the form left empty), and
    gives the slots readable names in "Use via API".
    """
    signature = inspect.signature(fn)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    slots = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None)
             for name in parameter_names()]

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    wrapper.__signature__ = signature.replace(parameters=[*fixed, *slots])  # type: ignore[attr-defined]
    return wrapper
