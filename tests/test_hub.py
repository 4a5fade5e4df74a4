"""hub.push: a finished run's final/ goes to the Hub in one commit, through huggingface_hub itself, here
against a small local server that answers the Hub's endpoints and records what it is sent."""

import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.conftest import arithmetic_rows, write_jsonl
from wmss.config import load_config
from wmss.errors import ConfigError, WmssError
from wmss.model_card import model_card
from wmss.pipeline import run_pipeline


class FakeHub(BaseHTTPRequestHandler):
    """The endpoints ``create_repo`` and ``upload_folder`` call: repository creation, card metadata check,
    pre-upload (every file sent inline) and commit. ``server.refuse``: answer creation with 403."""

    def log_message(self, *args):
        pass

    def _answer(self, status, payload=None):
        body = json.dumps(payload or {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        hub, base = self.server, f"http://127.0.0.1:{self.server.server_address[1]}"
        hub.requests.append((self.path, self.headers.get("Authorization")))
        if self.path == "/api/repos/create":
            if hub.refuse:
                return self._answer(403, {"error": "You don't have the rights to create a model here"})
            hub.created.append(json.loads(body))
            return self._answer(200, {"url": f"{base}/me/tiny-wmss"})
        if self.path == "/api/validate-yaml":
            return self._answer(200)
        if self.path.startswith("/api/models/me/tiny-wmss/preupload/"):
            files = json.loads(body)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return self._answer(200, {"files": modes})
        if self.path.startswith("/api/models/me/tiny-wmss/commit/"):
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            files = {
                v["path"]: base64.b64decode(v["content"])
                for k, v in (x.values() for x in lines)
                if k == "file"
            }
            hub.commits.append(files)
            oid = f"{len(hub.commits):040x}"
            return self._answer(200, {"commitUrl": f"{base}/me/tiny-wmss/commit/{oid}", "commitOid": oid})
        return self._answer(404, {"error": f"not a Hub endpoint: {self.path}"})

    do_PUT = do_POST


@pytest.fixture()
def fake_hub(monkeypatch):
    from huggingface_hub import constants

    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    server.requests, server.created, server.commits, server.refuse = [], [], [], False
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setattr(constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", "hf_token_of_the_test")
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _config(tmp_path, model_dir, *extra):
    data = write_jsonl(tmp_path / "d.jsonl", arithmetic_rows(8))
    return load_config(
        None,
        [
            f"model={model_dir}",
            f"data.path={data}",
            f"output_dir={tmp_path / 'run'}",
            "method=sft",
            "sft.epochs=1",
            "data.prompt_template={question}",
            "data.completion_template={answer}",
            "train.per_device_batch_size=4",
            "train.max_length=96",
            *extra,
        ],
    )


def test_push_uploads_final_once_and_a_failed_push_keeps_the_finished_run(tmp_path, tiny_model_dir, fake_hub):
    final = tmp_path / "run" / "final"
    assert "hub" not in run_pipeline(_config(tmp_path, tiny_model_dir))  # off by default: nothing is sent
    assert fake_hub.requests == []

    # hub.* do not change what the run computes: the finished run takes them. First the Hub refuses:
    # the run stays complete, the upload failed and the error says so
    cfg = _config(tmp_path, tiny_model_dir, "hub.push=true", "hub.model_id=me/tiny-wmss")
    fake_hub.refuse = True
    with pytest.raises(WmssError, match=r"me/tiny-wmss \(hub.model_id\) failed.*run the same command again"):
        run_pipeline(cfg)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["phases"]["final"]["status"] == "done" and (final / "model.safetensors").is_file()
    assert manifest["hub"]["status"] == "failed" and "403" in manifest["hub"]["error"]
    assert fake_hub.commits == []

    fake_hub.refuse = False  # the same command again: no phase runs again, final/ is uploaded
    manifest = run_pipeline(cfg)
    assert manifest["phases"]["sft"]["attempts"] == 1
    assert manifest["hub"]["status"] == "pushed" and manifest["hub"]["model_id"] == "me/tiny-wmss"
    assert fake_hub.created == [{"name": "tiny-wmss", "organization": "me", "visibility": "private"}]
    (files,) = fake_hub.commits  # one commit, holding final/ and nothing else
    assert sorted(files) == sorted(p.name for p in final.iterdir())
    assert {"config.json", "generation_config.json", "tokenizer.json", "README.md"} <= set(files)
    assert all(files[name] == (final / name).read_bytes() for name in files)
    assert all(auth == "Bearer hf_token_of_the_test" for _, auth in fake_hub.requests)

    requests = len(fake_hub.requests)  # once more: the manifest records this final/ as uploaded
    assert run_pipeline(cfg)["hub"]["commit"] == manifest["hub"]["commit"]
    assert len(fake_hub.requests) == requests


def test_hub_keys_are_checked_and_trainer_push_is_redirected():
    with pytest.raises(ConfigError, match="hub.push=true needs hub.model_id"):
        load_config(None, ["hub.push=true"])
    with pytest.raises(ConfigError, match="hub.model_id 'tiny-wmss' is not a Hub repository id"):
        load_config(None, ["hub.model_id=tiny-wmss"])
    with pytest.raises(ConfigError, match="train.args.push_to_hub is set by wmss.*set hub.push=true"):
        load_config(None, ["train.args.push_to_hub=true"])
    with pytest.raises(ConfigError, match="train.args.hub_model_id is set by wmss: set hub.model_id"):
        load_config(None, ["train.args.hub_model_id=me/x"])
    assert load_config(None, []).hub.push is False


def test_model_card_names_a_hub_base_model_in_its_metadata_only(tmp_path):
    on_hub = model_card({"config": {"model": "HuggingFaceTB/SmolLM2-135M"}})
    assert on_hub.startswith("---\nbase_model: HuggingFaceTB/SmolLM2-135M\n")
    local = model_card({"config": {"model": str(tmp_path)}})  # the Hub refuses a path as base_model
    assert "base_model:" not in local and f"**Base model:** `{tmp_path}`" in local
