# In-jail harness for the nsjail contender of bench/cli_bench.py.
#
# Runs INSIDE nsjail as `python3 -I /sandbox/runner.py`, with the user's
# script on stdin, the way the reference peer's runner.py does: compile the
# script as module "script", call main(), check that the result is JSON, and
# write ONE envelope line as the last line of stdout:
#
#   {"ok": true,  "result": <json>, "stdout": "<captured prints>"}
#   {"ok": false, "error": "<kind>", "detail": "<msg>", "stdout": "..."}
#
# It imports only io/json/os/sys up front (json is needed to check and send
# the result, as any harness must); traceback is imported on failure only.
import io
import json
import os
import sys


def main():
    real_stdout = sys.stdout
    src = sys.stdin.read()
    try:
        sys.stdin = open(os.devnull)
    except OSError:
        sys.stdin = io.StringIO()
    buf = io.StringIO()
    sys.stdout = buf
    try:
        ns = {"__name__": "script", "__builtins__": __builtins__}
        exec(compile(src, "<script>", "exec"), ns)
        fn = ns.get("main")
        if not callable(fn):
            env = {"ok": False, "error": "no_main", "detail": "no callable main()"}
        else:
            result = fn()
            try:
                json.dumps(result, allow_nan=False)
                env = {"ok": True, "result": result}
            except (TypeError, ValueError, RecursionError) as e:
                env = {"ok": False, "error": "result_not_json", "detail": str(e)}
    except BaseException:  # noqa: BLE001 - report any user failure
        import traceback  # only on failure: it costs ~5 ms of start-up
        env = {"ok": False, "error": "exception",
               "detail": traceback.format_exc(limit=-8)}
    finally:
        sys.stdout = real_stdout
    env["stdout"] = buf.getvalue()
    real_stdout.write("\n" + json.dumps(env, allow_nan=False) + "\n")
    real_stdout.flush()


if __name__ == "__main__":
    main()
