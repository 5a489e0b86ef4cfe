"""The benchmark harness measures what it says: rates from timed repeats, rows in the documented
schema, a failed measurement reported rather than lost. (Speeds themselves live in benchmarks/.)"""

import json
import os
import subprocess
import sys
import time
import types

import pytest

from benchmarks import common, run
from tests.test_train import REPO


def sleeping_steps(seconds_per_step: float):
  """A stand-in for a training loop: run_steps(k) sleeps k steps; `calls` records each k."""
  calls = []
  def run_steps(k):
    calls.append(k)
    time.sleep(seconds_per_step * k)
  return run_steps, calls


def test_timed_repeats_reports_the_rate_of_the_timed_blocks():
  run_steps, calls = sleeping_steps(0.01)   # 10 ms per step
  timing = common.timed_repeats(run_steps, episodes_per_step=4, repeats=5, seconds_per_repeat=0.1,
                                warmup_seconds=0)
  # An estimate, then 5 blocks of several steps each (about 10; fewer when a loaded machine
  # oversleeps the estimate, but at least 2 unless it sleeps 67 ms for 10).
  assert calls[0] == 1 and calls[1:] == [timing["steps_per_repeat"]] * 5 and timing["steps_per_repeat"] > 1
  assert timing["episodes_per_s_min"] <= timing["episodes_per_s_median"] <= timing["episodes_per_s_max"]
  assert 150 < timing["episodes_per_s_median"] <= 400          # 4 episodes / 10 ms, less overhead
  assert timing["cpu_utilisation"] < 0.5                      # sleeping is not computing


def test_a_step_longer_than_a_repeat_is_its_own_first_repeat():
  run_steps, calls = sleeping_steps(0.02)
  timing = common.timed_repeats(run_steps, episodes_per_step=1, repeats=5, seconds_per_repeat=0.01,
                                warmup_seconds=0)
  assert calls == [1] * 5 and timing["steps_per_repeat"] == 1
  assert 20 < timing["episodes_per_s_median"] <= 50              # 1 episode / 20 ms (a loaded machine oversleeps)


def test_earlier_repeats_count_toward_the_total():
  run_steps, calls = sleeping_steps(0.02)
  probe = common.timed_repeats(run_steps, episodes_per_step=2, repeats=1, seconds_per_repeat=0.01,
                               warmup_seconds=0)
  timing = common.timed_repeats(run_steps, episodes_per_step=2, repeats=5, seconds_per_repeat=0.01, prior=probe)
  assert calls == [1] * 5 and timing["repeats"] == 5
  assert timing["repeat_rates"][0] == probe["repeat_rates"][0]     # the probe is the first repeat
  assert 40 < timing["episodes_per_s_median"] <= 100                # 2 episodes / 20 ms, oversleeping allowed


def test_warm_up_steps_are_not_timed():
  """Steps that are slow only at first (fresh memory faulting in) are run before the timing."""
  calls = []
  def run_steps(k):
    calls.append(k)
    time.sleep((0.2 if len(calls) <= 2 else 0.01) * k)   # two slow calls (0.6 s), then 10 ms a step
  # The warm-up outlasts the slow steps by 0.2 s, a margin that scheduling on a loaded CI machine
  # does not eat (a 20 ms margin once did).
  timing = common.timed_repeats(run_steps, episodes_per_step=1, repeats=3, seconds_per_repeat=0.03,
                                warmup_seconds=0.8)
  assert calls[:2] == [1, 2] and timing["repeats"] == 3             # one step, then blocks
  # A slow step in any timed block would pull its rate to 14 episodes/s or below.
  assert 40 < timing["episodes_per_s_min"] and timing["episodes_per_s_median"] <= 100


def test_warm_up_reaches_what_only_blocks_of_steps_fault_in():
  """JAX starts a block's next step before the last one frees its temporaries: memory that steps run
  one at a time never touch, slow the first time a block runs. It must fault in before the timing."""
  calls, seen_a_block = [], []
  def run_steps(k):
    calls.append(k)
    time.sleep(0.01 * k + (0.5 if k > 1 and not any(seen_a_block) else 0.0))
    seen_a_block.append(k > 1)
  timing = common.timed_repeats(run_steps, episodes_per_step=1, repeats=3, seconds_per_repeat=0.05,
                                warmup_seconds=0.2)
  assert any(k > 1 for k in calls[:-3])                               # a block before the timed ones
  assert timing["steps_per_repeat"] > 1 and 40 < timing["episodes_per_s_min"]   # 0.5 s in one: under 10


def test_each_repeat_reports_the_page_faults_it_took():
  """A repeat that touches fresh memory says so: 32 MB freshly mapped and written, 8,192 pages."""
  import mmap
  calls = []
  def run_steps(k):
    calls.append(k)
    time.sleep(0.001)            # a repeat's rate divides by its duration
    if len(calls) == 3:          # the third repeat (the first is the estimate's single step)
      fresh = mmap.mmap(-1, 32 << 20)
      fresh.write(b"\1" * (32 << 20))
      fresh.close()
  timing = common.timed_repeats(run_steps, episodes_per_step=1, repeats=4, seconds_per_repeat=0.0,
                                warmup_seconds=0)
  minor, major = timing["repeat_minor_page_faults"], timing["repeat_major_page_faults"]
  assert len(minor) == len(major) == 4 and all(f >= 0 for f in minor + major)
  assert minor[2] > 4000 + max(minor[:2] + minor[3:])


def test_warm_up_goes_on_while_blocks_still_raise_the_peak_memory(monkeypatch):
  """Past its seconds, the warm-up runs blocks until one leaves the peak RSS where it was, and stops
  at WARMUP_MAX_SECONDS if none does."""
  calls, peak = [], [1000.0]
  def run_steps(k):
    calls.append(k)
    time.sleep(0.01 * k)
    if len(calls) <= 5:
      peak[0] += 200.0          # the first four blocks fault in another step's temporaries
  # 0.2 s pass by the fifth call (at 0.31 s, sleeping 10 ms a step), its memory still growing.
  common.warm_up(run_steps, seconds=0.2, memory_mb=lambda: peak[0])
  assert len(calls) == 6 and calls[0] == 1 and all(k >= 2 for k in calls[1:])
  monkeypatch.setattr(common, "WARMUP_MAX_SECONDS", 0.3)
  calls.clear()
  started = time.perf_counter()
  common.warm_up(lambda k: (calls.append(k), time.sleep(0.01 * k)), seconds=0.05,
                 memory_mb=lambda: 100.0 * len(calls))             # grows with every block
  assert 0.3 <= time.perf_counter() - started < 1.0 and len(calls) > 2


def test_the_matmul_yardstick_is_its_fastest_repeat(monkeypatch):
  """One fast repeat among slow ones sets the peak: a slow minute must not inflate the fractions."""
  # A fake clock read at each repeat's start and end: repeats of 1, 1, 0.25, 1 and 1 s.
  ticks = iter([0.0, 1.0, 1.0, 2.0, 2.0, 2.25, 2.25, 3.25, 3.25, 4.25])
  monkeypatch.setattr(common, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))   # common's clock only
  assert common.matmul_peak_flops(size=64, repeats=5) == pytest.approx(2 * 64 ** 3 / 0.25)


def test_only_a_much_slower_long_torch_mode_goes_untimed():
  from benchmarks.train import clearly_slower
  # Warm steps' seconds (the first step carries one-time costs: 38 s for vmap on 84x84 at 16 per step).
  assert clearly_slower({"loop": 2.3, "vmap": 5.0}) == {"vmap"}       # 84x84 at 16: 2x slower, 5 s a step
  assert clearly_slower({"loop": 6.0, "vmap": 8.0}) == set()          # close: both get a timed block
  assert clearly_slower({"loop": 0.3, "vmap": 0.9}) == set()          # short steps: a block is cheap


def test_a_torch_mode_is_judged_by_a_warm_step_not_its_first():
  """vmap's first step carries one-time costs many times its warm step's: judged by it, a mode as
  fast as the other would go untimed."""
  from benchmarks.train import clearly_slower, first_and_warm_step_s, probe_torch_modes
  runners, first, warm = {}, {}, {}
  for mode, first_call_s in (("loop", 0.02), ("vmap", 2.5)):
    run_steps, calls = sleeping_steps(0.02)
    def run_with_slow_first(k, run_steps=run_steps, calls=calls, first_call_s=first_call_s):
      if not calls:
        time.sleep(first_call_s)
      run_steps(k)
    first[mode], warm[mode] = first_and_warm_step_s(run_with_slow_first)
    runners[mode] = run_with_slow_first
  assert first["vmap"] > 2.5 and warm["vmap"] < 0.5
  assert clearly_slower(first) == {"vmap"} and clearly_slower(warm) == set()
  best, probes, untimed = probe_torch_modes(runners, warm, episodes_per_step=1, seconds=0.05)
  assert untimed == set() and set(probes) == {"loop", "vmap"}


def test_one_measurement_in_its_own_process_has_every_documented_key(tmp_path):
  out = tmp_path / "row.json"
  item = {"kind": "train", "framework": "torch", "config": "omniglot_1shot_v1", "episodes": 2}
  subprocess.run([sys.executable, "-m", "benchmarks.run", "--one", json.dumps(item), "--out", str(out),
                  "--repeats", "5", "--seconds", "0.05"], cwd=REPO, check=True, capture_output=True)
  row = json.loads(out.read_text())
  assert set(common.ROW_KEYS) <= set(row)
  assert row["framework"] == "torch" and row["episodes_per_step"] == 2 and row["repeats"] == 5
  assert 0 < row["episodes_per_s_min"] <= row["episodes_per_s_median"] <= row["episodes_per_s_max"]
  # Both torch modes were timed and the row is the faster one's, over all its repeats.
  rates = {m: row[f"{m}_episodes_per_s"] for m in ("loop", "vmap")}
  assert row["torch_mode"] in rates and row["episodes_per_s_median"] == rates[row["torch_mode"]]
  assert len(row["repeat_rates"]) == 5
  assert row["peak_rss_mb"] > 50


def torch_row(config, episodes, best, rates, **extra):
  return {"benchmark": "train", "framework": "torch", "config": config, "episodes_per_step": episodes,
          "torch_mode": best, "episodes_per_s_median": rates[best],
          **{f"{m}_episodes_per_s": r for m, r in rates.items()}, **extra}


def test_a_torch_mode_far_slower_at_fewer_episodes_is_not_run_at_more():
  from benchmarks.train import SLOWER_RATIO, modes_to_skip
  rows = [torch_row("mini", 4, "loop", {"loop": 6.3, "vmap": 1.0}),
          torch_row("mini", 1, "loop", {"loop": 6.7}),
          torch_row("omni", 4, "vmap", {"loop": 28.3, "vmap": 33.0}),
          torch_row("omni", 64, "loop", {"loop": 26.5, "vmap": 11.9}),
          {**torch_row("mini", 8, "loop", {"loop": 6.3, "vmap": 1.0}), "framework": "jax"}]
  skip = modes_to_skip(rows, "mini", 16)          # the nearest smaller torch row is 4 per step's
  assert list(skip) == ["vmap"] and "1.0" in skip["vmap"] and "at 4 per step" in skip["vmap"]
  assert modes_to_skip(rows, "mini", 4) == {} and modes_to_skip(rows, "mini", 2) == {}
  assert modes_to_skip(rows, "omni", 16) == {}    # vmap was the faster one at 4
  assert modes_to_skip(rows, "other", 16) == {}
  close = [torch_row("omni", 4, "loop", {"loop": 10.0, "vmap": 10.0 / SLOWER_RATIO * 1.01})]
  assert modes_to_skip(close, "omni", 16) == {}   # slower, but not SLOWER_RATIO times
  # A mode left out at 16 per step stays out at 64, for the same reason.
  rows.append(torch_row("mini", 16, "loop", {"loop": 7.8}, torch_modes_not_run=skip))
  assert modes_to_skip(rows, "mini", 64) == skip


def test_a_measurement_runs_only_the_torch_modes_not_skipped(tmp_path):
  item = {"kind": "train", "framework": "torch", "config": "omniglot_1shot_v1", "episodes": 2,
          "skip_modes": {"vmap": "0.1 against loop's 30.0 episodes/s at 1 per step"}}
  row = run.run_in_subprocess(item, repeats=2, seconds=0.05, timeout=120)
  assert row["torch_mode"] == "loop" and "vmap_episodes_per_s" not in row and row["loop_episodes_per_s"] > 0
  assert row["torch_modes_not_run"] == item["skip_modes"] and row["torch_slower_mode_timed_by"] == "not run"
  jax_row = {**row, "framework": "jax", "torch_mode": None}
  assert "; loop; " in run.comparison_table([jax_row, row]) and "/ not run |" in run.comparison_table([jax_row, row])


def test_a_failed_measurement_becomes_a_row_with_its_error():
  item = {"kind": "train", "framework": "jax", "config": "no_such_config", "episodes": 1}
  row = run.run_in_subprocess(item, repeats=5, seconds=0.1, timeout=120)
  assert row["error"] and row["episodes_per_s_median"] is None and set(common.ROW_KEYS) <= set(row)
  table = run.comparison_table([row])
  assert "no_such_config" in table and "not run" in table


def test_profile_ops_are_attributed_to_the_model_part_that_made_them():
  from benchmarks.profile_step import op_scopes
  hlo = "\n".join([
      '  %fusion.1 = f32[2]{0} fusion(%p), metadata={op_name="jit(train_step)/jvp(vmap(cnn_query))/conv/dot_general" stack_frame_id=1}',
      '  ROOT %dot.2 = f32[2]{0} dot(%a, %b), metadata={op_name="jit(train_step)/transpose(jvp(vmap(generator)))/transformer/dot_general"}',
      '  %add.3 = f32[2]{0} add(%a, %b), metadata={op_name="jit(train_step)/add"}',
      '  %transpose_copy_fusion.4 = f32[2]{0} fusion(%a), kind=kLoop, calls=%fused_computation.4',
      '  %pad.5 = f32[2]{0} pad(%a, %b), metadata={op_name="jit(train_step)/jvp(vmap(cnn_query))/conv_max_pool/jit(_pad)/pad"}',
      '  %max.6 = f32[2]{0} maximum(%a, %b), metadata={op_name="jit(train_step)/transpose(jvp(vmap(cnn_support)))/jit(relu)/max"}',
      # an episode group's nested jit, inlined (parallel.vmap_in_groups), with and without the prefix
      '  %mul.7 = f32[2]{0} multiply(%a, %b), metadata={op_name="jit(train_step)/transpose(jvp(jit(one)))/vmap(generator)/transformer/mul"}',
      '  %sum.8 = f32[2]{0} reduce(%a, %b), metadata={op_name="vmap(generator)/local_features/reduce_sum"}'])
  assert op_scopes(hlo) == {"fusion.1": "cnn_query/conv (forward)", "dot.2": "generator/transformer (backward)",
                            "add.3": "other (forward)",
                            "transpose_copy_fusion.4": "XLA-inserted copies (no model scope)",
                            "pad.5": "cnn_query/conv_max_pool (forward)", "max.6": "cnn_support (backward)",
                            "mul.7": "generator/transformer (backward)", "sum.8": "generator/local_features (forward)"}


def test_cores_summary_takes_medians_and_per_round_ratios():
  from benchmarks.cores import summarise
  rounds = [{"one core": 50.0, "pinned processes": 90.0, "one free process": 60.0},
            {"one core": 40.0, "pinned processes": 100.0, "one free process": 80.0},
            {"one core": 60.0, "pinned processes": 120.0, "one free process": 90.0}]
  out = summarise(rounds)
  assert out["one core"] == {"median": 50.0, "min": 40.0, "max": 60.0}
  assert out["pinned processes"]["median"] == 100.0
  # Ratios are taken per round, then their median: 1.5, 1.25, 1.333 -> 1.333 (a ratio of the
  # medians, 100 / 80, would be 1.25).
  assert out["pinned_over_free"] == pytest.approx(120.0 / 90.0)
  assert out["free_over_one_core"] == pytest.approx(1.5)   # 1.2, 2.0, 1.5


def test_cores_benchmark_times_pinned_and_free_workers():
  """End to end on the tiny model: workers start on the right cores, report rates, exit."""
  import os
  if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("needs two cores")
  from benchmarks import cores
  result = cores.measure("quickstart:tiny", episodes=2, rounds=2, seconds=0.1)
  cpus = sorted(os.sched_getaffinity(0))
  assert result["worker_cores"] == [[c] for c in cpus] + [cpus]   # one per core, then one on all
  assert result["cores"] == len(cpus) and len(result["rounds"]) == 2
  for r in result["rounds"]:
    assert all(rate > 0 for rate in r.values())
  assert "pinned processes at once" in cores.table(result)


def test_measurements_compile_two_at_a_time_but_are_timed_one_after_the_other():
  items = [{"kind": "train", "framework": "jax", "config": "quickstart:tiny", "episodes": e} for e in (1, 2, 3)]
  rows = run.run_compiling_together(items, repeats=2, seconds=0.05, timeout=300, slots=2)
  assert [r["episodes_per_step"] for r in rows] == [1, 2, 3] and not any(r.get("error") for r in rows)
  assert all(a["turn_ended"] <= b["turn_started"] for a, b in zip(rows, rows[1:]))   # each timed after the last ended
  assert rows[0]["compiled_alongside"] == [run.item_key(items[1]), run.item_key(items[2])]
  assert all(r["compile_s"] > 0 and r["episodes_per_s_median"] > 0 for r in rows)
  # Two slots: the first two start together, the third only once one of them has compiled.
  compiled_by = [r["process_started"] + r["compile_s"] for r in rows]
  assert rows[1]["process_started"] < compiled_by[0]
  assert rows[2]["process_started"] >= min(compiled_by[:2])


def test_an_input_pipeline_measurement_waits_for_its_turn_before_its_timed_loop(tmp_path, monkeypatch):
  import threading
  from benchmarks import input_pipeline
  ready, go = tmp_path / "ready", tmp_path / "go"
  monkeypatch.setenv(common.TURN_ENV, f"{ready}{os.pathsep}{go}")
  result = {}
  worker = threading.Thread(target=lambda: result.update(input_pipeline.measure("quickstart:tiny", 2, steps=3)))
  worker.start()
  deadline = time.perf_counter() + 240
  while not ready.exists() and worker.is_alive() and time.perf_counter() < deadline:
    time.sleep(0.05)
  assert ready.exists(), "it never said it had compiled"
  time.sleep(0.5)
  assert worker.is_alive() and not result          # compiled, and holding its loop until its turn
  go.touch()
  worker.join(240)
  assert result["compile_s"] > 0 and 0 <= result["data_wait_fraction"] < 1 and result["episodes_per_s_median"] > 0


def test_input_pipeline_measurements_compile_beside_each_other_and_are_timed_one_after_the_other():
  items = [{"kind": "input_pipeline", "framework": "jax", "config": "quickstart:tiny", "episodes": 2},
           {"kind": "train", "framework": "jax", "config": "quickstart:tiny", "episodes": 1}]
  rows = run.run_compiling_together(items, repeats=2, seconds=0.05, timeout=300, slots=2)
  assert [r["benchmark"] for r in rows] == ["input_pipeline", "train"] and not any(r.get("error") for r in rows)
  assert rows[0]["turn_ended"] <= rows[1]["turn_started"]
  assert rows[1]["process_started"] - rows[0]["process_started"] < 1.0   # two slots: both started at once


class _FakeCompile:
  """run.Measurement's interface: 'compiles' for item["compile_s"] seconds after it starts."""

  def __init__(self, item, repeats, seconds, timeout, env=None):
    self.item, self.started = item, time.perf_counter()
    self.process_started = self.started

  def compiled(self, ready_file):
    return time.perf_counter() - self.process_started >= self.item["compile_s"]

  def row(self):
    return {"episodes_per_step": self.item["episodes"], "started": self.process_started}


def test_a_slot_idle_during_the_first_items_compile_takes_fillers_until_it_has_compiled(monkeypatch):
  monkeypatch.setattr(run, "Measurement", _FakeCompile)
  item = lambda episodes, compile_s: {"kind": "train", "framework": "jax", "config": "c", "episodes": episodes,
                                      "compile_s": compile_s}
  lead, short = item(16, 1.0), item(4, 0.1)
  fillers = [item(100 + n, 0.25) for n in range(8)]
  rows = run.run_compiling_together([lead, short], repeats=1, seconds=0.1, timeout=60, fillers=fillers)
  ran = [r["episodes_per_step"] for r in rows]
  # The lead compiles for 1 s; the other slot compiles the short item, then fillers one at a time
  # (0.25 s each) while the lead is still compiling: about three; none once it has compiled.
  assert ran[:2] == [16, 4] and ran[2:] == [100 + n for n in range(len(ran) - 2)] and 2 <= len(ran) - 2 <= 4
  assert all(r["started"] - rows[0]["started"] < 1.0 for r in rows[2:])
  assert rows[0]["compiled_alongside"][-1] == run.item_key(fillers[len(ran) - 3])
  # Without the memory for another waiting process, no filler starts.
  monkeypatch.setattr(run, "available_memory_gb", lambda: run.FILLER_MEMORY_GB - 1)
  assert len(run.run_compiling_together([lead, short], repeats=1, seconds=0.1, timeout=60, fillers=fillers)) == 2


def test_the_run_measures_each_item_once_and_a_lone_leftover_filler_with_the_input_pipeline(tmp_path, monkeypatch):
  """benchmarks.run's schedule, with fake measurements: one of the last pair runs as a filler in
  the shadow group, the other compiles with the input pipeline's group at the end; each JAX group
  is followed by its torch twins."""
  batches = []

  def fake_together(batch, repeats, seconds, timeout, env=None, slots=run.COMPILE_SLOTS, fillers=()):
    ran = list(batch) + list(fillers)[:1]
    batches.append([run.item_key(i) for i in ran])
    return [run.failed(i, "fake") for i in ran]

  def fake_alone(item, repeats, seconds, timeout, env=None):
    batches.append([run.item_key(item)])
    return run.failed(item, "fake")

  monkeypatch.setattr(run, "run_compiling_together", fake_together)
  monkeypatch.setattr(run, "run_in_subprocess", fake_alone)
  monkeypatch.setattr(run, "head_to_head", lambda *a, **k: {"error": "fake"})
  monkeypatch.setattr(run, "available_memory_gb", lambda: 64.0)
  monkeypatch.setattr(run.common, "RESULTS", tmp_path)
  monkeypatch.setattr(sys, "argv", ["benchmarks.run"])
  run.main()
  keys = [k for b in batches for k in b]
  assert sorted(keys) == sorted(run.item_key(i) for i in run.plan(quick=False))   # each once
  assert len(batches[0]) == 9                                                         # 8 + one filler
  filler, leftover = batches[0][-1], "train jax omniglot_1shot_v1 1"
  assert filler == "train jax omniglot_5shot_v1 1" and leftover not in batches[0]
  assert batches[-2][0] == leftover and all(k.startswith("input_pipeline") for k in batches[-2][1:])
  assert batches[-1] == ["train torch omniglot_1shot_v1 1"]                           # its twin after it
  saved = json.loads((tmp_path / "latest.json").read_text())
  assert len(saved["rows"]) == len(keys) and saved["head_to_head"] == {"error": "fake"}
  assert saved["host"] == common.host()                                              # the machine it ran on


def test_a_pair_member_that_fails_does_not_stop_the_other():
  items = [{"kind": "train", "framework": "jax", "config": "no_such_config", "episodes": 1},
           {"kind": "train", "framework": "jax", "config": "quickstart:tiny", "episodes": 1}]
  failed, measured = run.run_compiling_together(items, repeats=2, seconds=0.05, timeout=300)
  assert "no_such_config" in failed["error"] and measured["episodes_per_s_median"] > 0


def test_compile_groups_cover_every_jax_program_with_the_longest_compile_shadowed():
  for full in (False, True):
    plan = run.plan(quick=False, full=full)
    groups = run.compile_groups(plan, memory_gb=64)
    jobs = [i for group in groups for i in group]
    assert sorted(map(run.item_key, jobs)) == sorted(run.item_key(i) for i in plan
                                                    if i["framework"] == "jax" and i["kind"] != "input_pipeline")
    lead = groups[1 if full else 0]
    assert (lead[0]["config"], lead[0]["kind"], lead[0]["episodes"]) == ("miniimagenet_1shot_v1", "train", 16)
    # miniImageNet's other programs, Omniglot's at 4 per step and the evaluations compile in its shadow; the rest in pairs.
    assert {(i["config"][:4], i["episodes"]) for i in lead[1:] if i["kind"] == "train"} == {
        ("mini", 4), ("mini", 1), ("omni", 4)}
    assert sorted(i["config"] for i in lead[1:] if i["kind"] == "evaluation") == sorted(run.common.CONFIGS)
    assert all(len(g) == 2 for g in groups[(2 if full else 1):])
    # The last pair, the shortest compiles, is the one benchmarks.run offers the shadow as fillers.
    assert {(i["kind"], i["episodes"]) for i in groups[-1]} == {("train", 1)}
  assert [len(g) for g in run.compile_groups(run.plan(quick=True), memory_gb=64)] == [2, 1]   # no miniImageNet: pairs
  # Too little memory for the shadow's waiting processes: pairs, longest compiles together.
  pairs = run.compile_groups(run.plan(quick=False), memory_gb=run.SHADOW_MEMORY_GB - 1)
  assert all(len(p) == 2 for p in pairs)
  assert [(i["config"][:4], i["kind"], i["episodes"]) for i in pairs[0]] == [("mini", "train", 16), ("mini", "train", 4)]
  assert 0 < run.available_memory_gb() < 1e5


def test_head_to_head_summary_takes_the_median_of_per_round_ratios():
  from benchmarks.head_to_head import summarise
  rounds = [{"first": "jax", "jax": 100.0, "torch": 50.0}, {"first": "torch", "jax": 90.0, "torch": 60.0},
            {"first": "jax", "jax": 140.0, "torch": 80.0}]
  out = summarise(rounds)
  assert out["jax"] == {"median": 100.0, "min": 90.0, "max": 140.0}
  assert out["torch"]["median"] == 60.0
  # Per-round ratios 2.0, 1.5, 1.75 -> 1.75; the ratio of the medians, 100 / 60, would be 1.67.
  assert out["jax_over_torch"] == {"median": pytest.approx(1.75), "min": pytest.approx(1.5), "max": pytest.approx(2.0)}


def test_scaling_summary_takes_the_median_of_per_round_ratios():
  from benchmarks.scaling import summarise
  rounds = [{"first": "1", "1": 10.0, "4": 30.0}, {"first": "4", "1": 20.0, "4": 30.0},
            {"first": "1", "1": 30.0, "4": 90.0}]
  out = summarise(rounds, ["1", "4"])
  assert out["episodes_per_s"]["4"] == {"median": 30.0, "min": 30.0, "max": 90.0}
  # Per-round ratios 3.0, 1.5, 3.0 -> 3.0; the ratio of the medians, 30 / 20, would be 1.5.
  assert out["over_first"]["4"] == {"median": 3.0, "min": 1.5, "max": 3.0}
  assert out["over_first"]["1"] == {"median": 1.0, "min": 1.0, "max": 1.0}


def test_timed_in_turns_sizes_each_block_and_reverses_the_order():
  from benchmarks.cores import Worker, timed_in_turns

  class FakeWorker:
    """Runs `steps` steps of `episodes` at a fixed episodes/s; the log records every block."""
    steps_per_block = Worker.steps_per_block           # the real sizing, on the fake's blocks
    def __init__(self, name, rate, log):
      self.name, self.fixed_rate, self.log = name, rate, log
    def start(self, steps):
      self.log.append((self.name, steps))
    def rate(self):
      return self.fixed_rate

  log = []
  workers = {"a": FakeWorker("a", 100.0, log), "b": FakeWorker("b", 40.0, log)}
  steps, rounds = timed_in_turns(workers, {"a": 4, "b": 16}, ["b", "a"], rounds=3, seconds=2.0)
  # About 2 s a block: a 100 episodes/s at 4 per step -> 50 steps; b 40 at 16 -> 5.
  assert steps == {"a": 50, "b": 5}
  assert log == [("a", 2), ("b", 2),                                    # the sizing blocks
                 ("b", 5), ("a", 50), ("a", 50), ("b", 5), ("b", 5), ("a", 50)]
  assert [r["first"] for r in rounds] == ["b", "a", "b"] and rounds[0] == {"first": "b", "a": 100.0, "b": 40.0}


def test_scaling_times_every_setting_in_turns():
  """End to end on the tiny model: a warm worker per setting, the order reversed every round."""
  from benchmarks import scaling
  cpu = {**os.environ, "JAX_PLATFORMS": "cpu"}   # this test's process may hold a GPU's memory
  result = scaling.measure("quickstart:tiny", [1, 2], rounds=3, seconds=0.1, env=cpu)
  assert [r["first"] for r in result["rounds"]] == ["1", "2", "1"]
  assert all(r["1"] > 0 and r["2"] > 0 for r in result["rounds"])
  ratios = sorted(r["2"] / r["1"] for r in result["rounds"])
  assert result["over_first"]["2"]["median"] == pytest.approx(ratios[1])
  # The table reads the result back from its JSON as well.
  assert "| 2 |" in scaling.table(json.loads(json.dumps(result))) and set(result["steps_per_block"]) == {"1", "2"}


def test_scaling_rejects_a_bad_episodes_list():
  import argparse
  from benchmarks.scaling import episode_settings
  assert episode_settings("1,4,16") == [1, 4, 16]
  for text in ("4,4", "0,2", "four", ""):
    with pytest.raises(argparse.ArgumentTypeError, match="distinct whole numbers"):
      episode_settings(text)


def test_head_to_head_times_both_frameworks_in_turns():
  """End to end on the tiny model: both workers report rates, the order flips every round."""
  import os
  from benchmarks import head_to_head
  cpu = {**os.environ, "JAX_PLATFORMS": "cpu"}   # this test's process may hold a GPU's memory
  result = head_to_head.measure("quickstart:tiny", episodes=2, rounds=3, seconds=0.1, env=cpu)
  assert [r["first"] for r in result["rounds"]] == ["jax", "torch", "jax"]
  assert result["torch_mode"] in {"loop", "vmap"} and all(s > 0 for s in result["compile_s"].values())
  for r in result["rounds"]:
    assert r["jax"] > 0 and r["torch"] > 0
  ratios = sorted(r["jax"] / r["torch"] for r in result["rounds"])
  assert result["jax_over_torch"]["median"] == pytest.approx(ratios[1])
  assert f"ht_torch ({result['torch_mode']})" in head_to_head.table(result)


def test_a_failed_head_to_head_becomes_its_error_and_keeps_the_run():
  from benchmarks import run
  result = run.head_to_head(config_spec="no_such_config", rounds=1, seconds=0.1)
  assert result["config"] == "no_such_config" and result["episodes_per_step"] == 16
  assert "exited with status" in result["error"] and "benchmarks.head_to_head --worker" in result["error"]


def _train_row(config, framework, b, median, **extra):
  return {"benchmark": "train", "config": config, "framework": framework, "episodes_per_step": b,
          "episodes_per_s_median": median, "episodes_per_s_min": median - 1, "episodes_per_s_max": median + 2, **extra}


def test_the_throughput_plot_draws_each_framework_per_config(tmp_path):
  from benchmarks.plot import plot
  rows = [_train_row("a", "jax", 1, 10.0), _train_row("a", "jax", 16, 30.0),
          _train_row("a", "torch", 1, 5.0, torch_mode="loop", loop_episodes_per_s=5.0, vmap_episodes_per_s=3.0),
          _train_row("a", "torch", 16, 12.0, torch_mode="vmap", loop_episodes_per_s=4.0, vmap_episodes_per_s=12.0),
          _train_row("b", "jax", 4, 7.0),
          {**_train_row("b", "torch", 4, 0.0), "episodes_per_s_median": None, "error": "killed"}]
  versus = {"config": "a", "episodes_per_step": 16, "jax_over_torch": {"median": 2.5}}
  axes = plot({"rows": rows, "head_to_head": versus}, tmp_path / "t.png")
  assert (tmp_path / "t.png").stat().st_size > 0 and len(axes) == 2
  lines = {l.get_label(): (list(l.get_xdata()), list(l.get_ydata())) for l in axes[0].get_lines()
           if not l.get_label().startswith("_")}
  # The other mode where it lost its block: vmap at 1, loop at 16.
  assert lines["ht_torch, loop (other mode: one block)"] == ([16], [4.0]) and lines["ht_torch, vmap (other mode: one block)"] == ([1], [3.0])
  assert "2.50x" in axes[0].get_title() and "head to head" not in axes[1].get_title()
  # Error bars span each row's min-max; the failed torch row is left out of panel b.
  containers = {c.get_label(): c for c in axes[0].containers}
  jax_line = containers["ht_jax"].lines[0]
  assert list(jax_line.get_xdata()) == [1, 16] and list(jax_line.get_ydata()) == [10.0, 30.0]
  assert [c.get_label() for c in axes[1].containers] == ["ht_jax"]
  # Each legend sits below its panel, clear of the data.
  for ax in axes:
    assert ax.get_legend().get_window_extent().y1 < ax.get_window_extent().y0


def test_a_head_to_head_past_its_timeout_stops_its_workers():
  import os
  from benchmarks import head_to_head
  started = time.perf_counter()
  with pytest.raises(RuntimeError, match="took over 1 s"):   # the workers need longer than that to start
    head_to_head.measure("quickstart:tiny", episodes=2, rounds=1, seconds=0.1,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=1.0)
  assert time.perf_counter() - started < 30


def test_a_dead_worker_is_reported_when_it_is_next_given_steps():
  import os
  from benchmarks.cores import Worker
  worker = Worker(set(os.sched_getaffinity(0)), "no_such_config", 1)
  with pytest.raises(RuntimeError, match="before its first step"):
    worker.wait_ready()
  with pytest.raises(RuntimeError, match="between blocks"):   # a broken pipe, said as such
    worker.start(1)
  worker.close()


def test_the_worker_mode_line_is_found_among_other_output():
  from benchmarks.head_to_head import mode_line
  assert mode_line(["some warning", "mode vmap 0.61", "another line"]) == ("vmap", 0.61)
  with pytest.raises(RuntimeError, match="did not say its mode"):
    mode_line(["some warning"])


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: AMD EPYC
cache size\t: 1024 KB

processor\t: 1
cpu family\t: 25
model\t\t: 17
model name\t: another CPU
"""


def test_the_host_is_read_from_the_first_processor_of_cpuinfo():
  assert common.parse_cpuinfo(CPUINFO) == {"cpu_family": "26", "cpu_model": "2", "cpu": "AMD EPYC",
                                           "cache_per_core": "1024 KB"}
  machine = {**common.parse_cpuinfo(CPUINFO), "machine": "x86_64", "cores": 2}
  assert common.host_line(machine) == "AMD EPYC (x86_64, CPU family 26, model 2, 1024 KB cache per core), 2 cores"
  assert common.host_line({"cpu": "arm", "cores": 4}) == "arm, 4 cores"     # nothing more known


def test_the_host_names_this_machine():
  machine = common.host()
  assert machine["cores"] == len(os.sched_getaffinity(0)) and machine["cpu"] and machine["machine"]


def test_every_saved_result_and_its_plot_name_the_host(tmp_path, monkeypatch):
  monkeypatch.setattr(common, "RESULTS", tmp_path)
  monkeypatch.setattr(common, "host", lambda: {"cpu": "Some CPU", "machine": "x86_64", "cores": 3})
  saved = json.loads(common.save_result("scaling", {"rounds": []}).read_text())
  assert saved == {"rounds": [], "host": {"cpu": "Some CPU", "machine": "x86_64", "cores": 3}}
  from benchmarks.plot import plot
  axes = plot({"rows": [_train_row("a", "jax", 1, 10.0)], "host": saved["host"]}, tmp_path / "t.png")
  assert axes[0].figure.get_suptitle() == "Some CPU (x86_64), 3 cores"
