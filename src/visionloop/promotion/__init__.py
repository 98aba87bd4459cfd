"""Champion/challenger decisions: who serves, and why.

``gate`` judges (pure), ``gate_set`` builds what both models predict, ``promote`` acts on the verdict,
``rollback`` moves the champion by hand, ``audit`` records every decision. Registry reads and
writes go through ``visionloop.models.registry``.
"""
