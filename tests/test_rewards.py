"""rlsd.rewards: verifiers, the never-raise wrapper, custom rewards, spec parsing and the code sandbox.

The sandbox tests run real infinite loops, fork bombs and memory bombs, always
under small limits (8 processes, 256-512 MiB, 1.5-5 s) set before the code runs.
"""

from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import time
import uuid

import pytest

from rlsd.rewards import (
    REWARDS,
    RewardError,
    RobustReward,
    SandboxLimits,
    combine_rewards,
    get_reward,
    get_rewards,
    load_reward,
    pop_reward_errors,
    robust,
    run_python_tests,
)
from rlsd.rewards.sandbox import split_tests


def score(name: str, completion, answer, **options) -> float | None:
    return get_reward(name, **options)(prompts=["p"], completions=[completion], answer=[answer])[0]


# --------------------------------------------------------------------------------------------- math
MATH_EQUAL = [
    ("1/2", "The answer is $\\frac{1}{2}$."),
    ("\\frac12", "so we get \\boxed{0.5}"),
    ("42", "Thus the answer is 42."),
    ("3", "The final answer is \\boxed{3}"),
    ("10", "The length is $10\\text{ cm}$."),
    ("10", "\\boxed{10 \\text{ meters}}"),
    ("\\sqrt{2}", "\\boxed{2^{1/2}}"),
    ("x+1", "\\boxed{1+x}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("[0,1)", "\\boxed{[0,1)}"),
    ("\\{1,2\\}", "\\boxed{\\{2,1\\}}"),
    ("0.5", "\\boxed{50\\%}"),
    ("1,000", "\\boxed{1000}"),
    ("1e3", "\\boxed{1000}"),
    ("\\pi", "\\boxed{\\pi}"),
    ("2\\sqrt{3}", "\\boxed{\\sqrt{12}}"),
    ("\\dfrac{1}{3}", "\\boxed{0.333333}"),
    ("-1", "\\boxed{-1}"),
    ("90^\\circ", "\\boxed{90}"),
    ("7", "<think>maybe 5</think><answer>7</answer>"),
    ("x=2", "\\boxed{2}"),
    ("12", "Answer: 12"),
]
MATH_DIFFERENT = [
    ("2", "x = \\boxed{3}"),
    ("5", "first I got 5, then \\boxed{1}"),
    ("1/3", "\\boxed{0.33}"),
    ("3.14", "\\boxed{\\pi}"),
    ("2", "\\boxed{-2}"),
    ("0.5", "\\boxed{\\frac{1}{3}}"),
    ("7", "<think>the answer is 7</think> I give up"),
    ("4", "no number at all"),
    ("x+1", "\\boxed{x-1}"),
    ("\\{1,2\\}", "\\boxed{\\{1,3\\}}"),
]


@pytest.mark.parametrize("answer,completion", MATH_EQUAL)
def test_math_accepts_equivalent_answers(answer, completion):
    assert score("math", completion, answer) == 1.0


@pytest.mark.parametrize("answer,completion", MATH_DIFFERENT)
def test_math_rejects_different_answers(answer, completion):
    assert score("math", completion, answer) == 0.0


def test_math_takes_chat_completions_and_numeric_answers():
    reward = get_reward("math")
    chat = [[{"role": "assistant", "content": "It is \\boxed{4}."}], [{"role": "assistant", "content": "5"}]]
    assert reward(prompts=["a", "b"], completions=chat, answer=[4, "4"]) == [1.0, 0.0]
    assert reward(prompts=["a"], completions=["\\boxed{4}"], answer=[None]) == [None]  # row without an answer


# ----------------------------------------------------------------------------------- other verifiers
@pytest.mark.parametrize(
    "completion,answer,expected,options",
    [
        ("The answer is 3.14159", "3.1416", 1.0, {}),
        ("The answer is 3.2", "3.1416", 0.0, {}),
        ("The answer is 3.2", "3.1416", 1.0, {"rel_tol": 0.05}),
        ("Total: 1,234,567 dollars. Answer: 1,234,567", "1234567", 1.0, {}),
        ("\\boxed{\\frac{3}{4}}", "0.75", 1.0, {}),
        ("it is 3/4", "0.75", 1.0, {}),
        ("Answer: 12%", "0.12", 1.0, {}),
        ("first 5 then finally 7", "7", 1.0, {}),
        ("Answer: 7, not 5", "5", 0.0, {}),
        ("nothing", "1", 0.0, {}),
        ("Answer: 1e-3", "0.001", 1.0, {}),
        ("Answer: 0.00000001", "0", 1.0, {"abs_tol": 1e-6}),
    ],
)
def test_numeric(completion, answer, expected, options):
    assert score("numeric", completion, answer, **options) == expected


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("Answer: Paris.", "paris", 1.0),
        ("<answer>  New   York </answer>", "new york", 1.0),
        ("\\boxed{\\text{Paris}}", "Paris", 1.0),
        ("I think...\n**Paris**", "Paris", 1.0),
        ("Answer: Lyon", "Paris", 0.0),
        ("Paris is nice but Answer: Rome", "Paris", 0.0),
    ],
)
def test_exact(completion, answer, expected):
    assert score("exact", completion, answer) == expected


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("The answer is (B).", "B", 1.0),
        ("A careful reading shows... Answer: C", "C", 1.0),
        ("\\boxed{D}", "(D)", 1.0),
        ("<answer>b</answer>", "B", 1.0),
        ("Looking at the options, I choose option A", "A", 1.0),
        ("After thinking:\nB", "B", 1.0),
        ("A good question. The answer is C.", "A", 0.0),
        ("I don't know", "A", 0.0),
        ("The answer is E", "E", 1.0),  # with letters="ABCDE"
    ],
)
def test_choice(completion, answer, expected):
    options = {"letters": "ABCDE"} if answer == "E" else {}
    assert score("choice", completion, answer, **options) == expected


def test_regex_group_and_plain_match():
    assert score("regex", "Result: 42 apples", "42", pattern=r"Result: (\d+)") == 1.0
    assert score("regex", "Result: 41 apples", "42", pattern=r"Result: (\d+)") == 0.0
    assert score("regex", "RESULT: 42", "42", pattern=r"result: (?P<answer>\d+)", flags="i") == 1.0
    assert score("regex", "QED.", "anything", pattern=r"QED\.$") == 1.0
    assert score("regex", "Done", "anything", pattern=r"QED") == 0.0
    with pytest.raises(RewardError, match="unknown regex flag"):
        get_reward("regex", pattern="x", flags="q")


def test_format():
    fmt = get_reward("format")
    texts = ["<answer>3</answer>", "so \\boxed{3}", "Answer: 3", "just 3", "<think>x</think>"]
    assert fmt(prompts=[""] * 5, completions=texts) == [1.0, 1.0, 1.0, 0.0, 0.0]
    strict = get_reward("format", require_think=True)
    assert strict(prompts=["", ""], completions=["<think>hm</think> Answer: 3", "Answer: 3"]) == [1.0, 0.0]


# ----------------------------------------------------------------------------------- robust wrapper
def flaky(prompts, completions, answer, **kwargs):
    """Raises on the sample whose answer is 'boom'."""
    out = []
    for c, a in zip(completions, answer):
        if a == "boom":
            raise ZeroDivisionError("boom on purpose")
        out.append(1.0 if c == a else 0.5)
    return out


def test_one_failing_sample_gets_zero_and_the_others_keep_their_values(caplog):
    pop_reward_errors()
    reward = robust(flaky)
    with caplog.at_level(logging.WARNING, logger="rlsd.rewards"):
        out = reward(prompts=["p"] * 3, completions=["x", "y", "z"], answer=["x", "boom", "q"], trainer_state=object())
    assert out == [1.0, 0.0, 0.5]
    assert reward.error_count == 1 and pop_reward_errors() == 1 and pop_reward_errors() == 0
    assert reward.__name__ == "flaky"
    assert "reward 'flaky' failed" in caplog.text and "ZeroDivisionError: boom on purpose" in caplog.text


def test_bad_values_and_wrong_lengths_never_raise():
    pop_reward_errors()
    weird = robust(lambda prompts, completions, **kw: [float("nan"), "x", None, 2], name="weird")
    assert weird(prompts=[1, 2, 3, 4], completions=[1, 2, 3, 4]) == [0.0, 0.0, None, 2.0]
    short = robust(lambda prompts, completions, **kw: [1.0], name="short")  # right only for one sample
    assert short(prompts=[1, 2], completions=[1, 2]) == [1.0, 1.0]
    assert pop_reward_errors() == 2


def test_error_logging_is_rate_limited(caplog):
    reward = robust(lambda prompts, completions, **kw: 1 / 0, name="always_fails")
    with caplog.at_level(logging.WARNING, logger="rlsd.rewards"):
        reward(prompts=["p"] * 50, completions=["c"] * 50)
    assert reward.error_count == 50
    assert 1 <= caplog.text.count("always_fails") <= 6
    pop_reward_errors()


def test_timeout_per_sample(tmp_path):
    import threading

    release = threading.Event()  # the hung sample waits here until the test is done: it never finishes on its own

    def slow(prompts, completions, **kwargs):
        if completions[0] == "hang":
            release.wait(600)
        return [1.0] * len(completions)

    reward = robust(slow, timeout=0.3)
    try:
        # Returns at all (instead of waiting for the hang) only because the hung sample was abandoned.
        assert reward(prompts=["p"] * 3, completions=["a", "hang", "b"]) == [1.0, 0.0, 1.0]
        assert not release.is_set()
    finally:
        release.set()
    assert reward.error_count == 1
    pop_reward_errors()


# ---------------------------------------------------------------------------------- custom and specs
CUSTOM = '''
def length_bonus(prompts, completions, answer=None, scale=1.0, **kwargs):
    return [scale * min(len(c), 10) / 10 for c in completions]

def broken(prompts, completions, **kwargs):
    raise RuntimeError("custom failure")
'''


@pytest.fixture
def reward_file(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(CUSTOM)
    return path


def test_custom_reward_from_a_file_path(reward_file):
    reward = load_reward(f"{reward_file}:length_bonus")
    assert isinstance(reward, RobustReward) and reward.__name__ == "length_bonus"
    assert reward(prompts=["p", "p"], completions=["12345", "x" * 50], answer=["a", "b"]) == [0.5, 1.0]
    scaled = get_reward(f"{reward_file}:length_bonus", scale=2.0)
    assert scaled(prompts=["p"], completions=["12345"]) == [1.0]
    clone = pickle.loads(pickle.dumps(scaled))  # TRL's async workers pickle rewards
    assert clone(prompts=["p"], completions=["12345"]) == [1.0]
    assert load_reward(f"{reward_file}:broken")(prompts=["p"], completions=["c"]) == [0.0]
    pop_reward_errors()


def test_custom_reward_from_a_module(reward_file, monkeypatch):
    monkeypatch.syspath_prepend(str(reward_file.parent))
    assert load_reward("my_rewards:length_bonus")(prompts=["p"], completions=["1234567890"]) == [1.0]


def test_custom_reward_errors_are_clear(reward_file, tmp_path):
    with pytest.raises(RewardError, match="does not exist"):
        load_reward(f"{tmp_path}/missing.py:f")
    with pytest.raises(RewardError, match=r"has no function 'nope' \(it defines: broken, length_bonus\)"):
        load_reward(f"{reward_file}:nope")
    with pytest.raises(RewardError, match="cannot import module 'no_such_module_xyz'"):
        load_reward("no_such_module_xyz:f")
    with pytest.raises(RewardError, match="expected 'package.module:function'"):
        load_reward("just_a_name")


def test_get_rewards_parses_names_weights_files_and_dicts(reward_file):
    funcs, weights = get_rewards(
        ["math", "format:0.1", f"{reward_file}:length_bonus:0.5", {"name": "numeric", "rel_tol": 0.1, "weight": 2},
         "exact", "exact", (flaky, 3)]
    )  # fmt: skip
    assert [f.__name__ for f in funcs] == ["math", "format", "length_bonus", "numeric", "exact", "exact_2", "flaky"]
    assert weights == [1.0, 0.1, 0.5, 2.0, 1.0, 1.0, 3.0]
    assert funcs[3].fn.rel_tol == 0.1
    with pytest.raises(RewardError, match=r"unknown reward 'maths'; built-ins: math, numeric"):
        get_rewards(["maths"])
    with pytest.raises(RewardError, match=r"reward 'numeric' has no option 'tolerance'; options: rel_tol, abs_tol"):
        get_reward("numeric", tolerance=1)
    assert set(REWARDS) == {"math", "numeric", "exact", "choice", "regex", "format", "code"}


def test_combine_rewards_weights_and_skips_none():
    combo = combine_rewards([(get_reward("exact"), 1.0), (get_reward("format"), 0.5)], name="exact_plus_format")
    out = combo(prompts=["p", "p"], completions=["Answer: 3", "3"], answer=["3", "4"])
    assert combo.__name__ == "exact_plus_format" and out == [1.5, 0.0]
    none_for_all = combine_rewards([(lambda prompts, completions, **kw: [None] * len(completions), 1.0)])
    assert none_for_all(prompts=["p"], completions=["c"]) == [None]


# ------------------------------------------------------------------------------------- code sandbox
ADD = "```python\ndef add(a, b):\n    return a + b\n```"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0"
FAST = SandboxLimits(timeout_s=30, memory_mb=512, nproc=8)  # legit code: room for a loaded machine
IS_ROOT = os.geteuid() == 0
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")


def processes_of(uid: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/status") as fh:
                if any(ln.startswith("Uid:") and int(ln.split()[1]) == uid for ln in fh):
                    found.append(int(pid))
        except OSError:
            pass
    return found


def host_is_fine() -> None:
    """The pytest process can still start processes, and nothing of the sandbox's uid is left."""
    assert subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True, timeout=300).returncode == 0


def test_split_tests():
    assert split_tests("import math\nassert f(1) == 1\nx = 2\nassert f(x) == 2") == [
        ("import math", False), ("assert f(1) == 1", True), ("x = 2", False), ("assert f(x) == 2", True)
    ]  # fmt: skip
    assert split_tests(["assert a", "assert b"]) == [("assert a", True), ("assert b", True)]
    assert split_tests('["assert a"]') == [("assert a", True)]  # a list stored as JSON text (CSV)
    humaneval = "def check(f):\n    assert f(1) == 2\ncheck(g)"
    assert split_tests(humaneval) == [(humaneval, True)]
    with pytest.raises(ValueError, match="not valid Python"):
        split_tests("assert (")


@linux_only
def test_correct_solution_scores_one_and_half_correct_scores_half():
    code = get_reward("code", timeout_s=30)  # room for a loaded machine
    half = "```python\ndef add(a, b):\n    return a + b if a > 0 else 7\n```"
    tests = [ADD_TESTS, ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], None]
    out = code(prompts=["p"] * 3, completions=[ADD, [{"role": "assistant", "content": half}], ADD], tests=tests)
    assert out == [1.0, 0.5, None]  # a row without tests: the reward does not apply


@linux_only
def test_sandbox_runs_unprivileged_with_limits():
    probe = "import os, resource\n"
    probe += "LIMITS = [resource.getrlimit(getattr(resource, n)) for n in ('RLIMIT_NPROC', 'RLIMIT_AS')]"
    checks = [
        "assert LIMITS == [(8, 8), (512 << 20, 512 << 20)]",
        "assert os.getuid() != 0 and os.geteuid() != 0",
        "assert os.getcwd().startswith(os.environ['TMPDIR'])",
        "assert 'HOME' in os.environ and not any('TOKEN' in k for k in os.environ)",
    ]
    result = run_python_tests(probe, checks, FAST)
    assert result.status == "ok" and result.fraction == 1.0, result
    if IS_ROOT:
        assert result.network == "netns" and result.uid >= 1_900_000_000


@linux_only
def test_infinite_loop_times_out():
    start = time.monotonic()
    result = run_python_tests("while True:\n    pass", ADD_TESTS, SandboxLimits(timeout_s=1.5))
    assert result.fraction == 0.0 and result.status == "timeout"  # the sandbox's 1.5 s limit stopped it
    assert time.monotonic() - start < 300  # a safety net (the loop never ends by itself), not the assertion
    host_is_fine()


@linux_only
def test_fork_bomb_is_contained():
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    uid = 1_999_990_000 + os.getpid() % 1000
    limits = SandboxLimits(timeout_s=2, memory_mb=256, nproc=8, uid=uid if IS_ROOT else None)
    start = time.monotonic()
    result = run_python_tests(bomb, ADD_TESTS, limits)
    assert result.fraction == 0.0 and time.monotonic() - start < 300  # safety net: the bomb never ends itself
    host_is_fine()
    if IS_ROOT:
        assert processes_of(uid) == []


@linux_only
def test_memory_bomb_is_contained():
    bomb = "x = []\nwhile True:\n    x.append(bytearray(10**7))"
    result = run_python_tests(bomb, ADD_TESTS, SandboxLimits(memory_mb=256))
    assert result.fraction == 0.0 and result.status == "solution_error"
    host_is_fine()


# without the audit hook, only the kernel-level layers (root: network namespace, private /tmp) are left
HOOK_ON_AND_OFF = [True, pytest.param(False, marks=pytest.mark.skipif(not IS_ROOT, reason="needs root"))]


@linux_only
@pytest.mark.parametrize("audit_hook", HOOK_ON_AND_OFF)
def test_network_is_unreachable(audit_hook):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(0)
    port = server.getsockname()[1]
    code = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\ns.sendall(b'hi')"
    try:
        code += "\ndef add(a, b):\n    return a + b"
        result = run_python_tests(code, ADD_TESTS, SandboxLimits(audit_hook=audit_hook))
        assert result.fraction == 0.0 and result.status == "solution_error"
        with pytest.raises(BlockingIOError):
            server.accept()  # nobody connected
    finally:
        server.close()


@linux_only
@pytest.mark.parametrize("audit_hook", HOOK_ON_AND_OFF)
def test_writing_outside_the_sandbox_directory_has_no_effect(audit_hook):
    target = f"/tmp/rlsd_escape_{uuid.uuid4().hex}"
    code = f"open({target!r}, 'w').write('escaped')\n" + "def add(a, b):\n    return a + b"
    inside = "open('scratch.txt', 'w').write('fine')\nassert open('scratch.txt').read() == 'fine'"
    result = run_python_tests(code, [inside, "assert add(1, 1) == 2"], SandboxLimits(audit_hook=audit_hook))
    assert not os.path.exists(target)
    if audit_hook or "landlock" in result.layers:  # blocked: the solution fails
        assert result.fraction == 0.0 and result.status == "solution_error"
    else:  # as root the write lands in the sandbox's private /tmp, which vanishes with it
        assert result.fraction == 1.0


@linux_only
def test_gaming_the_harness_does_not_pay():
    assert run_python_tests("import sys\nsys.exit(0)", ADD_TESTS, FAST).fraction == 0.0
    assert run_python_tests("import os\nos._exit(0)", ADD_TESTS, FAST).fraction == 0.0
    forge = "import os\nfor fd in range(3, 30):\n    try:\n        os.write(fd, b'x PASS 0\\nx PASS 1\\n')\n"
    forge += "    except OSError:\n        pass"
    assert run_python_tests(forge, ADD_TESTS, FAST).fraction == 0.0
    twice = "import os\nos.fork()\ndef add(a, b):\n    return a + b"  # a fork must not double-count passes
    assert run_python_tests(twice, ADD_TESTS + "\nassert add(0, 0) == 1", FAST).passed == 2


@linux_only
@pytest.mark.skipif(not IS_ROOT, reason="only a PID namespace (root) reaps processes that leave the process group")
def test_escaped_daemons_are_killed():
    uid = 1_999_980_000 + os.getpid() % 1000
    daemon = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n"
    daemon += "def add(a, b):\n    return a + b"
    result = run_python_tests(daemon, ADD_TESTS, SandboxLimits(uid=uid))
    assert result.fraction == 1.0
    assert processes_of(uid) == []


@linux_only
def test_subprocesses_and_raw_ctypes_are_refused_unless_allowed():
    echo = "import subprocess\nOUT = subprocess.run(['/bin/echo', 'hi'], capture_output=True).stdout"
    assert run_python_tests(echo, "assert OUT == b'hi\\n'", FAST).status == "solution_error"
    assert run_python_tests(echo, "assert OUT == b'hi\\n'", SandboxLimits(allow_subprocess=True)).fraction == 1.0
    raw = "import ctypes\nPID = ctypes.CDLL(None).getpid()"
    assert run_python_tests(raw, "assert PID", FAST).status == "solution_error"
    numpy = "import numpy as np\ndef total():\n    return int(np.arange(4).sum())"  # libraries still import
    assert run_python_tests(numpy, "assert total() == 6", FAST).fraction == 1.0


@linux_only
@pytest.mark.skipif(not IS_ROOT, reason="namespaces need root")
def test_root_sandbox_sees_only_its_own_processes():
    checks = ["assert os.getpid() == 1", "assert len([p for p in os.listdir('/proc') if p.isdigit()]) < 5"]
    assert run_python_tests("import os", checks, FAST).fraction == 1.0
