"""`mlxollama run` attaches image files named in a prompt as `ollama run` does (cmd/interactive.go:
extractFileNames, normalizeFilePath, extractFileData, getImageData)."""

from __future__ import annotations

import io

import pytest

from mlxollama.cli.client import CLIError
from mlxollama.cli.interactive import (
    RunOptions,
    extract_file_data,
    extract_file_names,
    infer_media,
    normalize_file_path,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32
JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 32
WEBP = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 32


@pytest.mark.parametrize(
    "text,found",
    [
        ("describe ./photo.jpg", ["./photo.jpg"]),
        ("what is in /tmp/a/b.PNG please", ["/tmp/a/b.PNG"]),
        ("compare ./a.png and ./b.webp", ["./a.png", "./b.webp"]),
        (r"look at ./my\ cat.jpeg now", [r"./my\ cat.jpeg"]),
        (r"C:\Users\me\pic.jpg", [r"C:\Users\me\pic.jpg"]),
        ("a photo.jpg without a leading slash", []),  # only ./ / \ (or a drive) start a path
        ("./notes.txt and ./x.gif", []),  # other extensions are words
        ("./photo.jpgx", []),  # the extension must end a word
    ],
)
def test_file_names_found_as_ollama_finds_them(text, found):
    assert extract_file_names(text) == found


def test_shell_escapes_are_undone_in_one_pass():
    assert normalize_file_path(r"./my\ photo\ \(1\).png") == "./my photo (1).png"
    assert normalize_file_path(r"./a\\\ b.png") == "./a\\ b.png"  # an escaped backslash, then an escaped space
    assert normalize_file_path(r"/x/\~\$\&.jpg") == "/x/~$&.jpg"


def test_images_are_read_and_their_paths_leave_the_prompt(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(PNG)
    (tmp_path / "my pic.jpg").write_bytes(JPEG)
    (tmp_path / "w.webp").write_bytes(WEBP)
    text, images = extract_file_data(r"describe ./photo.png and './my pic.jpg' then ./w.webp")
    assert images == [PNG, JPEG, WEBP]
    assert text == "describe  and  then"
    err = capsys.readouterr().err
    assert err.splitlines() == ["Added image './photo.png'", "Added image './my pic.jpg'", "Added image './w.webp'"]


def test_escaped_path_is_read_and_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my pic.png").write_bytes(PNG)
    text, images = extract_file_data(r"what is ./my\ pic.png")
    assert (text, images) == ("what is", [PNG])
    assert "Added image './my pic.png'" in capsys.readouterr().err


def test_missing_files_stay_words(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text, images = extract_file_data("  see ./nothing-here.png  ")
    assert (text, images) == ("see ./nothing-here.png", [])
    assert capsys.readouterr().err == ""


def test_a_file_that_is_not_an_image_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake.png").write_text("just some text\n")
    with pytest.raises(CLIError, match=r"^invalid file type: text/plain; charset=utf-8$"):
        extract_file_data("describe ./fake.png")
    assert capsys.readouterr().err == 'Couldn\'t process file: "invalid file type: text/plain; charset=utf-8"\n'
    (tmp_path / "bin.png").write_bytes(b"\x00\x01\x02\xfe\xff" * 10)
    with pytest.raises(CLIError, match="invalid file type: application/octet-stream"):
        extract_file_data("describe ./bin.png")


def test_a_wav_is_added_as_audio(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 24
    (tmp_path / "a.wav").write_bytes(wav)
    assert extract_file_data("hear ./a.wav") == ("hear", [wav])
    assert capsys.readouterr().err == "Added audio './a.wav'\n"


def test_only_vision_models_read_files():
    opts = RunOptions(model="m")
    infer_media({"capabilities": ["completion", "tools"], "details": {"families": ["llama"]}}, opts)
    assert opts.multimodal is False
    infer_media({"capabilities": ["completion", "vision"]}, opts)
    assert opts.multimodal is True
    # a server without capabilities: a clip projector among the families, as older Ollama checks
    infer_media({"details": {"families": ["llama", "clip"]}}, opts)
    assert opts.multimodal is True


def test_large_files_are_refused(tmp_path, monkeypatch):
    import mlxollama.cli.interactive as session

    monkeypatch.chdir(tmp_path)
    (tmp_path / "big.png").write_bytes(PNG + b"\x00" * 64)
    monkeypatch.setattr(session, "MAX_FILE_SIZE", 50)
    with pytest.raises(CLIError, match=r"file size exceeds maximum limit \(100MB\)"):
        extract_file_data("./big.png")


def test_generate_sends_the_images(tmp_path, monkeypatch, capsys):
    """The one-shot path hands the file's bytes to the client's generate as `images`."""
    import mlxollama.cli.interactive as session

    monkeypatch.chdir(tmp_path)
    (tmp_path / "photo.png").write_bytes(PNG)
    seen = {}

    class Client:
        def generate(self, **kwargs):
            seen.update(kwargs)
            return iter(())

    monkeypatch.setattr(session.sys, "stdout", io.StringIO())
    assert session.generate(Client(), RunOptions(model="m", multimodal=True), "describe ./photo.png") == 0
    assert seen["prompt"] == "describe" and seen["images"] == [PNG]
    seen.clear()
    assert session.generate(Client(), RunOptions(model="m"), "describe ./photo.png") == 0
    assert seen["prompt"] == "describe ./photo.png" and seen["images"] is None
