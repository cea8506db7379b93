"""Push a model, its processor and its generated card to the Hub through the real ``huggingface_hub`` client."""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, HfApi, constants
from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

from .card import README_NAME, carry_pipeline_sections, create_or_update_model_card

logger = logging.getLogger(__name__)

_SHA1 = re.compile(r"^[0-9a-f]{40}$")
# Weight files of an earlier push that this push does not re-upload (e.g. a different sharding) must go, or a reader
# could pair the new config with stale shards; the fingerprint check would catch it, but the repo should be clean.
_STALE_WEIGHT_PATTERNS = ["model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json"]


class HubUnreachableError(OSError):
    """The Hub endpoint could not be reached (offline, wrong ``HF_ENDPOINT``, no network): one line, with the fix."""


# Transport failures of the HTTP clients huggingface_hub has used (httpx, its httpx2 fork, requests/urllib3); matched
# by name so that no client has to be importable here.
_TRANSPORT_ERROR_NAMES = {"TransportError", "ConnectError", "ConnectTimeout", "TimeoutException", "NetworkError",
                          "ConnectionError", "NewConnectionError", "MaxRetryError"}  # fmt: skip


def _is_transport_error(error: BaseException) -> bool:
    return any(
        cls.__name__ in _TRANSPORT_ERROR_NAMES
        and cls.__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"}
        for cls in type(error).__mro__
    )


@contextlib.contextmanager
def _reporting_unreachable_hub(endpoint: str, action: str):
    """Turn a transport failure or huggingface_hub's offline refusal into one :class:`HubUnreachableError` line."""
    try:
        yield
    except Exception as error:
        if constants.HF_HUB_OFFLINE and isinstance(error, OSError) and "offline" in str(error).lower():
            raise HubUnreachableError(
                f"Cannot {action}: HF_HUB_OFFLINE is set, so nothing may reach the Hub. Unset it (HF_HUB_OFFLINE=0) "
                f"to push to {endpoint}, or point HF_ENDPOINT at a local Hub (`bt2 hub-serve --help`)."
            ) from None
        if _is_transport_error(error):
            raise HubUnreachableError(
                f"Cannot {action}: the Hub at {endpoint} is unreachable ({type(error).__name__}: {error}). Check the "
                "network, or set HF_ENDPOINT to a reachable Hub (for a local one: `bt2 hub-serve --help`); "
                "HF_HUB_OFFLINE=1 keeps everything local."
            ) from None
        raise


def _bt2_version() -> str:
    try:
        from .. import __version__

        return __version__
    except ImportError:
        return "unknown"


def push_to_hub(
    model: Any,
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | bool | None = None,
    commit_message: str | None = None,
    private: bool | None = None,
    card_metrics: Any = None,
    card_kwargs: dict[str, Any] | None = None,
    max_shard_size: str | int | None = None,
    endpoint: str | None = None,
    cache_dir: str | None = None,
) -> CommitInfo:
    """Upload a :class:`~bt2_hf.BT2Model` with its processor and a model card generated from its metadata.

    The model is saved with ``save_pretrained`` into a temporary directory (which computes its fingerprint), the card
    is rendered there (refreshing the repo's existing card at that revision, so a user's own sections survive), and the
    folder is committed with ``HfApi.upload_folder``. Weight files left by an earlier push are deleted in the same
    commit. The endpoint is ``huggingface_hub.constants.ENDPOINT`` (``HF_ENDPOINT``) unless ``endpoint`` is given.

    Args:
        model (`BT2Model`): the model to push.
        repo_id (`str`): ``"namespace/name"`` (or ``"name"`` for the token's user).
        revision (`str`, *optional*): the branch to commit to; created from ``main`` if missing. Defaults to ``main``.
        token (`str` or `bool`, *optional*): a Hub token; defaults to the logged-in one.
        commit_message (`str`, *optional*): defaults to ``"Upload bt2_hf model"``.
        private (`bool`, *optional*): visibility when the repo is created.
        card_metrics (`dict`, `str` or `os.PathLike`, *optional*): evaluation results shown in the card for the
            model's primary compatibility entry (see :func:`~bt2_hf.hub.load_evaluation_results`).
        card_kwargs (`dict`, *optional*): more arguments for :func:`~bt2_hf.hub.render_model_card` (``license``,
            ``dataset``, ``tags`` …).
        max_shard_size (`str` or `int`, *optional*): passed to ``save_pretrained``.
        endpoint (`str`, *optional*): the Hub URL; defaults to ``huggingface_hub.constants.ENDPOINT``.
        cache_dir (`str`, *optional*): where the existing card is downloaded to.

    Returns:
        `huggingface_hub.CommitInfo`: ``oid`` is the commit sha, usable as ``revision=`` to pull exactly this push.

    Example:

    ```python
    >>> from bt2_hf.hub import push_to_hub
    >>> info = push_to_hub(model, "my-org/bt2-resnet-v2", card_metrics="results.json")  # doctest: +SKIP
    >>> BT2Model.from_pretrained("my-org/bt2-resnet-v2", revision=info.oid)  # doctest: +SKIP
    ```
    """
    if revision is not None and _SHA1.match(revision):
        raise ValueError(f"revision={revision!r} is a commit sha; push to a branch name (e.g. 'main' or 'v2').")
    endpoint = endpoint or constants.ENDPOINT
    api = HfApi(endpoint=endpoint, token=token, library_name="bt2_hf", library_version=_bt2_version())
    with _reporting_unreachable_hub(endpoint, f"push {repo_id}"):
        return _push_folder(api, endpoint, model, repo_id, revision, commit_message, private, card_metrics,
                            card_kwargs, max_shard_size, cache_dir)  # fmt: skip


def _push_folder(api, endpoint, model, repo_id, revision, commit_message, private, card_metrics, card_kwargs,
                 max_shard_size, cache_dir) -> CommitInfo:  # fmt: skip
    repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
    if revision and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix="bt2-push-"))
    try:
        save_kwargs = {"max_shard_size": max_shard_size} if max_shard_size is not None else {}
        model.save_pretrained(staging, **save_kwargs)
        _fetch_existing_card(api, repo_id, revision, staging / README_NAME, cache_dir)
        _carry_local_card(model, staging / README_NAME)
        create_or_update_model_card(
            staging,
            config=model.config,
            repo_id=repo_id,
            metrics=card_metrics,
            **(card_kwargs or {}),
        )
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            revision=revision,
            commit_message=commit_message or "Upload bt2_hf model",
            delete_patterns=_STALE_WEIGHT_PATTERNS,
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "Pushed %s (fingerprint %s) to %s at commit %s.", repo_id, model.config.fingerprint, endpoint, info.oid
    )
    return info


def _carry_local_card(model: Any, target: Path) -> None:
    """Keep the card of the folder the model was loaded from: a pipeline's sections (the demo's verdict) live there.

    With no card on the Hub yet, the folder's card is the starting point; otherwise the Hub's card (which may hold
    edits made on the Hub) gets the folder card's pipeline sections.
    """
    source = Path(str(getattr(model.config, "name_or_path", None) or getattr(model, "name_or_path", None) or ""))
    local_card = source / README_NAME
    if not str(source) or not (source / "config.json").is_file() or not local_card.is_file():
        return  # a model built in memory or pulled from the Hub: the Hub's card is the only one
    local_text = local_card.read_text(encoding="utf-8")
    if target.is_file():
        target.write_text(carry_pipeline_sections(local_text, target.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        shutil.copyfile(local_card, target)


def _fetch_existing_card(api: HfApi, repo_id: str, revision: str | None, target: Path, cache_dir: str | None) -> None:
    """Copy the repo's current README.md next to the new files so that the refresh keeps the user's sections."""
    try:
        path = api.hf_hub_download(repo_id, README_NAME, revision=revision, cache_dir=cache_dir)
    except (EntryNotFoundError, RevisionNotFoundError, RepositoryNotFoundError):
        return
    shutil.copyfile(path, target)
