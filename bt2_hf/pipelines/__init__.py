"""End-to-end runners (the demo, a series of updates) and the pieces they share.

- :mod:`~bt2_hf.pipelines.stages`: a stage declared once (:class:`~bt2_hf.pipelines.stages.StageSpec`), its trainer
  arguments, and reuse of a finished stage only when its recorded settings match;
- :mod:`~bt2_hf.pipelines.embedding`: :func:`~bt2_hf.pipelines.embedding.embed_split`;
- :mod:`~bt2_hf.pipelines.cards`: :func:`~bt2_hf.pipelines.cards.write_pipeline_card`;
- :mod:`~bt2_hf.pipelines.demo` (``bt2 demo``) and :mod:`~bt2_hf.pipelines.series` (``bt2 series``).

Import the runners from their modules; this package imports nothing heavy.
"""
