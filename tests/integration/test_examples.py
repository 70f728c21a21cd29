"""The three example automations, end to end in local mode."""
import json

from conftest import ROOT, git


def register(g, repo):
    g("create", "repository", "examples", "--url", repo, check=0)
    g("create", "decorator", "hello-inputs", "--schema", f"@{ROOT}/examples/python/decorator.json",
      check=0)


def test_python_script_with_venv_and_decorator(any_gantry, examples_repo):
    gantry = any_gantry
    register(any_gantry, examples_repo)
    gantry("create", "service", "python-script", "hello", "--repository", "examples",
           "--working-dir", "python", "--filename", "hello.py", "--decorator", "hello-inputs",
           check=0)
    p = gantry("run", "service", "hello", "--set", "name=Ada", "--set", "count=2",
               "--set", "loud=true", "--set", 'tags=["a","b"]', check=0)
    assert p.stdout.count("HELLO, ADA!") == 2, p.stdout
    assert '"tags": ["a", "b"]' in p.stdout
    assert "state: succeeded" in p.stdout and "return code: 0" in p.stdout
    # the venv is cached: a second run does not rebuild it
    venvs = list((gantry.data / "venvs").iterdir())
    gantry("run", "service", "hello", "--set", "name=Bob", check=0)
    assert list((gantry.data / "venvs").iterdir()) == venvs
    # defaults from the decorator are applied and recorded
    ex = gantry.json("get", "executions", "--service", "hello")["items"]
    assert [e["state"] for e in ex] == ["succeeded", "succeeded"]
    # newest first by default; --oldest-first turns it round
    assert [e["id"] for e in gantry.json("get", "executions", "--oldest-first")["items"]] == \
        [e["id"] for e in reversed(ex)]
    last = gantry.json("describe", "execution", ex[0]["id"])
    assert last["inputs"] == {"name": "Bob", "count": 1, "loud": False}
    assert last["stdout"].startswith("Hello, Bob!")


def test_ansible_playbook_against_localhost(any_gantry, examples_repo):
    gantry = any_gantry
    register(any_gantry, examples_repo)
    gantry("create", "service", "ansible-playbook", "site", "--repository", "examples",
           "--working-dir", "ansible", "--playbook", "site.yml", "--inventory", "inventory.ini",
           "--extra-vars", '{"checks": ["uname"], "target": "default"}', check=0)
    p = gantry("run", "service", "site", "--set", "target=edge-1", check=0)
    assert "Working on edge-1 with checks uname" in p.stdout, p.stdout
    assert "kernel=Linux" in p.stdout
    assert "failed=0" in p.stdout


def test_executable_with_secret_and_arg_format(any_gantry, examples_repo):
    gantry = any_gantry
    register(any_gantry, examples_repo)
    gantry("create", "secret", "token", input="tok-123456\n", check=0)
    gantry("create", "service", "executable", "report", "--repository", "examples",
           "--working-dir", "shell", "--filename", "report.sh",
           "--secret", "name=token,type=env,target=API_TOKEN", "--arg-format", "{key}={value}",
           check=0)
    p = gantry("run", "service", "report", "--set", "a=1", "--set", "b=two words", check=0)
    assert "[a=1]" in p.stdout and "[b=two words]" in p.stdout
    assert "API_TOKEN is set (10 characters)" in p.stdout
    # the value never shows: not in output, not in describe, not in the store file
    assert "tok-123456" not in p.stdout + p.stderr
    d = gantry("describe", "secret", "token", "-o", "json", check=0).stdout
    assert "tok-123456" not in d and "sealed" not in d and json.loads(d)["name"] == "token"
    assert b"tok-123456" not in (gantry.data / "gantry.db").read_bytes()
    # a run-time secret binding overrides nothing else and reaches the child
    gantry("create", "secret", "other", "--value", "xyz", check=0)
    gantry("update", "service", "report", "--allow-secret", "other", check=0)  # granted to runs
    p = gantry("run", "service", "report", "--set-secret", "name=other,type=env,target=API_TOKEN",
               check=0)
    assert "API_TOKEN is set (3 characters)" in p.stdout


def test_reference_branch_tag_and_commit(any_gantry, examples_repo, tmp_path):
    gantry = any_gantry
    gantry("create", "repository", "r", "--url", f"file://{examples_repo}", "--reference", "v1",
           check=0)
    gantry("create", "service", "executable", "s", "--repository", "r", "--working-dir", "shell",
           "--filename", "report.sh", check=0)
    v1 = gantry.json("run", "service", "s")["commit"]
    # a new commit on main is seen by a run at main, not at the tag
    (examples_repo / "shell" / "report.sh").write_text("#!/bin/sh\necho version-two\n")
    git(examples_repo, "commit", "-qam", "two")
    assert gantry.json("run", "service", "s")["commit"] == v1
    gantry("update", "repository", "r", "--reference", "main", check=0)
    ex = gantry.json("run", "service", "s")
    assert ex["stdout"] == "version-two\n" and ex["commit"] != v1
    gantry("update", "repository", "r", "--reference", v1, check=0)
    assert gantry.json("run", "service", "s")["commit"] == v1
    gantry("update", "repository", "r", "--reference", "no-such-branch", check=0)
    ex = gantry.json("run", "service", "s", check=1)
    assert ex["state"] == "failed"
    assert 'reference "no-such-branch" not found' in ex["error"]


def test_outputs_json_yaml_and_history(any_gantry, examples_repo):
    gantry = any_gantry
    register(any_gantry, examples_repo)
    gantry("create", "service", "executable", "report", "--repository", "examples",
           "--working-dir", "shell", "--filename", "report.sh", check=0)
    ex = gantry.json("run", "service", "report", "--set", "x=1")
    for field in ("id", "service", "state", "return_code", "stdout", "stderr", "stdout_truncated",
                  "stderr_truncated", "started_at", "finished_at", "duration_ms", "commit",
                  "attempt", "runner"):
        assert field in ex, field
    y = gantry("describe", "execution", ex["id"], "-o", "yaml", check=0).stdout
    assert f"id: {ex['id']}" in y and "state: succeeded" in y
    table = gantry("get", "executions", check=0).stdout.splitlines()
    assert table[0].split()[:3] == ["ID", "SERVICE", "STATE"] and ex["id"] in table[1]
    svc = gantry.json("get", "services")["items"][0]
    assert svc["name"] == "report" and svc["type"] == "executable" and svc["revision"] >= 1
