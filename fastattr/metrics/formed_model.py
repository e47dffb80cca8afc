"""The caller's model in the form a metric's forward-only rows run it in
(``model_form``, :mod:`fastattr.engine.model_form`), for metrics that do
something with its outputs before the rows' values are read: a softmax over
the classes, ROAD's top-class test, an argmax. The engine rewrites an
``nn.Module``, not a function around one, so the form is taken here, of the
model itself, and the function around it runs it in that form.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from ..engine.model_form import ModelForm, check_model_form, model_in_form


class FormedModel:
    """``model`` run in ``model_form``, called like ``model`` (``model(*rows,
    *args)``, rows ``[n, *F_i]``).

    The form is taken at the first call, from its arguments: the first
    ``n_inputs`` are the rows (their features, dtype and device key the
    copy's check, their first row checks it), the rest the extra model
    arguments. With ``"compiled"``, calls of the first call's size (with
    autograd on or off, as then) run compiled: a chunked loop's first call
    has its chunk size. A model the form does not apply to runs as it is,
    and :attr:`form` says why."""

    def __init__(self, model: Callable[..., Any], model_form: str, n_inputs: int = 1) -> None:
        self.model = model  # the engine finds the caller's module behind it (train mode)
        self.model_form = check_model_form(model_form)
        self.n_inputs = n_inputs
        self.form: Optional[ModelForm] = None  # taken at the first call

    def __call__(self, *args: Any) -> Any:
        if self.form is None:
            self.form = model_in_form(self.model, self.model_form, args[:self.n_inputs], args[self.n_inputs:])
            self.form.serve_rows(args[0].shape[0], torch.is_grad_enabled())
        return self.form.model(*args)
