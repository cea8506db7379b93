"""The Gradio page of an upgrade (``bt2 ui``, ``app.py``): a query, three result lists side by side, verdicts.

Gradio is imported here only, when a page is built: ``import bt2_hf`` (and ``bt2 --help``) never loads it. Its
analytics are switched off before it is imported, the page is served without a share link, and its theme uses the
system's fonts, so neither the server nor the browser reaches outside the machine.
"""

from __future__ import annotations

import logging
import os

from .render import CSS, render_column, render_progress, render_verdicts
from .view import COLUMNS, UpgradeView

logger = logging.getLogger(__name__)

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
# Element ids: what a user's stylesheet or a browser test finds.
ELEMENT_IDS = {"text": "bt2-query-text", "image": "bt2-query-image", "k": "bt2-k", "search": "bt2-search",
               "verdicts": "bt2-verdicts", "progress": "bt2-progress", "fraction": "bt2-backfill-fraction",
               "backfill": "bt2-backfill"}  # fmt: skip
SYSTEM_FONTS = ("ui-sans-serif", "system-ui", "sans-serif")
SYSTEM_MONO_FONTS = ("ui-monospace", "monospace")


def import_gradio():
    """Gradio, with its analytics off (set before its import, which reads the setting)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio
    except ModuleNotFoundError:
        raise ModuleNotFoundError("The upgrade page needs Gradio: pip install 'bt2_hf[ui]'.") from None
    return gradio


def column_element_id(key: str) -> str:
    return f"bt2-results-{key.replace('_', '-')}"


def build_page(view: UpgradeView):
    """The page's ``gr.Blocks`` for ``view`` (not yet launched).

    The query input follows the models: an image upload when a model embeds images, a text box when one embeds
    texts (a text tower over an image gallery gets a text box). Search fills the three lists; "Backfill to" continues
    the backfilled copy's re-embedding (never backwards) and refreshes its progress.
    """
    gr = import_gradio()
    modalities = view.query_modalities
    titles = [title for _, title, _ in COLUMNS]
    with gr.Blocks(title=view.title, analytics_enabled=False) as page:
        gr.Markdown(f"# {view.title}\nThe same query, three ways: the old model on its gallery, the new model on "
                    "the same gallery (never re-embedded), and the new model on a copy of it backfilled with the "
                    "new model. Scores are cosines in the space each position was ranked in.")  # fmt: skip
        verdicts = view.verdicts()
        gr.HTML(render_verdicts(verdicts), elem_id=ELEMENT_IDS["verdicts"])
        progress = view.progress()
        with gr.Row():
            progress_html = gr.HTML(render_progress(progress), elem_id=ELEMENT_IDS["progress"])
            # continuing needs the dataset and a new model the gallery admits (a refused one cannot backfill it)
            can_backfill = progress is not None and bool(view.settings.data) and verdicts[-1].admitted
            fraction = gr.Slider(0.0, 1.0, value=progress["fraction"] if progress else 0.0, step=0.05,
                                 label="backfilled fraction", visible=can_backfill,
                                 elem_id=ELEMENT_IDS["fraction"])  # fmt: skip
            backfill_button = gr.Button("Backfill to this fraction", visible=can_backfill,
                                        elem_id=ELEMENT_IDS["backfill"])  # fmt: skip
        with gr.Row():
            text = gr.Textbox(label="caption (text query)", placeholder="e.g. a red dress", visible="text" in modalities,
                              elem_id=ELEMENT_IDS["text"], scale=3)  # fmt: skip
            image = gr.Image(label="image query", type="numpy", image_mode=None, sources=["upload", "clipboard"],
                             visible="image" in modalities, elem_id=ELEMENT_IDS["image"], height=160, scale=2)  # fmt: skip
            k = gr.Slider(1, 20, value=5, step=1, label="results per list", elem_id=ELEMENT_IDS["k"], scale=1)
        search = gr.Button("Search", variant="primary", elem_id=ELEMENT_IDS["search"])
        with gr.Row(equal_height=False):
            lists = [gr.HTML(render_column(None, title), elem_id=column_element_id(key)) for key, title, _ in COLUMNS]

        def run(query_text, query_image, limit):
            if not (query_text or "").strip() and query_image is None:
                raise gr.Error("Type a caption or drop an image first.")
            # An image, when one is given, wins over text left in the box.
            columns = view.search(text=None if query_image is not None else query_text, image=query_image, k=limit)
            return [render_column(column, title) for column, title in zip(columns, titles)]

        def continue_backfill(value):
            try:
                return render_progress(view.backfill_to(value))
            except ValueError as error:
                raise gr.Error(str(error)) from None

        search.click(run, inputs=[text, image, k], outputs=lists)
        text.submit(run, inputs=[text, image, k], outputs=lists)
        backfill_button.click(continue_backfill, inputs=[fraction], outputs=[progress_html])
    return page


def launch_page(page, host: str | None = DEFAULT_HOST, port: int | None = DEFAULT_PORT, *, block: bool = True):
    """Serve ``page`` (no share link; ``host=None`` lets ``GRADIO_SERVER_NAME`` decide, as on a Space).

    Returns:
        the page's FastAPI app, local URL and share URL (``None``), as ``gr.Blocks.launch`` does.
    """
    gr = import_gradio()
    theme = gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO_FONTS))
    return page.launch(server_name=host, server_port=port, share=False, prevent_thread_lock=not block, quiet=True,
                       theme=theme, css=CSS, ssr_mode=False, mcp_server=False, pwa=False,
                       footer_links=[])  # fmt: skip
