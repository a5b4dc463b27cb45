# execbox Python harness. Runs inside the jail as
# `python3 -I -u -B -c <this file> MODE ENTRY [ARGS...]` with the user's files in /work and
# ENTRY (a plain file name, e.g. main.py) the script to run. It is trusted code running with the user's
# privileges: it adds no privilege, only the `main()` contract and a result channel.
#
# MODE "main":    run the script as a module, call main(), write its return value as JSON to
#                 fd 3 (the result channel), separate from stdout so prints never mix with it.
# MODE "program": run the script as __main__ (like `python3 main.py ARGS`).
#
# The result channel carries one JSON object:
#   {"ok": true, "result": <value>}
#   {"ok": false, "error": "<code>", "message": "<text>"}
# (main mode only: in program mode fd 3 is closed before the program runs)
# codes: syntax_error, no_main, main_not_callable, exception, result_not_json, memory_error,
#        system_exit
#
# Start-up cost matters (it is paid on every run), so the harness imports nothing beyond what
# the interpreter has already loaded: `json` pulls in `re` and `enum` (~20 ms), so plain values
# are encoded by the small encoder below and `json` is imported only for anything else (numpy
# values, non-string keys); `traceback` only when there is an error to print.
import os
import sys

SCRIPT = "/work/main.py"  # replaced by /work/ENTRY in _start()
RESULT_FD = 3


def _emit(obj_text):
    data = obj_text.encode("utf-8", "surrogatepass")
    while data:
        try:
            n = os.write(RESULT_FD, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


def _fail(code, message):
    _emit('{"ok": false, "error": %s, "message": %s}' % (_enc_str(code), _enc_str(message)))


# JSON string escaping without `re`: quote, backslash and C0 controls.
_ESC = {i: "\\u%04x" % i for i in range(0x20)}
_ESC.update({0x22: '\\"', 0x5C: "\\\\", 0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t", 0x08: "\\b", 0x0C: "\\f"})


def _enc_str(s):
    return '"' + s.translate(_ESC) + '"'


class _Slow(Exception):
    """The fast encoder met something only the json module handles."""


def _fast(o, depth=0):
    t = type(o)
    if t is str:
        return _enc_str(o)
    if o is None:
        return "null"
    if o is True:
        return "true"
    if o is False:
        return "false"
    if t is int:
        return int.__repr__(o)
    if t is float:
        if o != o or o in (float("inf"), float("-inf")):
            raise ValueError("Out of range float values are not JSON compliant")
        return float.__repr__(o)
    if depth > 200:
        raise _Slow
    if t is list or t is tuple:
        return "[" + ", ".join([_fast(v, depth + 1) for v in o]) + "]"
    if t is dict:
        parts = []
        for k, v in o.items():
            if type(k) is not str:
                raise _Slow
            parts.append(_enc_str(k) + ": " + _fast(v, depth + 1))
        return "{" + ", ".join(parts) + "}"
    raise _Slow


def _encode(value):
    try:
        text = _fast(value)
    except _Slow:
        import json

        text = json.dumps(value, default=_plain, allow_nan=False, ensure_ascii=False)
    text.encode("utf-8")  # lone surrogates are not valid JSON text: UnicodeEncodeError
    return text


def _plain(o):
    """json.dumps default=: numpy scalars and arrays become plain JSON values."""
    np = sys.modules.get("numpy")
    if np is not None:
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, np.generic):
            return o.item()
    raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")


def _print_user_traceback(exc):
    import traceback

    # Drop the harness's own frames (filename "<string>"): the user sees only theirs.
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
    sys.stderr.flush()


def _load(name):
    with open(SCRIPT, "rb") as f:
        src = f.read()
    code = compile(src, SCRIPT, "exec")
    mod = type(sys)(name)
    mod.__file__ = SCRIPT
    sys.modules[name] = mod
    return code, mod


def _flush():
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except Exception:
            pass


def run_main():
    try:
        code, mod = _load("__script__")
    except SyntaxError as e:
        import traceback

        traceback.print_exception(type(e), e, None, file=sys.stderr)
        _fail("syntax_error", f"{type(e).__name__}: {e.msg} (line {e.lineno})")
        return 1
    try:
        exec(code, mod.__dict__)
        fn = mod.__dict__.get("main")
        if fn is None:
            _fail("no_main", "script must define a function main()")
            return 1
        if not callable(fn):
            _fail("main_not_callable", f"main is a {type(fn).__name__}, not a function")
            return 1
        value = fn()
    except MemoryError as e:
        _flush()
        _print_user_traceback(e)
        _fail("memory_error", "the script ran out of memory (MemoryError)")
        return 1
    except SystemExit as e:
        _flush()
        _fail("system_exit", f"the script called exit({e.code!r}) instead of returning from main()")
        return 1
    except BaseException as e:  # noqa: BLE001 - every user exception is reported
        _flush()
        _print_user_traceback(e)
        _fail("exception", f"{type(e).__name__}: {e}"[:2000])
        return 1
    _flush()
    try:
        text = _encode(value)
    except (TypeError, ValueError, OverflowError, RecursionError, UnicodeError) as e:
        _fail("result_not_json", f"main() returned a {type(value).__name__} that is not JSON: {e}"[:2000])
        return 1
    _emit('{"ok": true, "result": ' + text + "}")
    return 0


def run_program(args):
    # A program gets no result channel: close it so the program can neither inherit nor write
    # it (a write could otherwise forge the record's status).
    try:
        os.close(RESULT_FD)
    except OSError:
        pass
    sys.argv = [SCRIPT] + args
    try:
        code, mod = _load("__main__")
        sys.modules["__main__"] = mod
        exec(code, mod.__dict__)
    except SystemExit:
        raise
    except BaseException as e:  # noqa: BLE001
        _flush()
        _print_user_traceback(e)
        return 1
    return 0


def _start():
    # The result channel must not leak into programs the script starts.
    try:
        os.set_inheritable(RESULT_FD, False)
    except OSError:
        pass
    sys.path.insert(0, "/work")
    global SCRIPT
    mode = sys.argv[1] if len(sys.argv) > 1 else "main"
    if len(sys.argv) > 2:
        SCRIPT = "/work/" + sys.argv[2]
    rc = run_main() if mode == "main" else run_program(sys.argv[3:])
    _flush()
    sys.exit(rc)


if __name__ == "__main__":
    _start()
