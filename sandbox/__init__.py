"""Where untrusted bytes are parsed: small pools of pre-started processes under kernel limits.

Every parse of what a user controls — an upload's decode and variants
(Pillow, LittleCMS, libwebp ...), a workspace repository's read (libgit2) —
runs in a sandbox process, not in the serving one. The per-format checks
before a decode (imaging/images.py's container walk and memory estimate) stay the
cheap first line; this is the guarantee for what they do not foresee:

- a hard address-space ceiling and a CPU-time limit set with setrlimit, and
  a wall-clock deadline after which the serving side kills the process, so
  no file can take more memory or time than its limit, however it is built;
- the serving thread waits on a socket, holding no GIL: a decode or a scan
  that blocks or burns never stalls another request or socket;
- a process that dies fails its one call (an upload's ``400 Invalid image
  file.``, a repository left out of the watch), is logged with its cause,
  and is replaced in the background;
- answers are JSON and byte strings, never pickles: a process a hostile file
  took over can lie about that file, not run code in the serving process.

After Chrome's utility processes (a decoder per process, the browser only
trusts what comes back) and ImageMagick's resource policy (memory, time and
area limits per image), with the kernel as the one enforcing them.

- ``pool.py``: the pool and the serving side of a call;
- ``worker.py``: the sandbox process's main loop and its limits;
- ``tasks.py``: each task's two halves (in the sandbox, and the serving call);
- ``wire.py``: the frames on the socket between them.
"""

from sandbox.pool import Limits, Pool, PoolBusy, SandboxFailed, pool

__all__ = ["Limits", "Pool", "PoolBusy", "SandboxFailed", "pool"]
