"""`mlxollama run`: one-shot answers and the interactive chat, behaving like `ollama run`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import sys
from pathlib import Path

import ollama

from ..config import no_history
from . import client
from .client import CLIError
from .format import char_width, summary_lines, text_width
from .modelfile import ModelfileError, typed_parameter
from .progress import Progress

GREY, BOLD, RESET = "\033[90m", "\033[1m", "\033[0m"


@dataclasses.dataclass
class RunOptions:
    model: str
    format: str = ""
    think: bool | str | None = None
    think_explicit: bool = False
    hide_thinking: bool = False
    keep_alive: str | None = None
    verbose: bool = False
    wordwrap: bool = True
    insecure: bool = False
    system: str = ""
    options: dict = dataclasses.field(default_factory=dict)
    messages: list = dataclasses.field(default_factory=list)
    parent_model: str = ""
    loaded_messages: list = dataclasses.field(default_factory=list)
    # a vision model: image paths in a prompt are read and sent as images, as `ollama run` does
    multimodal: bool = False


# --- output ---------------------------------------------------------------------------------


class Display:
    """Streams text to stdout; on a terminal, wraps at word boundaries as tokens arrive."""

    def __init__(self, out=None, wrap: bool = False):
        self.out = out or sys.stdout
        self.wrap = wrap and self.out.isatty()
        self.line_len = 0
        self.word = ""

    def write(self, text: str) -> None:
        if not text:
            return
        if not self.wrap:
            self.out.write(text)
            self.out.flush()
            return
        width = shutil.get_terminal_size((80, 24)).columns
        if width < 10:
            self.out.write(text)
            self.out.flush()
            return
        buf = []
        for ch in text:
            w = char_width(ch)
            if ch in "\r\n":
                buf.append(ch)
                self.line_len, self.word = 0, ""
                continue
            if self.line_len + w > width - 5 and ch not in " \t":
                word_w = text_width(self.word)
                if 0 < word_w <= width - 10:
                    # move the unfinished word down to a fresh line
                    buf.append(f"\033[{word_w}D\033[K\n{self.word}{ch}")
                    self.line_len = word_w + w
                    self.word += ch
                else:
                    buf.append("\n" + ch)
                    self.line_len, self.word = w, ch
                continue
            buf.append(ch)
            self.line_len += w
            if ch in " \t" or w >= 2:
                self.word = ""
            else:
                self.word += ch
        self.out.write("".join(buf))
        self.out.flush()


def _thinking_open(plain: bool) -> str:
    return "Thinking...\n" if plain else f"{GREY}{BOLD}Thinking...\n{RESET}{GREY}"


def _thinking_close(plain: bool) -> str:
    return "...done thinking.\n\n" if plain else f"{GREY}{BOLD}...done thinking.\n\n{RESET}"


def _waiting() -> Progress | None:
    """The spinner shown until the first token; only on a terminal, so pipes get clean text."""
    if not sys.stderr.isatty():
        return None
    p = Progress(sys.stderr, live=True)
    p.spinner("")
    return p


class _Stream:
    """Shared rendering of generate/chat chunks: thinking block, content, tool calls."""

    def __init__(self, opts: RunOptions):
        self.opts = opts
        self.plain = not sys.stdout.isatty()
        self.display = Display(sys.stdout, wrap=opts.wordwrap)
        self.spinner = _waiting()
        self.thinking_open = False
        self.thinking = []
        self.content = []
        self.last = None

    def stop_spinner(self) -> None:
        if self.spinner:
            self.spinner.stop(clear=True)
            self.spinner = None

    def feed(self, thinking: str, content: str, tool_calls, chunk) -> None:
        self.last = chunk
        if content or thinking and not self.opts.hide_thinking:
            self.stop_spinner()
        if thinking and not self.opts.hide_thinking:
            if not self.thinking_open:
                sys.stdout.write(_thinking_open(self.plain))
                self.thinking_open = True
            self.thinking.append(thinking)
            self.display.write(thinking)
        if self.thinking_open and (content or tool_calls):
            if not "".join(self.thinking).endswith("\n"):
                sys.stdout.write("\n")
            sys.stdout.write(_thinking_close(self.plain))
            self.thinking_open = False
            self.display = Display(sys.stdout, wrap=self.opts.wordwrap)
        self.content.append(content or "")
        self.display.write(content or "")
        for i, call in enumerate(tool_calls or []):
            fn = call.function
            args = json.dumps(dict(fn.arguments or {}), separators=(",", ":"))
            sys.stdout.write(
                ("\n" if i else "") + f"  Model called a non-existent function '{fn.name}()' with arguments: {args}"
            )
        sys.stdout.flush()

    def finish(self) -> None:
        self.stop_spinner()
        if self.thinking_open:
            sys.stdout.write(_thinking_close(self.plain))
            self.thinking_open = False


def _print_summary(chunk) -> None:
    if chunk is not None and getattr(chunk, "done", False):
        for line in summary_lines(chunk):
            print(line, file=sys.stderr)


def _format_arg(fmt: str):
    if not fmt:
        return None
    if fmt == "json":
        return "json"
    try:
        return json.loads(fmt)  # a JSON schema, as the API accepts
    except ValueError:
        raise CLIError(f"invalid format {fmt!r}: use 'json' or a JSON schema") from None


def generate(c: ollama.Client, opts: RunOptions, prompt: str) -> int:
    """One completion through /api/generate, printed as it streams. 130 when interrupted."""
    images = None
    if opts.multimodal:
        prompt, images = extract_file_data(prompt)
    s = _Stream(opts)
    stream = None
    try:
        stream = c.generate(
            model=opts.model,
            prompt=prompt,
            images=images or None,
            system=opts.system or None,
            stream=True,
            format=_format_arg(opts.format),
            options=opts.options or None,
            keep_alive=opts.keep_alive,
            think=opts.think,
        )
        for chunk in stream:
            s.feed(chunk.thinking or "", chunk.response or "", getattr(chunk, "tool_calls", None), chunk)
    except KeyboardInterrupt:
        s.finish()
        if stream is not None:
            stream.close()  # drops the connection, which stops the generation on the server
        sys.stdout.write("\n")
        return 130
    finally:
        s.finish()
    if prompt:
        sys.stdout.write("\n\n")
    sys.stdout.flush()
    if opts.verbose:
        _print_summary(s.last)
    return 0


def chat(c: ollama.Client, opts: RunOptions) -> dict | None:
    """One interactive turn. Ctrl-C stops the answer and keeps what was shown of it."""
    s = _Stream(opts)
    stream = None
    interrupted = False
    role = "assistant"
    try:
        stream = c.chat(
            model=opts.model,
            messages=opts.messages,
            stream=True,
            format=_format_arg(opts.format),
            options=opts.options or None,
            keep_alive=opts.keep_alive,
            think=opts.think,
        )
        for chunk in stream:
            msg = chunk.message
            role = msg.role or role
            s.feed(msg.thinking or "", msg.content or "", msg.tool_calls, chunk)
    except KeyboardInterrupt:
        interrupted = True
        if stream is not None:
            stream.close()
    finally:
        s.finish()
    sys.stdout.write("\n\n")
    sys.stdout.flush()
    if opts.verbose and not interrupted:
        _print_summary(s.last)
    content = "".join(s.content)
    if interrupted and not content:
        return None
    reply = {"role": role, "content": content}
    if s.thinking:
        reply["thinking"] = "".join(s.thinking)
    return reply


# --- model lookup, pull, load ---------------------------------------------------------------


def show_or_pull(c: ollama.Client, model: str, insecure: bool = False) -> dict:
    try:
        return client.raw_show(c, model)
    except ollama.ResponseError as e:
        if e.status_code != 404:
            raise
        missing = e
    from .progress import pull_with_progress

    try:
        pull_with_progress(c, model, insecure)
    except ollama.ResponseError as e:
        if e.status_code in (404, 405) and str(e.error).endswith(("page not found", "method not allowed")):
            raise missing from None  # a server without /api/pull: "model not found" says it best
        raise
    return client.raw_show(c, model)


def load_model(c: ollama.Client, opts: RunOptions) -> None:
    """An empty generate loads the model (or with keep_alive 0 unloads it), as `ollama run` does."""
    p = _waiting()
    try:
        kwargs = {"keep_alive": opts.keep_alive} if opts.keep_alive is not None else {}
        c.generate(model=opts.model, prompt="", think=opts.think, **kwargs)
    finally:
        if p:
            p.stop(clear=True)


def infer_media(info: dict, opts: RunOptions) -> None:
    """Ollama's run reads image paths out of prompts for models with the vision capability (older
    servers without capabilities: a `clip` projector in the families)."""
    details = info.get("details") or {}
    opts.multimodal = "vision" in (info.get("capabilities") or []) or "clip" in (details.get("families") or [])


def infer_think(info: dict, opts: RunOptions) -> None:
    if not opts.think_explicit:
        opts.think = True if "thinking" in (info.get("capabilities") or []) else None


# --- interactive ----------------------------------------------------------------------------


def _err(text: str = "") -> None:
    print(text, file=sys.stderr)


USAGE = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

USAGE_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

USAGE_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit mlxollama (/bye)
"""

USAGE_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

USAGE_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""


class LineReader:
    """input() with readline editing and a history file when the platform has readline."""

    def __init__(self):
        self.history = not no_history()
        self.alt = False
        try:
            import readline  # noqa: F401 - importing it is what gives input() line editing
        except ImportError:  # e.g. Windows without pyreadline
            self.readline = None
        else:
            self.readline = readline
        self.path = Path.home() / ".mlxollama" / "history"
        if self.readline and self.history:
            try:
                self.readline.read_history_file(self.path)
            except (OSError, ValueError):
                pass

    def read(self) -> str:
        line = input("... " if self.alt else ">>> ")
        if self.readline and not self.history and line:
            self.readline.remove_history_item(self.readline.get_current_history_length() - 1)
        return line

    def buffer(self) -> str:
        return self.readline.get_line_buffer() if self.readline else ""

    def save(self) -> None:
        if self.readline and self.history:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.readline.set_history_length(1000)
                self.readline.write_history_file(self.path)
            except OSError:
                pass


def _show_info_text(resp: dict) -> str:
    from .show import render_show_info

    return render_show_info(resp, verbose=False)


def interactive(c: ollama.Client, opts: RunOptions) -> int:
    reader = LineReader()
    try:
        return _interactive(c, opts, reader)
    finally:
        reader.save()


def _interactive(c: ollama.Client, opts: RunOptions, reader: LineReader) -> int:
    buf: list[str] = []
    multiline = None  # None, "prompt" or "system"
    while True:
        try:
            line = reader.read()
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            if not reader.buffer():
                print("\nUse Ctrl + d or /bye to exit.")
            else:
                print()
            reader.alt = False
            buf.clear()
            multiline = None
            continue

        if multiline:
            before, closed = (line[:-3], True) if line.endswith('"""') else (line, False)
            buf.append(before)
            if not closed:
                buf.append("\n")
                reader.alt = True
                continue
            if multiline == "system":
                _set_system(opts, "".join(buf))
                print("Set system message.")
                buf.clear()
            multiline = None
            reader.alt = False
        elif line.startswith('"""'):
            rest = line[3:]
            if rest.endswith('"""') and rest:
                buf.append(rest[:-3])
            else:
                buf.append(rest + "\n")
                multiline = "prompt"
                reader.alt = True
        elif line.startswith("/list"):
            from .show import print_list

            print_list(c, line.split()[1:2])
            continue
        elif line.startswith("/load"):
            args = line.split()
            if len(args) != 2:
                print("Usage:\n  /load <modelname>")
                continue
            _load(c, opts, args[1])
            continue
        elif line.startswith("/save"):
            args = line.split()
            if len(args) != 2:
                print("Usage:\n  /save <modelname>")
                continue
            _save(c, opts, args[1])
            continue
        elif line.startswith("/clear"):
            opts.messages = [{"role": "system", "content": opts.system}] if opts.system else []
            print("Cleared session context")
            continue
        elif line.startswith("/set"):
            args = line.split()
            if len(args) < 2:
                _err(USAGE_SET)
                continue
            if args[1] == "system":
                if len(args) < 3:
                    _err(USAGE_SET)
                    continue
                text = line.split(None, 2)[2]
                if text.startswith('"""'):
                    text = text[3:]
                    if text.endswith('"""') and text:
                        text = text[:-3]
                    else:
                        buf.append(text + "\n")
                        multiline = "system"
                        reader.alt = True
                        continue
                _set_system(opts, text)
                print("Set system message.")
                continue
            _set(opts, reader, args)
            continue
        elif line.startswith("/show"):
            args = line.split()
            if len(args) < 2:
                _err(USAGE_SHOW)
                continue
            _show(c, opts, args[1])
            continue
        elif line.startswith("/help") or line.startswith("/?"):
            args = line.split()
            topic = args[1] if len(args) > 1 else ""
            if topic in ("set", "/set"):
                _err(USAGE_SET)
            elif topic in ("show", "/show"):
                _err(USAGE_SHOW)
            elif topic in ("shortcut", "shortcuts"):
                _err(USAGE_SHORTCUTS)
            else:
                _err(USAGE)
            continue
        elif line.startswith("/exit") or line.startswith("/bye"):
            return 0
        elif line.startswith("/"):
            print(f"Unknown command '{line.split()[0]}'. Type /? for help")
            continue
        else:
            buf.append(line)

        text = "".join(buf)
        if text and multiline is None:
            message: dict = {"role": "user", "content": text}
            if opts.multimodal:  # a file that cannot be attached ends the session, as in Ollama
                message["content"], images = extract_file_data(text)
                if images:
                    message["images"] = images
            opts.messages.append(message)
            try:
                reply = chat(c, opts)
            except ollama.ResponseError as e:
                msg = str(e.error)
                if "does not support thinking" in msg or "invalid think value" in msg:
                    print(f"error: {msg}")
                    opts.messages.pop()
                    buf.clear()
                    continue
                raise
            if reply is not None:
                opts.messages.append(reply)
            buf.clear()


def _set_system(opts: RunOptions, text: str) -> None:
    opts.system = text
    msg = {"role": "system", "content": text}
    if opts.messages and opts.messages[-1]["role"] == "system":
        opts.messages[-1] = msg
    else:
        opts.messages.append(msg)


def _set(opts: RunOptions, reader: LineReader, args: list[str]) -> None:
    what = args[1]
    if what == "history":
        reader.history = True
    elif what == "nohistory":
        reader.history = False
    elif what == "wordwrap":
        opts.wordwrap = True
        print("Set 'wordwrap' mode.")
    elif what == "nowordwrap":
        opts.wordwrap = False
        print("Set 'nowordwrap' mode.")
    elif what == "verbose":
        opts.verbose = True
        print("Set 'verbose' mode.")
    elif what == "quiet":
        opts.verbose = False
        print("Set 'quiet' mode.")
    elif what == "think":
        level = args[2] if len(args) > 2 else ""
        opts.think, opts.think_explicit = (level or True), True
        print(f"Set 'think' mode to '{level}'." if level else "Set 'think' mode.")
    elif what == "nothink":
        opts.think, opts.think_explicit = False, True
        print("Set 'nothink' mode.")
    elif what == "format":
        if len(args) < 3 or args[2] != "json":
            print("Invalid or missing format. For 'json' mode use '/set format json'")
        else:
            opts.format = "json"
            print("Set format to 'json' mode.")
    elif what == "noformat":
        opts.format = ""
        print("Disabled format.")
    elif what == "parameter":
        if len(args) < 4:
            _err(USAGE_PARAMETERS)
            return
        name, values = args[2], args[3:]
        try:
            value = typed_parameter(name, values)
        except ModelfileError as e:
            print(f"Couldn't set parameter: {str(e)!r}")
            return
        opts.options[name] = value
        print(f"Set parameter '{name}' to '{', '.join(values)}'")
    else:
        print(f"Unknown command '/set {what}'. Type /? for help")


def _show(c: ollama.Client, opts: RunOptions, what: str) -> None:
    extra = {"system": opts.system} if opts.system else {}
    if opts.options:
        extra["options"] = opts.options
    resp = client.raw_show(c, opts.model, **extra)
    if what == "info":
        sys.stderr.write(_show_info_text(resp))
    elif what == "license":
        print(resp.get("license") or "No license was specified for this model.")
    elif what == "modelfile":
        print(resp.get("modelfile", ""))
    elif what == "parameters":
        print("Model defined parameters:")
        if not resp.get("parameters"):
            print("  No additional parameters were specified for this model.")
        else:
            for line in resp["parameters"].split("\n"):
                print(f"  {line}")
        print()
        if opts.options:
            print("User defined parameters:")
            for k, v in opts.options.items():
                print(f"  {k:<30} {_go_value(v)}")
            print()
    elif what == "system":
        text = opts.system or resp.get("system", "")
        print(text + "\n" if text else "No system message was specified for this model.")
    elif what == "template":
        print(resp.get("template") or "No prompt template was specified for this model.")
    else:
        print(f"Unknown command '/show {what}'. Type /? for help")


def _go_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + " ".join(map(str, v)) + "]"
    return str(v)


def _load(c: ollama.Client, opts: RunOptions, model: str) -> None:
    print(f"Loading model '{model}'")
    try:
        info = client.raw_show(c, model)
    except ollama.ResponseError as e:
        if e.status_code == 404 or "not found" in str(e.error):
            print(f"Couldn't find model '{model}'")
            return
        raise
    opts.model = model
    opts.messages = []
    opts.parent_model = (info.get("details") or {}).get("parent_model", "")
    opts.loaded_messages = list(info.get("messages") or [])
    infer_think(info, opts)
    infer_media(info, opts)
    load_model(c, opts)


def _save(c: ollama.Client, opts: RunOptions, name: str) -> None:
    kwargs: dict = {"from_": opts.parent_model or opts.model}
    if opts.system:
        kwargs["system"] = opts.system
    if opts.options:
        kwargs["parameters"] = opts.options
    messages = list(opts.loaded_messages) + list(opts.messages)
    if messages:
        kwargs["messages"] = messages
    try:
        c.create(model=name, **kwargs)
    except ollama.ResponseError as e:
        if "invalid model name" in str(e.error):
            print(f"error: The model name '{name}' is invalid")
            return
        if e.status_code in (404, 405):
            print("error: this server does not support creating models yet")
            return
        raise
    print(f"Created new model '{name}'")


def print_baked_messages(opts: RunOptions) -> None:
    for m in opts.loaded_messages:
        if m.get("role") == "user":
            print(f">>> {m.get('content', '')}")
        elif m.get("role") == "assistant":
            Display(sys.stdout, wrap=opts.wordwrap).write(m.get("content", ""))
            print("\n")


# --- image files in prompts (Ollama's cmd: extractFileData) ---------------------------------

# A path that starts with ./ / \ (or a drive letter) and ends in an image (or wav) extension; spaces
# may be escaped. It also matches words that are not files: only those that exist are read.
_FILE_PATH = re.compile(r"(?:[a-zA-Z]:)?(?:\./|/|\\)[\S\\ ]+?\.(?i:jpg|jpeg|png|webp|wav)\b", re.ASCII)
_SHELL_ESCAPES = {
    "\\ ": " ",
    "\\(": "(",
    "\\)": ")",
    "\\[": "[",
    "\\]": "]",
    "\\{": "{",
    "\\}": "}",
    "\\$": "$",
    "\\&": "&",
    "\\;": ";",
    "\\'": "'",
    "\\\\": "\\",
    "\\*": "*",
    "\\?": "?",
    "\\~": "~",
}
_SHELL_ESCAPE = re.compile("|".join(re.escape(k) for k in _SHELL_ESCAPES))
MAX_FILE_SIZE = 100 * 1024 * 1024
_ALLOWED_TYPES = ("image/jpeg", "image/png", "image/webp", "audio/wave")


def normalize_file_path(path: str) -> str:
    """A shell-escaped path as typed (`./my\\ photo.png`) made plain, in one left-to-right pass."""
    return _SHELL_ESCAPE.sub(lambda m: _SHELL_ESCAPES[m.group(0)], path)


def extract_file_names(text: str) -> list[str]:
    return _FILE_PATH.findall(text)


def _sniff(head: bytes) -> str:
    """The content type Go's http.DetectContentType gives for the kinds `ollama run` accepts."""
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head[:4] == b"RIFF" and head[8:14] == b"WEBPVP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wave"
    if head[:4] == b"GIF8":
        return "image/gif"
    if head[:2] == b"BM":
        return "image/bmp"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "application/octet-stream"
    return "text/plain; charset=utf-8"


def image_data(path: str) -> bytes:
    """The file's bytes if it is a JPEG, PNG, WebP (or WAV) of at most 100 MB; FileNotFoundError
    when there is no such file, CLIError for anything else."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
            kind = _sniff(head)
            if kind not in _ALLOWED_TYPES:
                raise CLIError(f"invalid file type: {kind}")
            if os.fstat(f.fileno()).st_size > MAX_FILE_SIZE:
                raise CLIError("file size exceeds maximum limit (100MB)")
            return head + f.read()
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(path) from None
    except IsADirectoryError:
        raise CLIError(f"read {path}: is a directory") from None
    except OSError as e:
        raise CLIError(f"open {path}: {(e.strerror or str(e)).lower()}") from None


def extract_file_data(text: str) -> tuple[str, list[bytes]]:
    """(the prompt without the paths of the files it attached, the files' bytes), saying
    `Added image '<path>'` on stderr for each, as `ollama run` does; paths of missing files stay
    in the prompt as words."""
    images: list[bytes] = []
    for found in extract_file_names(text):
        path = normalize_file_path(found)
        try:
            data = image_data(path)
        except FileNotFoundError:
            continue
        except CLIError as e:
            print(f"Couldn't process file: {json.dumps(str(e), ensure_ascii=False)}", file=sys.stderr)
            raise
        kind = "audio" if path.lower().endswith(".wav") else "image"
        print(f"Added {kind} '{path}'", file=sys.stderr)
        text = text.replace(f"'{path}'", "").replace(f"'{found}'", "").replace(found, "")
        images.append(data)
    return text.strip(), images
