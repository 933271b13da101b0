"""ipywidgets 8 views over d2nb's functions, one module per notebook stage.

Widgets hold ipywidgets and observe their values; everything they do is a call into the
logic modules (``d2nb.predict``, ``d2nb.data``, ``d2nb.evaluate``...), which work and are
tested without any widget.
"""
