"""mimalloc as malloc (ht_jax/allocator.py): found, preloaded into child processes and restarted
commands, switched off by HT_ALLOCATOR=system, and doing what it is there for: a jitted call whose
64 MB temporary buffer faults its pages in anew at every call under glibc's malloc does not, nor
does a block over 2 GiB, which mimalloc's defaults would unmap when freed."""

import os
import subprocess
import sys

import pytest

from ht_jax import allocator

pytestmark = pytest.mark.skipif(allocator.library() is None, reason="cmeel-mimalloc is installed on Linux only")


def plain_environment(**extra) -> dict[str, str]:
  """This environment without any preload or allocator choice (the suite itself may run with one)."""
  env = {k: v for k, v in os.environ.items()
         if k not in ("LD_PRELOAD", allocator.CHOICE, "HT_ALLOCATOR_RESTARTED", *allocator.SETTINGS)}
  return {**env, **extra}


def run_python(source: str, env: dict[str, str], tmp_path) -> str:
  script = tmp_path / "child.py"
  script.write_text(source)
  result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  return result.stdout.strip()


def test_environment_preloads_the_library_and_keeps_other_preloads():
  env = allocator.environment(plain_environment(LD_PRELOAD="/other/lib.so"))
  first, *rest = env["LD_PRELOAD"].split(":")
  assert first == str(allocator.library()) and first.endswith(".so.3")
  assert rest == ["/other/lib.so"]
  assert env["MIMALLOC_PURGE_DELAY"] == "-1"
  assert allocator.environment(env)["LD_PRELOAD"] == env["LD_PRELOAD"]     # not preloaded twice


def test_system_choice_takes_mimalloc_out_and_a_bad_choice_is_one_sentence():
  base = plain_environment(HT_ALLOCATOR="system")
  assert allocator.environment(base) == base
  preloaded = allocator.environment(plain_environment(LD_PRELOAD="/other/lib.so"))
  assert allocator.environment({**preloaded, "HT_ALLOCATOR": "system"})["LD_PRELOAD"] == "/other/lib.so"
  with pytest.raises(ValueError, match="HT_ALLOCATOR='tcmalloc' is not an allocator: set it to mimalloc or system"):
    allocator.environment(plain_environment(HT_ALLOCATOR="tcmalloc"))


CHILD_RESTARTS = """
from ht_jax import allocator
allocator.restart_with_mimalloc()
import os
print(allocator.active(), os.environ.get("MIMALLOC_PURGE_DELAY", "-"))
"""


def test_an_entry_point_restarts_itself_with_the_allocator_asked_for(tmp_path):
  assert run_python(CHILD_RESTARTS, plain_environment(), tmp_path) == "mimalloc -1"
  assert run_python(CHILD_RESTARTS, plain_environment(HT_ALLOCATOR="system"), tmp_path) == "system -"
  # A parent's preload (scripts/_venv.sh exports one) does not override HT_ALLOCATOR=system.
  preloaded = {**allocator.environment(plain_environment()), "HT_ALLOCATOR": "system"}
  assert run_python(CHILD_RESTARTS, preloaded, tmp_path).split()[0] == "system"
  # A preload without the settings (a shell set up before one was added) restarts with them.
  unsettled = {k: v for k, v in allocator.environment(plain_environment()).items() if k not in allocator.SETTINGS}
  assert run_python(CHILD_RESTARTS, unsettled, tmp_path) == "mimalloc -1"


CHILD_FAULTS = """
import resource
import jax, jax.numpy as jnp
from ht_jax import allocator
step = jax.jit(lambda x, w: jnp.sum(jnp.sin(x) @ w))   # sin(x): a 64 MB temporary the dot reads
x, w = jnp.ones((4096, 4096)), jnp.ones((4096, 8))
for _ in range(3):
  step(x, w).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  step(x, w).block_until_ready()
print(allocator.active(), (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def test_mimalloc_stops_every_call_faulting_its_temporary_buffer_in_again(tmp_path):
  system, system_faults = run_python(CHILD_FAULTS, plain_environment(HT_ALLOCATOR="system"), tmp_path).split()
  mimalloc, mimalloc_faults = run_python(CHILD_FAULTS, allocator.environment(plain_environment()), tmp_path).split()
  assert (system, mimalloc) == ("system", "mimalloc")
  pages = 4096 * 4096 * 4 / 4096
  assert float(system_faults) > 0.5 * pages          # glibc: the 64 MB buffer is new at every call
  assert float(mimalloc_faults) < 0.02 * pages       # mimalloc: reused (16,392 against 0.1 measured here)


CHILD_HUGE_BLOCK = """
import ctypes, resource
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size, stride = 5 << 29, 4 << 20      # 2.5 GiB, over mimalloc's default arena_max_object_size of 2 GiB
faults = []
for _ in range(3):
  block = libc.malloc(size)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for offset in range(0, 64 * stride, stride):   # touches 64 pages only: 2.5 GiB is never committed
    ctypes.c_char.from_address(block + offset).value = b"x"
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
  libc.free(block)
print(*faults)
"""


def test_mimalloc_keeps_a_block_over_2_gib_for_the_next_call(tmp_path):
  """XLA:CPU's temporary buffer for a large step is one such block (allocator.SETTINGS)."""
  env = allocator.environment(plain_environment())
  first, *again = map(int, run_python(CHILD_HUGE_BLOCK, env, tmp_path).split())
  assert first >= 48 and again == [0, 0]       # faulted in once (but a page mimalloc wrote), then reused
  # mimalloc's default, which our setting overrides: such a block is unmapped when freed.
  default = {k: v for k, v in env.items() if k != "MIMALLOC_ARENA_MAX_OBJECT_SIZE"}
  assert min(map(int, run_python(CHILD_HUGE_BLOCK, default, tmp_path).split())) >= 48


def test_a_bad_choice_ends_an_entry_point_with_its_sentence(tmp_path):
  script = tmp_path / "child.py"
  script.write_text(CHILD_RESTARTS)
  result = subprocess.run([sys.executable, str(script)], env=plain_environment(HT_ALLOCATOR="tcmalloc"),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 1
  assert result.stderr.strip() == "error: HT_ALLOCATOR='tcmalloc' is not an allocator: set it to mimalloc or system."
