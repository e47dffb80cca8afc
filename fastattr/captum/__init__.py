"""Captum drop-in: ``from captum.attr import X`` becomes
``from fastattr.captum import X`` with the same constructor, ``attribute``
signature, defaults and return shapes, computed on fastattr's engine."""
