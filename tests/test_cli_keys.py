"""Key rings and key rotation on the command line: ``--keyring FILE`` / THREADLINE_KEYRING,
``keys generate|add|status|rotate``, and the mistakes: a missing, malformed or wrong key
ring, or none for an encrypted store (a message and exit 1, never a traceback)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from threadline import open_store
from threadline.cli import app
from threadline.cli import common as app_module
from threadline.serde import KeyRing

runner = CliRunner()
SECRET = "the launch code is 0000"


@pytest.fixture(autouse=True)
def _reset_options() -> Iterator[None]:
    yield
    app_module.options.store, app_module.options.debug, app_module.options.keyring = None, False, None


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), env=env)


def run_json(*args: str) -> Any:
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def failure(result: Result, code: int = 1) -> str:
    assert result.exit_code == code, result.output
    assert result.stdout == ""
    assert "Traceback" not in result.output
    return result.stderr


@pytest.fixture
def encrypted(tmp_path: Path) -> tuple[str, Path, str]:
    """(store URL, key ring file, a checkpoint id) of an encrypted store made through the CLI's key ring."""
    ring_file = tmp_path / "ring.json"
    assert run("keys", "generate", str(ring_file)).exit_code == 0
    url = f"sqlite:///{tmp_path}/enc.db"
    with open_store(url, keyring=KeyRing.from_json(ring_file.read_text())) as store:
        store.threads.create_thread("t", metadata={"owner": "ann"})
        cp = store.threads.checkpoint("t", {"secret": SECRET, "messages": ["a", "b"]})
    return url, ring_file, cp.id


def test_generate_writes_a_private_key_ring_and_refuses_to_overwrite(tmp_path: Path) -> None:
    file = tmp_path / "ring.json"
    result = run("keys", "generate", str(file))
    assert result.exit_code == 0 and "mode 0600" in result.stdout
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    ring = KeyRing.from_json(file.read_text())
    assert ring.active == 1 and sorted(ring.keys) == [1]
    assert "already exists" in failure(run("keys", "generate", str(file)))
    assert KeyRing.from_json(file.read_text()).keys == ring.keys  # untouched
    doc = run_json("keys", "generate", str(tmp_path / "other.json"))
    assert doc == {"file": str(tmp_path / "other.json"), "active": 1, "keys": [1]}


def test_add_makes_a_new_active_key_and_keeps_the_old_ones(tmp_path: Path) -> None:
    file = tmp_path / "ring.json"
    assert run("keys", "generate", str(file)).exit_code == 0
    old = KeyRing.from_json(file.read_text())
    result = run("keys", "add", str(file))
    assert result.exit_code == 0 and "added key 2" in result.stdout and "keys rotate" in result.stdout
    new = KeyRing.from_json(file.read_text())
    assert new.active == 2 and new.keys[1] == old.keys[1] and new.hash_key == old.hash_key
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert run_json("keys", "add", str(file))["active"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ring.json"]  # no temporary file left
    assert "does not exist" in failure(run("keys", "add", str(tmp_path / "missing.json")))


def test_status_and_rotation(encrypted: tuple[str, Path, str]) -> None:
    url, ring_file, cid = encrypted
    base = ("--store", url, "--keyring", str(ring_file))
    status = run_json(*base, "keys", "status")
    assert status["active"] == 1 and status["keyring"] == [1] and status["unreadable"] == {}
    assert set(status["frames"]) == {"1"} and status["frames"]["1"] > 0
    assert status["rotation_needed"] is False
    text = run(*base, "keys", "status").stdout
    assert "active" in text
    assert run("keys", "add", str(ring_file)).exit_code == 0
    status = run_json(*base, "keys", "status")
    assert status["active"] == 2 and status["rotation_needed"] is True
    assert "keys rotate" in run(*base, "keys", "status").stdout
    rotated = run_json(*base, "keys", "rotate")
    assert rotated["active"] == 2 and rotated["reencrypted"] == status["frames"]["1"]
    assert set(rotated["frames"]) == {"2"}
    assert "nothing to do" in run(*base, "keys", "rotate").stdout
    show = run_json(*base, "show", cid, "--state")
    assert show["state"]["secret"] == SECRET
    only_key_1 = KeyRing.from_json(ring_file.read_text())
    old_file = ring_file.with_name("old.json")
    old_file.write_text(KeyRing({1: only_key_1.keys[1]}, 1, only_key_1.hash_key).to_json())
    err = failure(run("--store", url, "--keyring", str(old_file), "show", cid, "--state"))
    assert "key 2" in err and "not in the key ring" in err


def test_rotate_text_and_the_environment_variable(encrypted: tuple[str, Path, str]) -> None:
    url, ring_file, _ = encrypted
    assert run("keys", "add", str(ring_file)).exit_code == 0
    env = {"THREADLINE_KEYRING": str(ring_file)}
    result = run("--store", url, "keys", "rotate", env=env)
    assert result.exit_code == 0 and "re-encrypted" in result.stdout and "with key 2" in result.stdout
    assert run("--store", url, "keys", "status", env=env).exit_code == 0


def test_a_missing_or_malformed_key_ring_is_a_clear_error(
    encrypted: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, _, cid = encrypted
    err = failure(run("--store", url, "--keyring", str(tmp_path / "nope.json"), "threads"))
    assert "key ring file" in err and "does not exist" in err and "keys generate" in err
    bad = tmp_path / "bad.json"
    bad.write_text('{"active": 1}')
    assert "is malformed" in failure(run("--store", url, "--keyring", str(bad), "threads"))
    bad.write_bytes(b"\xff\xfe\x00garbage")
    assert "not a key ring" in failure(run("--store", url, "--keyring", str(bad), "threads"))
    bad.write_text('{"active": 1, "keys": {"1": "c2hvcnQ="}, "hash_key": "c2hvcnQ="}')
    assert "32 bytes" in failure(run("--store", url, "--keyring", str(bad), "show", cid))


def test_a_wrong_key_ring_is_refused_without_changing_anything(
    encrypted: tuple[str, Path, str], tmp_path: Path
) -> None:
    url, ring_file, cid = encrypted
    wrong = tmp_path / "wrong.json"
    assert run("keys", "generate", str(wrong)).exit_code == 0
    base = ("--store", url, "--keyring", str(wrong))
    result = run(*base, "keys", "status")
    assert result.exit_code == 1 and "unreadable" in result.stdout and "Traceback" not in result.output
    doc = json.loads(run(*base, "keys", "status", "--json").stdout)
    assert set(doc["unreadable"]) == {"1"} and "wrong key" in doc["unreadable"]["1"]
    assert "wrong key" in failure(run(*base, "show", cid, "--state"))
    assert run("keys", "add", str(wrong)).exit_code == 0
    err = failure(run(*base, "keys", "rotate"))
    assert "cannot read this store" in err and "is it the store's key ring?" in err
    good = run_json("--store", url, "--keyring", str(ring_file), "show", cid, "--state")
    assert good["state"]["secret"] == SECRET  # nothing was rewritten


def test_an_encrypted_store_without_a_key_ring(encrypted: tuple[str, Path, str]) -> None:
    url, _, cid = encrypted
    err = failure(run("--store", url, "show", cid, "--state"))
    assert "encrypted" in err and "--keyring FILE" in err
    assert "no key ring: pass --keyring FILE" in failure(run("--store", url, "keys", "rotate"))
    text = run("--store", url, "keys", "status").stdout
    assert "no key ring given" in text
    doc = run_json("--store", url, "keys", "status")
    assert doc["active"] is None and doc["keyring"] is None and doc["rotation_needed"] is False


def test_status_of_an_unencrypted_store(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/plain.db"
    with open_store(url) as store:
        store.threads.create_thread("t")
        store.threads.checkpoint("t", {"a": "x" * 100})
    doc = run_json("--store", url, "keys", "status")
    assert set(doc["frames"]) == {"none"}
    assert "stored unencrypted" in run("--store", url, "keys", "status").stdout
    ring = tmp_path / "ring.json"
    assert run("keys", "generate", str(ring)).exit_code == 0
    result = run("--store", url, "--keyring", str(ring), "keys", "rotate")
    assert result.exit_code == 0 and "stay unencrypted" in result.stdout


def test_wrong_key_ring_in_a_real_process(encrypted: tuple[str, Path, str], tmp_path: Path) -> None:
    url, _, cid = encrypted
    wrong = tmp_path / "w.json"
    wrong.write_text(KeyRing.generate().to_json())
    exe = str(Path(sys.executable).with_name("threadline"))
    env = {k: v for k, v in os.environ.items() if k not in ("THREADLINE_URL", "THREADLINE_KEYRING")}
    proc = subprocess.run(
        [exe, "--store", url, "--keyring", str(wrong), "show", cid, "--state"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 1 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error:") and "wrong key" in proc.stderr


def test_ctrl_c_during_rotation_exits_130_and_can_be_resumed(
    encrypted: tuple[str, Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from threadline.core import CheckpointDomainService

    url, ring_file, _ = encrypted
    assert run("keys", "add", str(ring_file)).exit_code == 0
    real = CheckpointDomainService.rotate_keys

    def interrupted(self: CheckpointDomainService, **kwargs: Any) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(CheckpointDomainService, "rotate_keys", interrupted)
    result = run("--store", url, "--keyring", str(ring_file), "keys", "rotate")
    assert result.exit_code == 130 and "run threadline keys rotate again" in result.stderr
    monkeypatch.setattr(CheckpointDomainService, "rotate_keys", real)
    assert run_json("--store", url, "--keyring", str(ring_file), "keys", "rotate")["reencrypted"] > 0
