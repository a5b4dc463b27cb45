# execbox Python harness. Runs inside the jail as `python3 -I -c <this file> MODE [ARGS...]`
# with the user's script at /work/main.py. It is trusted code running with the user's
# privileges: it adds no privilege, only the `main()` contract and a result channel.
#
# MODE "main":    run the script as a module, call main(), write its return value as JSON to
#                 fd 3 (the result channel), separate from stdout so prints never mix with it.
# MODE "program": run the script as __main__ (like `python3 main.py ARGS`).
#
# The result channel carries one JSON object:
#   {"ok": true, "result": <value>}
#   {"ok": false, "error": "<code>", "message": "<text>"}
# codes: syntax_error, no_main, main_not_callable, exception, result_not_json, memory_error,
#        system_exit
import json
import os
import sys
import traceback
import types

SCRIPT = "/work/main.py"
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
    _emit(json.dumps({"ok": False, "error": code, "message": message}))


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
    mod = types.ModuleType(name)
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
        text = json.dumps(value, default=_plain, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, OverflowError, RecursionError) as e:
        _fail("result_not_json", f"main() returned a {type(value).__name__} that is not JSON: {e}"[:2000])
        return 1
    _emit('{"ok": true, "result": ' + text + "}")
    return 0


def run_program(args):
    sys.argv = [SCRIPT] + args
    try:
        code, mod = _load("__main__")
        sys.modules["__main__"] = mod
        exec(code, mod.__dict__)
    except SystemExit:
        raise
    except MemoryError as e:
        _flush()
        _print_user_traceback(e)
        _fail("memory_error", "the program ran out of memory (MemoryError)")
        return 1
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
    mode = sys.argv[1] if len(sys.argv) > 1 else "main"
    rc = run_main() if mode == "main" else run_program(sys.argv[2:])
    _flush()
    sys.exit(rc)


_start()
