"""Uploading a finished run's ``final/`` to the Hugging Face Hub (``hub.*``): one commit made with
huggingface_hub's ``create_repo`` and ``upload_folder``, after everything else of the run is done."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from wmss.config import HubConfig


def upload_final(final: Path, hub: HubConfig, message: str) -> dict[str, Any]:
    """Make the repository ``hub.model_id`` if it does not exist (private when ``hub.private``), upload
    ``final/`` in one commit; the record the manifest keeps (repository URL, commit id and URL)."""
    from huggingface_hub import HfApi

    api = HfApi()
    url = api.create_repo(hub.model_id, private=hub.private, exist_ok=True)
    commit = api.upload_folder(repo_id=hub.model_id, folder_path=final, commit_message=message)
    return {"url": str(url), "commit": commit.oid, "commit_url": commit.commit_url}


def final_fingerprint(final: Path, published: str | None) -> str:
    """What identifies the ``final/`` an upload sent: when it was published (``final`` phase's finish time)
    and its model card, which the evaluation may rewrite without republishing the model."""
    card = final / "README.md"
    text = card.read_bytes() if card.is_file() else b""
    return hashlib.sha256(f"{published}\n".encode() + text).hexdigest()
