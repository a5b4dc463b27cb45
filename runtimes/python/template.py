# execbox warm template for Python. Runs inside a template jail (docs/security.md,
# "Templates") as
#   python3 -I -u -B -c <this file> LIB HARNESS MODULES
# LIB is the jail library (the warm path's native part), HARNESS the harness's source,
# MODULES a comma-separated list of modules to import once (numpy,pandas by default).
#
# It is trusted code and never runs user code itself. It imports the harness and the modules,
# says "ready" on its control socket (fd 3), then serves the spawner: for each request LIB
# clones a child that builds a run's jail around itself (new namespaces, its own cgroup, uid,
# root, rlimits, no capabilities, no_new_privs, Landlock, seccomp) and returns here, in the
# child, with the run's argv; the child then runs the harness exactly as a cold run's
# `python3 -c <harness> MODE ENTRY ARGS` would, in an interpreter that has the modules
# already. The template reaps its children and reports each wait status on the pipe the
# spawner gave with the request.
#
# No threads (forking a threaded process is unsafe; the jail library checks), no signal
# handlers or wakeup descriptors (a child would inherit them), no Python objects owning
# descriptors: the child closes every descriptor of the template's, and Python must never
# close one of those numbers again behind the user's back.
import ctypes
import gc
import json
import os
import select
import struct
import sys

CTL = 3


def _log(msg):
    sys.stderr.write("execbox-template[%d]: %s\n" % (os.getpid(), msg))


def _child(harness, argv):
    """In a jailed child: run the harness as a cold run would, then exit."""
    gc.enable()
    # State every child would otherwise share with its siblings: numpy's global random state
    # was seeded once, in the template (Python's own `random` reseeds itself after a fork).
    np = sys.modules.get("numpy")
    if np is not None:
        np.random.seed()
    sys.argv = ["-c"] + argv
    harness["_start"]()  # ends in sys.exit(rc)


def main():
    lib_path, harness_src, modules = sys.argv[1], sys.argv[2], sys.argv[3]
    lib = ctypes.PyDLL(lib_path)  # PyDLL: the interpreter's lock stays held, as in os.fork
    serve = lib.execbox_warm_serve
    serve.restype = ctypes.c_int64
    serve.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    api = ctypes.pythonapi
    harness = {"__name__": "execbox_harness"}
    # Compiled as "<string>", like a cold run's `-c`, so the harness hides its own frames.
    exec(compile(harness_src, "<string>", "exec"), harness)
    for m in filter(None, modules.split(",")):
        __import__(m)
    buf = ctypes.create_string_buffer(1 << 16)
    # Objects alive now are never collected: children do not touch (and copy) their pages
    # when they collect garbage.
    gc.collect()
    gc.freeze()
    os.write(CTL, b"ready")

    poller = select.poll()
    poller.register(CTL, select.POLLIN)
    children = {}  # pidfd -> (pid, exit report descriptor)
    while True:
        for fd, ev in poller.poll():
            if fd != CTL:
                pid, report = children.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                try:
                    os.write(report, struct.pack("<i", status))
                except OSError:
                    pass  # the spawner dropped the run already
                os.close(report)
                continue
            api.PyOS_BeforeFork()
            r = serve(CTL, buf, len(buf))
            if r == 0:
                api.PyOS_AfterFork_Child()
                _child(harness, json.loads(buf.value)["argv"])
                os._exit(1)  # not reached: the harness exits
            api.PyOS_AfterFork_Parent()
            if r == -1:
                os._exit(0)  # the spawner closed the control socket
            if r < 0:
                _log(json.loads(buf.value).get("error", "request failed"))
                continue
            report = json.loads(buf.value)["exit_fd"]
            pidfd = os.pidfd_open(r)
            children[pidfd] = (r, report)
            poller.register(pidfd, select.POLLIN)


main()
