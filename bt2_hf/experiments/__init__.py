"""End-to-end runners (the demo, a series of updates, the image–text experiments) and the pieces they share.

- :mod:`~bt2_hf.experiments.stages`: a stage declared once (:class:`~bt2_hf.experiments.stages.StageSpec`), its trainer
  arguments, and reuse of a finished stage only when its recorded settings match;
- :mod:`~bt2_hf.experiments.embedding`: :func:`~bt2_hf.experiments.embedding.embed_split`;
- :mod:`~bt2_hf.experiments.cards`: :func:`~bt2_hf.experiments.cards.write_pipeline_card`;
- the runners: :mod:`~bt2_hf.experiments.demo` (``bt2 demo``), :mod:`~bt2_hf.experiments.series` (``bt2 series``),
  :mod:`~bt2_hf.experiments.image_text` (``bt2 image-text``) and :mod:`~bt2_hf.experiments.text_tower`
  (``bt2 text-tower``).

Import the runners from their modules; this package imports nothing heavy.
"""
