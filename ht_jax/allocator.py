"""mimalloc as the process's malloc, for speed on the host CPU (Linux).

Why: XLA:CPU (and torch) allocate a step's buffers anew at every step. glibc's malloc gives large
freed blocks back to the kernel (munmap), so the next step faults every page in again and the
kernel zeroes it: on omniglot_1shot_v1 at 16 episodes per step that was 47,000 page faults and
75 ms of kernel time per 200 ms step. mimalloc, told never to return freed memory
(MIMALLOC_PURGE_DELAY=-1, and blocks of any size kept in its arenas), reuses it: no faults, the
step 1.3-1.6x faster (README, Speed). The cost is that the process keeps its peak memory until it
exits.

A malloc can only be replaced before the process starts (LD_PRELOAD), so the entry points call
`restart_with_mimalloc()` first: it re-executes the same command with the library preloaded.
HT_ALLOCATOR=system keeps glibc's malloc. Nothing changes numerically.
"""

from __future__ import annotations

import importlib.metadata
import os
import pathlib
import sys

CHOICE = "HT_ALLOCATOR"            # "mimalloc" (default) | "system"
_RESTARTED = "HT_ALLOCATOR_RESTARTED"   # set in the re-executed process: never loop
# Freed memory stays with the process: returning it is what made every step fault (docstring).
# mimalloc serves a block over arena_max_object_size (2 GiB by default) straight from the OS and
# unmaps it when freed, whatever the purge delay: XLA:CPU's one temporary buffer for a whole step
# is such a block on large steps (2.5 GB for omniglot_5shot_v1 at 64 episodes per step), which
# then faulted in anew at every step (1,250 huge pages), every other step taking twice as long.
SETTINGS = {"MIMALLOC_PURGE_DELAY": "-1", "MIMALLOC_ARENA_MAX_OBJECT_SIZE": "64GiB"}


def library() -> pathlib.Path | None:
  """The libmimalloc.so that the cmeel-mimalloc wheel installs, or None (not Linux, not installed)."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    files = importlib.metadata.distribution("cmeel-mimalloc").files or []
  except importlib.metadata.PackageNotFoundError:
    return None
  for f in files:
    if f.name.startswith("libmimalloc.so."):
      path = pathlib.Path(f.locate()).resolve()
      if path.exists():
        return path
  return None


def wanted(env: dict[str, str] | None = None) -> bool:
  choice = (os.environ if env is None else env).get(CHOICE, "mimalloc").lower()
  if choice not in ("mimalloc", "system"):
    raise ValueError(f"{CHOICE}={choice!r} is not an allocator: set it to mimalloc or system.")
  return choice == "mimalloc"


def active() -> str:
  """The allocator this process runs with: "mimalloc" if the library is mapped into it, else "system"."""
  try:
    maps = pathlib.Path("/proc/self/maps").read_text()
  except OSError:
    return "system"
  return "mimalloc" if "libmimalloc" in maps else "system"


def environment(base: dict[str, str] | None = None) -> dict[str, str]:
  """`base` (default os.environ) for a child process: with mimalloc preloaded, or with it taken
  out of LD_PRELOAD under HT_ALLOCATOR=system; unchanged where it is not installed."""
  env = dict(os.environ if base is None else base)
  path = library()
  if path is None:
    return env
  preload = [p for p in env.get("LD_PRELOAD", "").split(":") if p and p != str(path)]
  if wanted(env):
    preload.insert(0, str(path))
    for key, value in SETTINGS.items():
      env.setdefault(key, value)
  if preload:
    env["LD_PRELOAD"] = ":".join(preload)
  else:
    env.pop("LD_PRELOAD", None)
  return env


def restart_with_mimalloc() -> None:
  """Re-executes this command with the allocator HT_ALLOCATOR asks for (mimalloc by default) if it
  runs with the other one, or with mimalloc but without SETTINGS; returns otherwise. Call it first
  in an entry point's `__main__`."""
  try:
    want = wanted() and library() is not None
  except ValueError as e:     # a bad HT_ALLOCATOR: its one sentence, no traceback
    sys.exit(f"error: {e}")
  # mimalloc reads its settings once, at start: a preload from an older shell without them restarts too.
  settled = not want or all(key in os.environ for key in SETTINGS)
  if ((active() == "mimalloc") == want and settled) or os.environ.get(_RESTARTED):
    return
  env = environment()
  env[_RESTARTED] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


if __name__ == "__main__":
  # `eval "$(python -m ht_jax.allocator)"` in a shell: sets the preload for what the shell runs.
  import shlex
  try:
    env = environment()
  except ValueError as e:
    sys.exit(f"error: {e}")
  print("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if os.environ.get(k) != v)
        + "".join(f"unset {k}\n" for k in os.environ if k not in env), end="")
