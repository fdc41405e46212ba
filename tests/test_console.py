"""selfilter.console: a stage's own bars stay, third-party bars and INFO chatter go."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import io, logging
    from selfilter import console
    console.setup()
    from tqdm.auto import tqdm
    out = io.StringIO()
    # a bar created by third-party code (module name not ours): disabled
    ns = {"__name__": "lmms_eval.models.fake", "tqdm": tqdm, "out": out}
    exec("bar = tqdm(range(3), desc='Model Responding', file=out)\\nfor _ in bar: pass", ns)
    # a bar created by this project's code: kept
    ns2 = {"__name__": "stages.fake", "tqdm": tqdm, "out": out}
    exec("bar = tqdm(range(3), desc='finetune', file=out)\\nfor _ in bar: pass", ns2)
    # a log file (not a terminal): a redraw per mininterval, even when the postfix changes each step
    log = io.StringIO()
    ns3 = {"__name__": "selfilter.fake", "tqdm": tqdm, "out": log}
    exec("bar = tqdm(total=500, desc='clip', file=out)\\nfor i in range(500):\\n    bar.set_postfix(loss=i)\\n    bar.update()\\nbar.close()", ns3)
    print("redraws", log.getvalue().count("clip:"))
    text = out.getvalue()
    print("third" if "Model Responding" in text else "no-third")
    print("own" if "finetune" in text else "no-own")
    logging.getLogger("transformers.modeling_utils").info("Loading weights chatter")
    logging.getLogger("transformers.modeling_utils").warning("a real warning")
    logging.getLogger("finetune").info("run done")
''')


def _run(env_extra):
    import os
    env = {**os.environ, **env_extra}
    env.pop("SELFILTER_VERBOSE", None) if "SELFILTER_VERBOSE" not in env_extra else None
    return subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, check=True)


def test_third_party_bars_and_info_are_off_warnings_and_own_output_stay():
    p = _run({})
    words = p.stdout.split()
    assert words[:2] == ["redraws"] + words[1:2] and int(words[1]) <= 3 and words[2:] == ["no-third", "own"]
    assert "Loading weights chatter" not in p.stderr
    assert "a real warning" in p.stderr and "finetune: run done" in p.stderr


def test_verbose_switch_keeps_everything():
    p = _run({"SELFILTER_VERBOSE": "1"})
    words = p.stdout.split()
    assert int(words[1]) > 100 and words[2:] == ["third", "own"]
