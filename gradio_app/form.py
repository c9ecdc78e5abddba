"""The clinical form's widgets: one input per clinical field of the models known when the page is built.

Events can only be wired to components that exist when the page is built (``@gr.render``'s components
cannot be inputs of the ``/explain`` API endpoint), so the form is laid out up front: a named slot per
distinct field of every model described at start (the API parameter is the field's name), plus, when no
model could be described (the server was down), generic slots that any model's fields take in order.
Choosing a model shows its fields' inputs and hides the rest. What the values mean is
``gradio_app.clinical``'s business; this module only lays them out.
"""

from __future__ import annotations

import functools
import inspect
import keyword
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from gradio_app.clinical import FormField, is_missing

SPARE_SLOTS = 12  # generic slots when no model's form is known at start
SLOT_WIDTH = 150  # px before the row wraps


@dataclass(frozen=True)
class Slot:
    """One input of the form.

    Attributes:
        name: Its API parameter name (an identifier).
        field: The clinical field it is made for; ``None`` for a generic slot (a dropdown and a text box,
            for whatever field a model puts there).
    """

    name: str
    field: FormField | None = None

    @property
    def kinds(self) -> tuple[str, ...]:
        if self.field is None:
            return ("choice", "number")
        return ("number",) if self.field.numeric else ("choice",)

    def fits(self, f: FormField) -> bool:
        """Whether this is the slot made for ``f`` (same name, same kind)."""
        return self.field is not None and self.field.name == f.name and self.field.numeric == f.numeric


def plan(forms: Iterable[Sequence[FormField]]) -> list[Slot]:
    """The form's slots: one per distinct (name, kind) field over ``forms``, else generic ones."""
    slots: list[Slot] = []
    for fields in forms:
        for f in fields:
            if not any(s.fits(f) for s in slots):
                slots.append(Slot(_identifier(f.name, {s.name for s in slots}), f))
    return slots or [Slot(f"field_{i + 1}") for i in range(SPARE_SLOTS)]


def _identifier(name: str, taken: set[str]) -> str:
    """``name`` as a Python identifier (an API parameter), made unique among ``taken``."""
    base = re.sub(r"\W", "_", name).strip("_") or "field"
    if base[0].isdigit() or keyword.iskeyword(base):
        base = f"field_{base}"
    candidate, n = base, 2
    while candidate in taken:
        candidate, n = f"{base}_{n}", n + 1
    return candidate


def assign(fields: Sequence[FormField], slots: Sequence[Slot]) -> list[int | None]:
    """The slot index of each field: the slot made for it, else the next free generic slot; ``None`` when
    none is left (the field is then sent as missing)."""
    free = [i for i, s in enumerate(slots) if s.field is None]
    out: list[int | None] = []
    for f in fields:
        named = next((i for i, s in enumerate(slots) if s.fits(f)), None)
        out.append(named if named is not None else free.pop(0) if free else None)
    return out


class ClinicalForm:
    """The form's components; build it inside a ``gr.Blocks`` context.

    Args:
        slots: The form's slots (:func:`plan`).
        fields: The form of the model selected when the page is built.
    """

    def __init__(self, slots: Sequence[Slot], fields: Sequence[FormField]) -> None:
        self.slots = list(slots)
        self.entries = [(i, kind) for i, s in enumerate(self.slots) for kind in s.kinds]
        props = entry_props(fields, self.slots)
        self.inputs: list[gr.Dropdown | gr.Textbox] = []
        with gr.Accordion("Clinical data", visible=bool(fields), elem_id="clinical") as self.box:
            self.note = gr.Markdown(note(fields, self.slots), visible=bool(fields))
            with gr.Row():
                for (_, kind), prop in zip(self.entries, props, strict=True):
                    widget = gr.Dropdown if kind == "choice" else gr.Textbox
                    self.inputs.append(widget(elem_id=f"clinical-{self.names[len(self.inputs)]}",
                                              min_width=SLOT_WIDTH, **prop))

    @property
    def names(self) -> list[str]:
        """The API names of :attr:`inputs`: a field's name, or ``field_N_choice`` / ``field_N_number``."""
        return [s.name if s.field is not None else f"{s.name}_{kind}"
                for s, kind in ((self.slots[i], kind) for i, kind in self.entries)]

    @property
    def outputs(self) -> list[gr.components.Component | gr.Accordion]:
        """What :meth:`updates` refreshes, in its order (API clients get all but the accordion)."""
        return [self.box, self.note, *self.inputs]

    def updates(self, fields: Sequence[FormField]) -> tuple:
        """New properties for :attr:`outputs`: the form of another model (hidden when it has none).

        A slot made for a field only shows or hides, keeping its value (the field means the same for every
        model that has it, and an example picked while the form changes must not be wiped); a generic
        slot is set up for its new field, empty.
        """
        return (gr.Accordion(visible=bool(fields)), gr.Markdown(note(fields, self.slots), visible=bool(fields)),
                *((gr.Dropdown if kind == "choice" else gr.Textbox)(**p)
                  for (_, kind), p in zip(self.entries, entry_props(fields, self.slots, update=True), strict=True)))

    def values(self, fields: Sequence[FormField], inputs: Sequence[Any]) -> list[Any]:
        """One value per form field from :attr:`inputs`' values (``None`` for a field without a slot)."""
        where = {(i, kind): k for k, (i, kind) in enumerate(self.entries)}
        return [None if slot is None else inputs[where[slot, _kind(f)]]
                for f, slot in zip(fields, assign(fields, self.slots), strict=True)]

    def filled(self, fields: Sequence[FormField], values: dict[str, str]) -> list[Any]:
        """Values for :attr:`inputs` that show ``values`` (an example's clinical fields) in the form."""
        out: list[Any] = [None] * len(self.entries)
        where = {(i, kind): k for k, (i, kind) in enumerate(self.entries)}
        for f, slot in zip(fields, assign(fields, self.slots), strict=True):
            if slot is not None:
                out[where[slot, _kind(f)]] = _value(f, values.get(f.name))
        return out


def _kind(field: FormField) -> str:
    return "number" if field.numeric else "choice"


def _value(field: FormField, text: str | None) -> Any:
    """A CSV cell as the input shows it: the text, or the input's "missing" value."""
    return field.empty if text is None or is_missing(text) else text


def entry_props(fields: Sequence[FormField], slots: Sequence[Slot], update: bool = False) -> list[dict[str, Any]]:
    """Each input's properties for a model's form: its fields' inputs shown, every other one hidden.

    With ``update``, the properties that change from one model to another only: a slot made for a field
    keeps its choices and value.
    """
    by_slot = {slot: f for f, slot in zip(fields, assign(fields, slots), strict=True) if slot is not None}
    props = []
    for i, s in enumerate(slots):
        f = by_slot.get(i)
        for kind in s.kinds:
            if s.field is not None and not update:  # set up once, at build, for its own field
                props.append({**_shown(s.field), "visible": f is not None})
            elif s.field is not None:  # shown or hidden; a model whose field differs gets its own choices
                same = f is None or (f.categories == s.field.categories and f.required == s.field.required)
                props.append({"visible": f is not None} if same else _shown(f))
            elif f is not None and kind == _kind(f):
                props.append(_shown(f))
            else:
                props.append({"visible": False, "value": None, "choices": []} if kind == "choice"
                             else {"visible": False, "value": ""})
    return props


def _shown(f: FormField) -> dict[str, Any]:
    """A field's input, empty (which means missing)."""
    if f.numeric:
        placeholder = "a number (required)" if f.required else "a number; empty = missing"
        return {"visible": True, "value": "", "label": f.label, "placeholder": placeholder}
    return {"visible": True, "value": f.empty, "label": f.label, "choices": f.choices}


def note(fields: Sequence[FormField], slots: Sequence[Slot]) -> str:
    """The form's one-line explanation (and the fields it has no input for, if any)."""
    text = "This model also reads clinical data. Leave a field empty (or *(missing)*) when it is not known."
    dropped = [f.name for f, slot in zip(fields, assign(fields, slots), strict=True) if slot is None]
    if dropped:
        text += (f" **This form was laid out before the model was known: {', '.join(dropped)} cannot be entered "
                 "and are sent as missing.**")
    return text


def with_parameters(fn: Callable[..., Any], names: Sequence[str]) -> Callable[..., Any]:
    """``fn(*inputs, *form)`` with the form's inputs named ``names`` in its signature, each defaulting to ``None``.

    Gradio names an endpoint's API parameters, and gives them defaults, from the function's signature:
    this keeps ``/explain`` callable with its other parameters alone (the form left empty), and gives
    the clinical inputs their fields' names in "Use via API".
    """
    signature = inspect.signature(fn)
    fixed = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    slots = [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in names]

    @functools.wraps(fn)
    def wrapper(*args: Any) -> Any:
        return fn(*args)

    wrapper.__signature__ = signature.replace(parameters=[*fixed, *slots])  # type: ignore[attr-defined]
    return wrapper
